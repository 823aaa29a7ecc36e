"""Candidate evaluation: spec -> proxy training + step timing -> one :class:`~nas.record.TrialRecord`.

The record is what every trial stores (Optuna user attributes) and what rewards are computed
from, so a finished sweep can be re-scored without training.

    >>> from nas.zoo import get
    >>> rec = evaluate_candidate(get("efficientnetv2-b0", 10), "digits", TrainConfig(epochs=1, image_size=16),
    ...                          timing_config=TimingConfig(batch_size=4, image_size=32, warmup=1, steps=3))
    >>> rec.status, 0 <= rec.accuracy <= 1, rec.step_time_ms > 0, rec.params > 0
    ('ok', True, True, True)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import platform
import resource
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from typing import Any

import torch

from nas.configs import TimingConfig, TrainConfig
from nas.cores import hold_cores, host_cores, thread_cap, use_threads
from nas.data import Dataset, load_dataset
from nas.lock import DeviceLock, device_id
from nas.pipeline import DeviceData
from nas.plan import count_macs, count_spec_params
from nas.record import FAILED, OK, PRUNED, TrialRecord
from nas.scores import proxy_scores
from nas.spec import NetworkSpec
from nas.timing import ReferenceCache, device_name, measure_step_time
from nas.train import EpochCallback, ProgressCallback, pick_device, train_proxy

_DATA_CACHE: dict[tuple[str, str, float, float], tuple[DeviceData, int]] = {}


def device_data(data: str | Dataset, config: TrainConfig, device: torch.device) -> tuple[DeviceData, int, str]:
    """The data set on ``device`` with its validation split; cached per process (Ray reuses workers)."""
    name = data if isinstance(data, str) else data.name
    fraction = getattr(config, "data_fraction", 1.0)
    key = (name, str(device), config.validation_fraction, fraction)
    if key not in _DATA_CACHE:
        dataset = load_dataset(data) if isinstance(data, str) else data
        _DATA_CACHE.clear()  # one data set per worker is enough; frees device memory
        images, labels, val_images, val_labels = dataset.split_validation(config.validation_fraction, seed=0)
        keep = train_subset_size(len(images), fraction, config.batch_size)
        _DATA_CACHE[key] = (DeviceData(images[:keep], labels[:keep], val_images, val_labels, device=device), dataset.num_classes)
    cached, num_classes = _DATA_CACHE[key]
    return cached, num_classes, name


def train_subset_size(total: int, fraction: float, batch_size: int) -> int:
    """How many training images ``fraction`` keeps (at least one batch); the split is shuffled, so a prefix is a random subset.

        >>> train_subset_size(1000, 0.25, 64), train_subset_size(100, 0.01, 64), train_subset_size(10, 1.0, 64)
        (250, 64, 10)
    """
    return min(total, max(batch_size, int(total * fraction)))


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _score_as_accuracy(final: float, curve: list[dict[str, float]], config: TrainConfig) -> float:
    """The proxy score ``config.score`` (an accuracy-like one) of the run; the final accuracy when the curve lacks it."""
    value = proxy_scores(TrialRecord(accuracy=final, curve=curve)).get(config.score)
    return final if value is None else value


def evaluate_candidate(
    spec: NetworkSpec,
    data: str | Dataset,
    train_config: TrainConfig = TrainConfig(),
    *,
    timing_config: TimingConfig = TimingConfig(),
    backbone: NetworkSpec | None = None,
    device: str | None = None,
    on_epoch: EpochCallback | None = None,
    reference_cache: ReferenceCache | None = None,
    lock: bool = True,
    on_progress: ProgressCallback | None = None,
) -> TrialRecord:
    """Train ``spec`` briefly, time its training step, count it; return the full record.

    ``backbone`` (default: ``spec`` itself) is the reference for the normalized step time S and
    normalized params P. Failures (non-finite loss, CUDA OOM) come back with status ``failed`` and their reason.
    ``on_progress`` gets :func:`nas.train.train_proxy`'s in-epoch progress (epoch, step, images/s).
    ``lock=False`` trains and times without the device lock (only to measure what the lock prevents).
    """
    begin = time.perf_counter()
    torch_device = pick_device(device)
    if train_config.threads:
        use_threads(train_config.threads)
    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)
    dev_data, num_classes, data_name = device_data(data, train_config, torch_device)
    spec = spec.with_classes(num_classes)
    backbone = (backbone or spec).with_classes(num_classes)
    # one lock per physical device (GPU UUID, or the host's CPU), shared by every user of the host
    device_lock = DeviceLock.for_device(torch_device, enabled=lock)
    timing_size = timing_config.image_size or backbone.train_image_size
    timing_config = replace(timing_config, image_size=timing_size)  # candidate and reference at the same size
    with trainer_cores(torch_device, on_progress=on_progress, enabled=lock) as core_wait:
        result = train_proxy(spec, dev_data, train_config, on_epoch=on_epoch, lock=device_lock, on_progress=on_progress)
        record = _trained(result, train_config)
        record.update(_sizes(spec, backbone, timing_size, train_config.image_size))
        if result.failure is None:
            record.update(_timed(spec, backbone, timing_config, train_config, device=torch_device, lock=device_lock,
                                 cache=reference_cache or ReferenceCache()))
    record.update(spec=spec.to_dict(), spec_key=spec.key(), data=data_name, num_classes=num_classes, train_config=asdict(train_config),
                  timing_config=asdict(timing_config), backbone=backbone.name, seed=train_config.seed, **_where(torch_device),
                  core_wait_seconds=core_wait, wall_seconds=time.perf_counter() - begin,
                  finished_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    return TrialRecord(**record)


@contextlib.contextmanager
def trainer_cores(device: torch.device, *, on_progress: ProgressCallback | None = None, enabled: bool = True) -> Iterator[float]:
    """A CPU trainer's share of the host's cores (:func:`nas.cores.hold_cores`, a slot per torch thread); yields seconds waited.

    GPU trainers take none (Ray and the device lock share a GPU). ``on_progress`` hears
    ``{"cores": "waiting", ...}`` while other trainings hold every slot and ``{"cores": "taken", ...}`` once held.
    ``enabled=False`` takes none (only to measure what the slots prevent).
    """
    if device.type != "cpu" or not enabled:
        yield 0.0
        return

    def waiting(pool: int) -> None:
        if on_progress is not None:
            on_progress({"cores": "waiting", "pool": pool, "threads": torch.get_num_threads()})

    threads, pool = torch.get_num_threads(), host_cores()
    slots = min(threads, pool)
    with hold_cores(slots, pool=pool, on_wait=waiting) as waited:
        if waited and on_progress is not None:
            on_progress({"cores": "taken", "waited": waited})
        with thread_cap(slots):  # never more threads than slots held (NAS_HOST_CORES below the trial's threads)
            yield waited


def _trained(result: Any, train_config: TrainConfig) -> dict[str, Any]:
    """The training half of a record."""
    return dict(
        status=FAILED if result.failure else (PRUNED if result.stopped_early else OK),
        failure_reason=result.failure,
        accuracy=_score_as_accuracy(result.accuracy, result.curve, train_config),  # A in the reward: train.score
        final_accuracy=result.accuracy, val_loss=result.val_loss, curve=result.curve, epochs_run=result.epochs_run,
        train_seconds=result.seconds, trained_step=result.step,
    )


def _sizes(spec: NetworkSpec, backbone: NetworkSpec, timing_size: int, proxy_size: int) -> dict[str, Any]:
    """Params (P is over the backbone's) and MACs at the timed and the proxy image size."""
    params, backbone_params = count_spec_params(spec), count_spec_params(backbone)
    return dict(params=params, normalized_params=params / backbone_params, reference_params=backbone_params,
                macs=count_macs(spec, timing_size), proxy_macs=count_macs(spec, proxy_size))


def _timed(spec: NetworkSpec, backbone: NetworkSpec, timing: TimingConfig, train: TrainConfig, *, device: torch.device,
           lock: DeviceLock, cache: ReferenceCache) -> dict[str, Any]:
    """The step time of ``spec`` and S (over the backbone's, cached per device); an OOM while timing fails the record."""
    try:
        # the trial's own step (optimizer, groups, loss, compile) for the candidate and the reference alike
        step = measure_step_time(spec, timing, device, lock=lock, train=train)
        reference = cache.get(backbone, timing, device, lock=lock, train=train)
    except torch.cuda.OutOfMemoryError as error:
        torch.cuda.empty_cache()
        return dict(status=FAILED, failure_reason=f"CUDA out of memory while timing: {str(error).splitlines()[0]}")
    return dict(step_time_ms=step.median_ms, step_time_iqr_ms=step.iqr_ms, step_time_cv=step.cv, timed_step=step.step,
                step_time_samples_ms=list(step.samples_ms), reference_step_time_ms=reference,
                normalized_step_time=step.median_ms / reference, throughput_img_s=step.images_per_second)


def _where(device: torch.device) -> dict[str, Any]:
    """The device, host and versions a record was measured with."""
    return dict(device=device_name(device), device_id=device_id(device), torch_version=torch.__version__,
                threads=torch.get_num_threads(), host=platform.node(), peak_memory_mb=peak_memory_mb(device))
