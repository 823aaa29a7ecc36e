"""``nas fidelity``: does the proxy rank architectures the way a longer, larger schedule does?

K finished trials, spread over the proxy-reward range and always including the best trial and the
backbone, are retrained on Ray tasks with a longer schedule (more epochs, larger images, a fraction
of the training data); their step time S and params P are reused from the sweep (the architecture
did not change), so the long reward is ``reward(A_long, S, P)``. Results land in the study as user
attributes ``fidelity:<trial>`` (Optuna does not let a finished trial's own attributes change), so a
rerun skips what is done. Reported: Kendall tau and Spearman rho between proxy and long accuracy
and reward, and the overlap of the top-k sets.

    >>> round(kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]), 4), round(spearman([1, 2, 3, 4], [1, 3, 2, 4]), 4)
    (0.6667, 0.8)
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import optuna

from nas.errors import InputError
from runners.study import Run, backbone_trial, scored_trials

PREFIX = "fidelity:"


# ---- rank statistics -----------------------------------------------------------------------
def _ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties get their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rho: Pearson correlation of the (average-tie) ranks; nan when a side is constant."""
    rx, ry = _ranks(list(x)), _ranks(list(y))
    n = len(rx)
    mx, my = sum(rx) / n, sum(ry) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def kendall_tau(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b (ties in either list handled as scipy's default does); nan when a side is constant."""
    concordant = discordant = ties_x = ties_y = 0
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denominator if denominator else float("nan")


def top_k_overlap(proxy: list[float], long: list[float], k: int) -> float:
    """Share of the top-``k`` by the proxy that are also top-``k`` by the long schedule."""
    k = max(1, min(k, len(proxy)))
    by_proxy = set(sorted(range(len(proxy)), key=lambda i: -proxy[i])[:k])
    by_long = set(sorted(range(len(long)), key=lambda i: -long[i])[:k])
    return len(by_proxy & by_long) / k


# ---- which trials, which schedule ------------------------------------------------------------
@dataclass(frozen=True)
class FidelityConfig:
    """The long schedule: ``epochs`` and ``image_size`` for retraining, on ``data_fraction`` of the training split."""

    trials: int = 8
    epochs: int = 40
    image_size: int = 32
    data_fraction: float = 1.0
    concurrent: int = 2

    def __post_init__(self) -> None:
        for name, low in (("trials", 2), ("epochs", 1), ("image_size", 8), ("concurrent", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InputError(f"{name}: {value!r} is not allowed, allowed an integer >= {low}")
        if not isinstance(self.data_fraction, (int, float)) or not 0 < self.data_fraction <= 1:
            raise InputError(f"data_fraction: {self.data_fraction!r} is not allowed, allowed a number in (0, 1]")

    def schedule(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "image_size": self.image_size, "data_fraction": float(self.data_fraction)}


def pick_trials(run: Run, count: int) -> list[optuna.trial.FrozenTrial]:
    """``count`` distinct architectures evenly spread over the proxy-reward ranking: the best, ..., the worst, and the backbone."""
    seen, distinct = set(), []
    for trial in sorted(scored_trials(run.study), key=lambda t: (-t.user_attrs["reward"], t.number)):
        if trial.user_attrs["spec_key"] not in seen:  # a reused duplicate is the same architecture
            seen.add(trial.user_attrs["spec_key"])
            distinct.append(trial)
    base = backbone_trial(run.study)
    wanted = count - (base is not None)
    if len(distinct) <= wanted:
        chosen = distinct
    else:
        positions = sorted({round(i * (len(distinct) - 1) / max(1, wanted - 1)) for i in range(wanted)})
        chosen = [distinct[p] for p in positions]
    return ([base] if base is not None else []) + chosen


def stored(run: Run) -> dict[int, dict[str, Any]]:
    """Fidelity results already in the study, by trial number."""
    return stored_results(run.study)


def stored_results(study: optuna.Study) -> dict[int, dict[str, Any]]:
    return {int(key[len(PREFIX):]): value for key, value in study.user_attrs.items() if key.startswith(PREFIX)}


# ---- the Ray task ----------------------------------------------------------------------------
def retrain(spec_json: dict, dataset: Any, train_json: dict, data_fraction: float, use_gpu: bool) -> dict[str, Any]:
    """Runs inside a Ray worker: train ``spec`` with the long schedule; never raises (failures become records)."""
    import torch

    from nas.pipeline import DeviceData
    from nas.spec import NetworkSpec
    from nas.train import TrainConfig, pick_device, train_proxy

    config = TrainConfig(**train_json)
    torch.set_num_threads(max(1, config.threads or 1))  # Ray sets OMP_NUM_THREADS=1 in workers
    try:
        images, labels, val_images, val_labels = dataset.split_validation(config.validation_fraction, seed=0)
        keep = min(len(images), max(config.batch_size, int(len(images) * data_fraction)))  # the split is shuffled: a prefix is a random subset
        device = pick_device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        data = DeviceData(images[:keep], labels[:keep], val_images, val_labels, device=device)
        result = train_proxy(NetworkSpec.from_dict(spec_json), data, config)
    except Exception as error:  # stored as a failed record; the audit goes on
        return {"status": "failed", "failure_reason": f"{type(error).__name__}: {error}"}
    if result.failure:
        return {"status": "failed", "failure_reason": result.failure}
    return {"status": "ok", "accuracy": result.accuracy, "curve": result.curve, "train_seconds": result.seconds,
            "train_images": keep}


def run_fidelity(run: Run, config: FidelityConfig, quiet: bool = False) -> dict[str, Any]:
    """Retrain the picked trials not yet done with this schedule, store each result, return the audit."""
    from nas.data import load_dataset

    log = (lambda message: None) if quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    picked = pick_trials(run, config.trials)
    if len(picked) < 2:
        raise InputError(f"run directory: {run.path} has {len(picked)} finished trial(s); the audit needs at least 2")
    done = stored(run)
    todo = [t for t in picked if done.get(t.number, {}).get("schedule") != config.schedule()]
    log(f"fidelity: {len(picked)} trials picked, {len(picked) - len(todo)} already retrained with this schedule, {len(todo)} to go")
    if todo:
        reward = run.config.reward_function()
        threads = max(1, int(run.config.cpus_per_trial))
        train = replace(run.config.train, epochs=config.epochs, image_size=config.image_size, threads=threads)
        from runners.progress import short_name
        from runners.sweep import init_ray

        started = init_ray(run.config)  # the sweep's own way: its cluster, or a local instance on 127.0.0.1
        import ray

        try:
            dataset_ref = ray.put(load_dataset(run.config.data))
            remote = ray.remote(retrain).options(num_cpus=run.config.cpus_per_trial, num_gpus=run.config.gpus_per_trial, max_retries=0)
            queue, in_flight, begin = list(todo), {}, time.monotonic()
            while queue or in_flight:
                while queue and len(in_flight) < config.concurrent:
                    trial = queue.pop(0)
                    seeded = asdict(replace(train, seed=trial.user_attrs.get("seed", train.seed)))
                    in_flight[remote.remote(trial.user_attrs["spec"], dataset_ref, seeded, config.data_fraction,
                                            run.config.gpus_per_trial > 0)] = trial
                    log(f"fidelity: trial {trial.number} started: {short_name(trial.user_attrs['spec'])}, {config.epochs} epochs "
                        f"at {config.image_size} px")
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                trial = in_flight.pop(ready[0])
                try:
                    record = ray.get(ready[0])
                except Exception as error:  # a lost worker
                    record = {"status": "failed", "failure_reason": f"worker lost: {type(error).__name__}: {str(error)[:300]}"}
                record["schedule"] = config.schedule()
                record["proxy_accuracy"], record["proxy_reward"] = trial.user_attrs["accuracy"], trial.user_attrs["reward"]
                if record["status"] == "ok":
                    a = trial.user_attrs
                    record["reward"] = reward(record["accuracy"], a["normalized_step_time"], a["normalized_params"])
                run.study.set_user_attr(f"{PREFIX}{trial.number}", record)
                log(f"fidelity: trial {trial.number} {record['status']}"
                    + (f": accuracy {record['accuracy']:.4f} (proxy {record['proxy_accuracy']:.4f})" if record["status"] == "ok" else
                       f" ({record['failure_reason']})") + f"  [{len(todo) - len(queue) - len(in_flight)}/{len(todo)}, "
                    f"{time.monotonic() - begin:.0f} s]")
        finally:
            if started:
                ray.shutdown()
    return audit(run, config.schedule(), [t.number for t in picked])


def latest_rows(study: optuna.Study, results: dict[int, dict[str, Any]], schedule: dict[str, Any] | None = None,
                numbers: list[int] | None = None) -> list[dict[str, Any]]:
    """Successful results of ``schedule`` (default: the longest stored), one row per trial, the backbone marked."""
    if schedule is None and results:
        schedule = max(results.values(), key=lambda r: r.get("schedule", {}).get("epochs", 0)).get("schedule")
    base = backbone_trial(study)
    return [{"trial": number, "backbone": base is not None and number == base.number,
             **{key: record.get(key) for key in ("proxy_accuracy", "accuracy", "proxy_reward", "reward", "train_seconds")}}
            for number, record in sorted(results.items())
            if record.get("schedule") == schedule and record.get("status") == "ok" and (numbers is None or number in numbers)]


def audit_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Kendall tau and Spearman (accuracy and reward), top-k overlap, and the best proxy trial against the backbone."""
    proxy_accuracy, long_accuracy = [r["proxy_accuracy"] for r in rows], [r["accuracy"] for r in rows]
    proxy_reward, long_reward = [r["proxy_reward"] for r in rows], [r["reward"] for r in rows]
    enough = len(rows) >= 2
    k = max(1, len(rows) // 3)
    search = [r for r in rows if not r["backbone"]]
    best = max(search, key=lambda r: r["proxy_reward"]) if search else None
    base = next((r for r in rows if r["backbone"]), None)
    return {
        "trials": rows,
        "kendall_tau_accuracy": _finite(kendall_tau(proxy_accuracy, long_accuracy)) if enough else None,
        "spearman_accuracy": _finite(spearman(proxy_accuracy, long_accuracy)) if enough else None,
        "kendall_tau_reward": _finite(kendall_tau(proxy_reward, long_reward)) if enough else None,
        "spearman_reward": _finite(spearman(proxy_reward, long_reward)) if enough else None,
        "top_k": k, "top_k_overlap_reward": top_k_overlap(proxy_reward, long_reward, k) if rows else None,
        "best_proxy_trial": best["trial"] if best else None,
        "best_beats_backbone_long": best["reward"] > base["reward"] if best and base else None,
        "best_beats_backbone_long_accuracy": best["accuracy"] > base["accuracy"] if best and base else None,
    }


def audit(run: Run, schedule: dict[str, Any] | None = None, numbers: list[int] | None = None) -> dict[str, Any]:
    """The audit of the stored results of ``schedule`` (default: the longest stored) over ``numbers`` (default: all)."""
    results = stored(run)
    rows = latest_rows(run.study, results, schedule, numbers)
    if schedule is None and results:
        schedule = max(results.values(), key=lambda r: r.get("schedule", {}).get("epochs", 0)).get("schedule")
    return {
        "run_dir": str(run.path), "schedule": schedule,
        "proxy_schedule": {"epochs": run.config.train.epochs, "image_size": run.config.train.image_size, "data_fraction": 1.0},
        "failed": sorted(n for n, r in results.items() if r.get("schedule") == schedule and r.get("status") != "ok"),
        **audit_rows(rows),
    }


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value  # JSON has no NaN


def summary_text(result: dict[str, Any]) -> str:
    """The CLI's table and the headline numbers."""
    def number(value: Any) -> str:
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"

    schedule = result["schedule"] or {}
    lines = [f"fidelity of {result['run_dir']}: proxy {result['proxy_schedule']['epochs']} epochs at "
             f"{result['proxy_schedule']['image_size']} px vs long {schedule.get('epochs')} epochs at {schedule.get('image_size')} px "
             f"on {schedule.get('data_fraction')} of the data",
             f"{'trial':>7} {'proxy A':>8} {'long A':>8} {'proxy R':>8} {'long R':>8}"]
    for r in result["trials"]:
        name = f"{r['trial']}{'*' if r['backbone'] else ''}"
        lines.append(f"{name:>7} {r['proxy_accuracy']:>8.4f} {r['accuracy']:>8.4f} {r['proxy_reward']:>8.4f} {r['reward']:>8.4f}")
    lines += ["(* the backbone)",
              f"accuracy: Kendall tau {number(result['kendall_tau_accuracy'])}, Spearman {number(result['spearman_accuracy'])}",
              f"reward:   Kendall tau {number(result['kendall_tau_reward'])}, Spearman {number(result['spearman_reward'])}; "
              f"top-{result['top_k']} overlap {number(result['top_k_overlap_reward'])}"]
    if result["best_beats_backbone_long"] is not None:
        lines.append(f"best proxy trial {result['best_proxy_trial']} on the long schedule: "
                     f"{'beats' if result['best_beats_backbone_long'] else 'does not beat'} the backbone in reward, "
                     f"{'beats' if result['best_beats_backbone_long_accuracy'] else 'does not beat'} it in accuracy")
    if result["failed"]:
        lines.append(f"failed: trials {', '.join(map(str, result['failed']))}")
    return "\n".join(lines)
