"""Retrainings on Ray for ``nas fidelity`` and ``nas calibrate``: one task per (architecture, schedule, seed).

Each retraining takes its share of the host's cores (:func:`nas.evaluate.trainer_cores`), reports its
progress through a :class:`~runners.ray_cluster.Mailbox` actor and never raises: a failure comes back
as a failed :class:`~nas.record.TrialRecord`. ``run_jobs`` keeps ``concurrent`` of them in flight,
prints a line when each starts, every few seconds while it trains, and when it is done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from nas.configs import TrainConfig
from nas.record import OK, TrialRecord
from nas.spec import NetworkSpec
from runners.progress_text import core_wait_text, epoch_text
from runners.ray_cluster import Mailbox, init_ray, poster
from runners.study import Run

PROGRESS_SECONDS = 5.0  # a line per running retraining at most this often
LOST_WORKER = "worker lost"  # a failure that is not the architecture's (its node died): the next run retrains it


def lost_worker(attrs: dict[str, Any]) -> bool:
    """Whether a stored retraining failed because its worker was lost, not because of its training."""
    return str(TrialRecord.from_attrs(attrs).failure_reason or "").startswith(LOST_WORKER)


def settled(attrs: dict[str, Any] | None) -> bool:
    """Whether a stored retraining stands: it exists, and did not fail with its worker (its own failure stands: nothing trains twice)."""
    return bool(attrs) and not lost_worker(attrs)


def retrain(spec_json: dict, dataset: Any, train_json: dict, data_fraction: float, use_gpu: bool,
            progress: tuple[Any, int] | None = None) -> TrialRecord:
    """Runs inside a Ray worker: train ``spec`` with the given schedule; never raises (failures become records).

    ``progress``: (a :class:`~runners.ray_cluster.Mailbox` actor, this job's key) for in-training progress.
    """
    import torch  # heavy: only the Ray task trains (reading fidelity results never imports torch)

    from nas.cores import use_threads
    from nas.evaluate import train_subset_size, trainer_cores
    from nas.pipeline import DeviceData
    from nas.train import pick_device, train_proxy

    config = TrainConfig(**train_json)
    on_progress = poster(*progress) if progress is not None else None
    use_threads(max(1, config.threads or 1))  # Ray sets OMP_NUM_THREADS=1 in workers
    cpu_begin = time.process_time()
    try:
        images, labels, val_images, val_labels = dataset.split_validation(config.validation_fraction, seed=0)
        keep = train_subset_size(len(images), data_fraction, config.batch_size)
        device = pick_device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        data = DeviceData(images[:keep], labels[:keep], val_images, val_labels, device=device)
        with trainer_cores(device, on_progress=on_progress):  # beside a sweep on this host: its trials and ours share the cores
            result = train_proxy(NetworkSpec.from_dict(spec_json), data, config, on_progress=on_progress)
    except Exception as error:  # stored as a failed record; the audit goes on
        return TrialRecord(failure_reason=f"{type(error).__name__}: {error}")
    if result.failure:
        return TrialRecord(failure_reason=result.failure)
    return TrialRecord(status=OK, accuracy=result.accuracy, curve=result.curve, train_seconds=result.seconds, seed=config.seed,
                       extra={"cpu_seconds": time.process_time() - cpu_begin, "device_type": device.type, "train_images": keep})


@dataclass(frozen=True)
class Job:
    """One retraining: ``spec`` under ``train`` (a TrainConfig as a dict) on ``data_fraction`` of the training split."""

    key: Any
    spec: dict[str, Any]
    train: dict[str, Any]
    data_fraction: float
    label: str = ""  # the start line's head, prefixed like the command's other progress lines ("fidelity: trial 3")


def run_jobs(run: Run, jobs: list[Job], concurrent: int, done: Any, log: Any) -> None:
    """Run ``jobs`` on Ray (the sweep's cluster or a local instance), ``concurrent`` at a time; ``done(job, record)`` stores each.

    Each job says when it starts, every few seconds while it trains (epoch, step, images/s) and when it is done.
    """
    started = init_ray(run.config)  # the sweep's own way: its cluster, or a local instance on 127.0.0.1
    import ray  # heavy: only commands that train load it

    from nas.data import load_dataset

    try:
        dataset_ref = ray.put(load_dataset(run.config.data))
        remote = ray.remote(retrain).options(num_cpus=run.config.cpus_per_trial, num_gpus=run.config.gpus_per_trial, max_retries=0)
        box = ray.remote(Mailbox).options(num_cpus=0).remote()
        queue, in_flight, begin = list(enumerate(jobs)), {}, time.monotonic()
        while queue or in_flight:
            while queue and len(in_flight) < concurrent:
                index, job = queue.pop(0)
                log(f"{job.label or job.key} started: {job.train['epochs']} epochs at {job.train['image_size']} px, "
                    f"{job.data_fraction:g} of the data")
                handle = remote.remote(job.spec, dataset_ref, job.train, job.data_fraction, run.config.gpus_per_trial > 0, (box, index))
                in_flight[handle] = (index, job, time.monotonic())
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=PROGRESS_SECONDS)
            _log_progress(ray, box, {index: (job, start) for index, job, start in in_flight.values()}, log)
            if not ready:
                continue
            _, job, _ = in_flight.pop(ready[0])
            try:
                record = ray.get(ready[0])
            except Exception as error:  # a lost worker
                record = TrialRecord(failure_reason=f"{LOST_WORKER}: {type(error).__name__}: {str(error)[:300]}")
            done(job, record)
            log(f"  [{len(jobs) - len(queue) - len(in_flight)}/{len(jobs)}, {time.monotonic() - begin:.0f} s]")
    finally:
        if started:
            ray.shutdown()


def _log_progress(ray: Any, box: Any, running: dict[int, tuple[Job, float]], log: Any) -> None:
    """One line per running job that reported since the last call: its epoch, step, images/s, or its wait for a core."""
    try:
        reports = ray.get(box.take_progress.remote(), timeout=10)
    except Exception:  # the mailbox lost (e.g. OOM-killed): progress lines stop, the retrainings go on
        return
    for index, info in reports:
        if index not in running:
            continue
        job, start = running[index]
        label = job.label or str(job.key)
        log(f"{label}: {core_wait_text(info) or epoch_text(info, time.monotonic() - start)}")
