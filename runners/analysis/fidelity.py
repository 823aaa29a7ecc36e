"""``nas fidelity``: does the proxy rank architectures the way a longer, larger schedule does?

K finished trials, spread over the proxy-reward range and always including the best trial and the
backbone, are retrained on Ray tasks with a longer schedule (more epochs, larger images, a fraction
of the training data); their step time S and params P are reused from the sweep (the architecture
did not change), so the long reward is ``reward(A_long, S, P)``. Results land in the study as user
attributes ``fidelity:<trial>`` (Optuna does not let a finished trial's own attributes change), so a
rerun skips what is done. The long schedule is trained a second time with another seed
(``fidelity-seed2:<trial>``): Kendall tau between the two is the seed ceiling. Reported: Kendall tau
and Spearman rho between proxy and long accuracy and reward, the overlap of the top-k sets, and for
every proxy score of :mod:`nas.scores` its tau (with a bootstrap interval) as a fraction of the ceiling.
Rank statistics come from ``scipy.stats``.

    >>> round(kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]), 4), round(spearman([1, 2, 3, 4], [1, 3, 2, 4]), 4)
    (0.6667, 0.8)
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import optuna
from scipy import stats

from nas.errors import InputError
from nas.record import TrialRecord, record_of
from nas.scores import SCORES, proxy_scores
from runners.analysis.retrain import Job, run_jobs, settled
from runners.study import Run, backbone_trial, scored_trials

PREFIX = "fidelity:"
REPLICA_PREFIX = "fidelity-seed2:"  # the long schedule again with another seed: the noise ceiling
REPLICA_SEED = 1  # offset added to the trial's seed for the replica


# ---- rank statistics (scipy.stats) ----------------------------------------------------------
def kendall_tau(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b (ties handled), from ``scipy.stats.kendalltau``; nan when a side is constant."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: scipy warns and returns nan
        return float(stats.kendalltau(x, y).statistic)


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rho (average ranks for ties), from ``scipy.stats.spearmanr``; nan when a side is constant."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(x, y).statistic)


def tau_interval(x: list[float], y: list[float], *, level: float = 0.95, resamples: int = 500, seed: int = 0) -> list[float] | None:
    """Percentile bootstrap interval of Kendall tau over the architectures (pairs resampled together), ``scipy.stats.bootstrap``.

    A resample in which one side is constant carries no rank information: its tau counts as 0.
    None with fewer than 3 architectures.
    """
    if len(x) < 3:
        return None

    def statistic(a: np.ndarray, b: np.ndarray) -> float:
        value = kendall_tau(a, b)
        return 0.0 if math.isnan(value) else value

    result = stats.bootstrap((np.asarray(x, float), np.asarray(y, float)), statistic, paired=True, vectorized=False,
                             n_resamples=resamples, confidence_level=level, method="percentile", rng=np.random.default_rng(seed))
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def top_k_overlap(proxy: list[float], long: list[float], k: int) -> float:
    """Share of the top-``k`` by the proxy that are also top-``k`` by the long schedule."""
    k = max(1, min(k, len(proxy)))
    by_proxy = set(sorted(range(len(proxy)), key=lambda i: -proxy[i])[:k])
    by_long = set(sorted(range(len(long)), key=lambda i: -long[i])[:k])
    return len(by_proxy & by_long) / k


def score_table(proxy: dict[str, list[float | None]], long: list[float], replica: list[float | None] | None = None, *,
                k: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Each proxy score against the long schedule's accuracy, and the seed-noise ceiling it is judged by.

    ``replica`` is the long schedule trained a second time with another seed on the same architectures
    (None where missing): the ceiling is Kendall tau(long, long'), the agreement no proxy can beat on
    average. Per score: Kendall tau with its bootstrap interval, Spearman, top-k overlap, and tau as a
    fraction of the ceiling (None when the ceiling is missing or not positive).
    """
    k = max(1, len(long) // 3) if k is None else k
    ceiling = None
    paired = [(a, b) for a, b in zip(long, replica or []) if b is not None]
    if len(paired) >= 2:
        a, b = map(list, zip(*paired))
        interval = tau_interval(a, b, seed=seed)
        ceiling = {"kendall_tau": _finite(kendall_tau(a, b)), "interval": interval, "reliable": reliable(interval),
                   "spearman": _finite(spearman(a, b)), "top_k_overlap": top_k_overlap(b, a, k), "trials": len(paired)}
    table: dict[str, Any] = {}
    for name, values in proxy.items():
        pairs = [(v, y) for v, y in zip(values, long) if v is not None]
        if len(pairs) < 2:
            table[name] = None
            continue
        x, y = map(list, zip(*pairs))
        tau = _finite(kendall_tau(x, y))
        table[name] = {"kendall_tau": tau, "interval": tau_interval(x, y, seed=seed), "spearman": _finite(spearman(x, y)),
                       "top_k_overlap": top_k_overlap(x, y, k), "fraction_of_ceiling": fraction_of(tau, ceiling), "trials": len(x)}
    return {"ceiling": ceiling, "scores": table, "top_k": k}


UNRELIABLE = ("the ceiling's interval reaches 0: the long schedule does not rank these architectures reproducibly (their "
              "accuracies differ less than seed noise), so fractions of it mean little; make the long ranking stable first "
              "(more validation images, a longer schedule, more architectures)")


def reliable(interval: list[float] | None) -> bool:
    """A ceiling is something to measure against only when its bootstrap interval stays above 0.

        >>> reliable([0.1, 0.6]), reliable([-0.39, 0.67]), reliable(None)
        (True, False, False)
    """
    return interval is not None and interval[0] > 0


def fraction_of(tau: float | None, ceiling: dict[str, Any] | None) -> float | None:
    """``tau`` over the ceiling's tau; None when either is missing or the ceiling is not positive."""
    limit = (ceiling or {}).get("kendall_tau")
    return tau / limit if tau is not None and limit is not None and limit > 0 else None


# ---- which trials, which schedule ------------------------------------------------------------
@dataclass(frozen=True)
class FidelityConfig:
    """The long schedule: ``epochs`` and ``image_size`` for retraining, on ``data_fraction`` of the training split."""

    trials: int = 8
    epochs: int = 40
    image_size: int = 32
    data_fraction: float = 1.0
    concurrent: int = 2
    ceiling: bool = True  # train the long schedule a second time with another seed

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
    for trial in sorted(scored_trials(run.study), key=lambda t: (-record_of(t).reward, t.number)):
        if record_of(trial).spec_key not in seen:  # a reused duplicate is the same architecture
            seen.add(record_of(trial).spec_key)
            distinct.append(trial)
    base = backbone_trial(run.study)
    wanted = count - (base is not None)
    if len(distinct) <= wanted:
        chosen = distinct
    else:
        positions = sorted({round(i * (len(distinct) - 1) / max(1, wanted - 1)) for i in range(wanted)})
        chosen = [distinct[p] for p in positions]
    return ([base] if base is not None else []) + chosen


def to_retrain(done: dict[int, dict[str, Any]], numbers: list[int], schedule: dict[str, Any]) -> list[int]:
    """The trials of ``numbers`` without a stored result of ``schedule``; one lost with its worker counts as none.

    >>> to_retrain({1: {"schedule": {"epochs": 4}}, 2: {"schedule": {"epochs": 4}, "failure_reason": "worker lost: ..."}},
    ...            [1, 2, 3], {"epochs": 4})
    [2, 3]
    """
    return [n for n in numbers if done.get(n, {}).get("schedule") != schedule or not settled(done[n])]


def stored(run: Run) -> dict[int, dict[str, Any]]:
    """Fidelity results already in the study, by trial number."""
    return stored_results(run.study)


def stored_results(study: optuna.Study, prefix: str = PREFIX) -> dict[int, dict[str, Any]]:
    """Results stored under ``prefix`` (the long schedule, or its second-seed replica), by trial number."""
    return {int(key[len(prefix):]): value for key, value in study.user_attrs.items() if key.startswith(prefix)}


def run_fidelity(run: Run, config: FidelityConfig, quiet: bool = False) -> dict[str, Any]:
    """Retrain the picked trials not yet done with this schedule (twice with ``ceiling``), store each result, return the audit."""
    log = (lambda message: None) if quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    picked = pick_trials(run, config.trials)
    if len(picked) < 2:
        raise InputError(f"run directory: {run.path} has {len(picked)} finished trial(s); the audit needs at least 2")
    stores = [(PREFIX, stored(run), 0)] + ([(REPLICA_PREFIX, stored_results(run.study, REPLICA_PREFIX), REPLICA_SEED)]
                                           if config.ceiling else [])
    threads = max(1, int(run.config.cpus_per_trial))
    train = replace(run.config.train, epochs=config.epochs, image_size=config.image_size, threads=threads,
                    data_fraction=float(config.data_fraction))
    wanted = {prefix: set(to_retrain(done, [trial.number for trial in picked], config.schedule())) for prefix, done, _ in stores}
    jobs = [Job((prefix, trial), record_of(trial).spec, asdict(replace(train, seed=_seed(trial, train) + offset)), config.data_fraction,
                label=f"fidelity: trial {trial.number}{' (second seed)' if prefix == REPLICA_PREFIX else ''}")
            for prefix, _, offset in stores for trial in picked if trial.number in wanted[prefix]]
    log(f"fidelity: {len(picked)} trials picked{' (long schedule twice: the seed ceiling)' if config.ceiling else ''}, "
        f"{len(picked) * len(stores) - len(jobs)} retrainings already done with this schedule, {len(jobs)} to go")
    reward = run.config.reward_function()

    def done(job: Job, record: TrialRecord) -> None:
        prefix, trial = job.key
        proxy = record_of(trial)
        record = record.with_(extra={**record.extra, "schedule": config.schedule(), "proxy_accuracy": proxy.accuracy,
                                     "proxy_reward": proxy.reward})
        if record.ok:  # S and P are the architecture's: the proxy's stand
            record = record.with_(reward=reward(record.accuracy, proxy.normalized_step_time, proxy.normalized_params))
        run.study.set_user_attr(f"{prefix}{trial.number}", record.to_attrs())
        log(f"fidelity: trial {trial.number}{' (second seed)' if prefix == REPLICA_PREFIX else ''} {record.status}"
            + (f": accuracy {record.accuracy:.4f} (proxy {proxy.accuracy:.4f})" if record.ok else f" ({record.failure_reason})"))

    if jobs:
        run_jobs(run, jobs, config.concurrent, done, log)
    return audit(run, config.schedule(), [t.number for t in picked])


def _seed(trial: optuna.trial.FrozenTrial, train: Any) -> int:
    seed = record_of(trial).seed
    return train.seed if seed is None else seed


def latest_rows(study: optuna.Study, results: dict[int, dict[str, Any]], schedule: dict[str, Any] | None = None,
                numbers: list[int] | None = None) -> list[dict[str, Any]]:
    """Successful results of ``schedule`` (default: the longest stored), one row per trial, the backbone marked."""
    if schedule is None and results:
        schedule = max(results.values(), key=lambda r: r.get("schedule", {}).get("epochs", 0)).get("schedule")
    base = backbone_trial(study)
    replicas = {n: TrialRecord.from_attrs(r) for n, r in stored_results(study, REPLICA_PREFIX).items()}
    proxies = {t.number: record_of(t) for t in study.get_trials(deepcopy=False)}

    def replica_accuracy(number: int) -> float | None:
        replica = replicas.get(number)
        return replica.accuracy if replica is not None and replica.extra.get("schedule") == schedule and replica.ok else None

    rows = []
    for number, stored_record in sorted(results.items()):
        record = TrialRecord.from_attrs(stored_record)
        if record.extra.get("schedule") != schedule or not record.ok or (numbers is not None and number not in numbers):
            continue
        proxy = proxies.get(number, TrialRecord(accuracy=record.extra.get("proxy_accuracy")))
        rows.append({"trial": number, "backbone": base is not None and number == base.number,
                     "proxy_accuracy": record.extra.get("proxy_accuracy"), "accuracy": record.accuracy,
                     "proxy_reward": record.extra.get("proxy_reward"), "reward": record.reward, "retrain_seconds": record.train_seconds,
                     "replica_accuracy": replica_accuracy(number), "scores": proxy_scores(proxy)})
    return rows


def audit_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Kendall tau and Spearman (accuracy and reward), top-k overlap, and the best proxy trial against the backbone."""
    proxy_accuracy, long_accuracy = [r["proxy_accuracy"] for r in rows], [r["accuracy"] for r in rows]
    proxy_reward, long_reward = [r["proxy_reward"] for r in rows], [r["reward"] for r in rows]
    enough = len(rows) >= 2
    k = max(1, len(rows) // 3)
    search = [r for r in rows if not r["backbone"]]
    best = max(search, key=lambda r: r["proxy_reward"]) if search else None
    base = next((r for r in rows if r["backbone"]), None)
    table = score_table({name: [(r.get("scores") or {}).get(name) for r in rows] for name in SCORES}, long_accuracy,
                        [r.get("replica_accuracy") for r in rows], k=k)
    return {
        "trials": rows, "ceiling": table["ceiling"], "scores": table["scores"],
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
        "proxy_schedule": {"epochs": run.config.train.epochs, "image_size": run.config.train.image_size,
                           "data_fraction": run.config.train.data_fraction},
        "failed": sorted(n for n, r in results.items() if r.get("schedule") == schedule and not TrialRecord.from_attrs(r).ok),
        **audit_rows(rows),
    }


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value  # JSON has no NaN


def score_lines(result: dict[str, Any]) -> list[str]:
    """The ceiling and each proxy score against long accuracy, one line each (CLI, report, dashboard note)."""
    def number(value: Any) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    def interval(value: list[float] | None) -> str:
        return "" if not value else f" [{value[0]:.2f}, {value[1]:.2f}]"

    ceiling = result.get("ceiling")
    lines = [f"seed ceiling: Kendall tau(long, long with another seed) {number(ceiling['kendall_tau'])}{interval(ceiling['interval'])} "
             f"over {ceiling['trials']} trials" if ceiling else "seed ceiling: n/a (the long schedule ran once)"]
    if ceiling and not ceiling.get("reliable", True):  # studies audited before the flag existed: as they were shown
        lines.append(f"  warning: {UNRELIABLE}")
    for name, row in (result.get("scores") or {}).items():
        if row:
            lines.append(f"score {name:<16} tau {number(row['kendall_tau'])}{interval(row['interval'])}, Spearman "
                         f"{number(row['spearman'])}, top-{result['top_k']} overlap {number(row['top_k_overlap'])}, "
                         f"{number(row['fraction_of_ceiling'])} of the ceiling")
    return lines


def summary_text(result: dict[str, Any]) -> str:
    """The CLI's table and the headline numbers."""
    def number(value: Any) -> str:
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"

    schedule = result["schedule"] or {}
    lines = [f"fidelity of {result['run_dir']}: proxy {result['proxy_schedule']['epochs']} epochs at "
             f"{result['proxy_schedule']['image_size']} px vs long {schedule.get('epochs')} epochs at {schedule.get('image_size')} px "
             f"on {schedule.get('data_fraction')} of the data",
             f"{'trial':>7} {'proxy A':>8} {'long A':>8} {'long A2':>8} {'proxy R':>8} {'long R':>8}"]
    for r in result["trials"]:
        name = f"{r['trial']}{'*' if r['backbone'] else ''}"
        lines.append(f"{name:>7} {r['proxy_accuracy']:>8.4f} {r['accuracy']:>8.4f} {number(r.get('replica_accuracy')):>8} "
                     f"{r['proxy_reward']:>8.4f} {r['reward']:>8.4f}")
    lines += ["(* the backbone; long A2: the long schedule again with another seed)", *score_lines(result),
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
