"""``nas calibrate``: which proxy setting ranks architectures like the long schedule, at what cost?

K architectures of a finished sweep (the backbone and a spread of the proxy-reward ranking, as
``nas fidelity`` picks them) are trained with the long schedule twice (two seeds: the noise
ceiling, stored as ``nas fidelity`` stores it) and with every point of a small grid of proxy
settings (epochs x image size x data fraction). For every grid point and proxy score
(:data:`nas.scores.SCORES`): the cost (CPU seconds per architecture; GPU wall seconds on a GPU
worker) and Kendall tau against the long accuracy as a fraction of the ceiling. The recommended
setting is the cheapest grid point whose accuracy-like score (one the sweep can use as A) reaches
``target`` of the ceiling; it is written as a sweep-config snippet. Every training is stored in the
study as ``calibration:<trial>:<epochs>:<image size>:<fraction>``, so a rerun trains only what is missing.

    >>> table = [{"setting": {"epochs": 1}, "score": "accuracy", "cost": 2.0, "fraction_of_ceiling": 0.5},
    ...          {"setting": {"epochs": 2}, "score": "accuracy", "cost": 4.0, "fraction_of_ceiling": 0.9},
    ...          {"setting": {"epochs": 4}, "score": "best_accuracy", "cost": 8.0, "fraction_of_ceiling": 1.0}]
    >>> choose(table, 0.8)["setting"]
    {'epochs': 2}
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from nas.errors import InputError, check_number
from nas.io import atomic_write_json, atomic_write_text
from nas.record import TrialRecord, record_of
from nas.scores import ACCURACY_SCORES, SCORES, proxy_scores
from runners.analysis.fidelity import (
    UNRELIABLE,
    FidelityConfig,
    fraction_of,
    pick_trials,
    run_fidelity,
    score_table,
    stored_results,
)
from runners.analysis.retrain import Job, run_jobs, settled
from runners.study import Run

PREFIX = "calibration:"


@dataclass(frozen=True)
class CalibrationConfig:
    """The grid of proxy settings, the long schedule (trained twice), K and the target fraction of the ceiling."""

    trials: int = 12
    epochs: tuple[int, ...] = (1, 2)
    image_sizes: tuple[int, ...] = (16, 32)
    data_fractions: tuple[float, ...] = (0.25, 1.0)
    long_epochs: int = 16
    long_image_size: int = 32
    long_data_fraction: float = 1.0
    target: float = 0.8
    concurrent: int = 2

    def __post_init__(self) -> None:
        for name, low in (("epochs", 1), ("image_sizes", 8)):
            values = getattr(self, name)
            if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in values):
                raise InputError(f"{name}: {values!r} is not allowed, allowed a non-empty list of integers >= {low}")
        if not self.data_fractions or not all(isinstance(v, (int, float)) and 0 < v <= 1 for v in self.data_fractions):
            raise InputError(f"data_fractions: {self.data_fractions!r} is not allowed, allowed a non-empty list of numbers in (0, 1]")
        check_number("target", self.target, low=0, high=1, low_open=True)
        FidelityConfig(trials=self.trials, epochs=self.long_epochs, image_size=self.long_image_size,
                       data_fraction=self.long_data_fraction, concurrent=self.concurrent)  # validates the long schedule

    def grid(self) -> list[dict[str, Any]]:
        """Every proxy setting of the grid, cheapest-looking first."""
        return [{"epochs": e, "image_size": s, "data_fraction": float(f)}
                for e, s, f in itertools.product(sorted(self.epochs), sorted(self.image_sizes), sorted(self.data_fractions))]

    def long(self) -> FidelityConfig:
        return FidelityConfig(trials=self.trials, epochs=self.long_epochs, image_size=self.long_image_size,
                              data_fraction=self.long_data_fraction, concurrent=self.concurrent, ceiling=True)


def key_of(number: int, setting: dict[str, Any]) -> str:
    return f"{PREFIX}{number}:{setting['epochs']}:{setting['image_size']}:{setting['data_fraction']:g}"


def cost_of(stored: dict[str, Any]) -> float | None:
    """CPU seconds of one training; on a GPU (or where a record has no CPU time) its wall seconds."""
    record = TrialRecord.from_attrs(stored)
    cpu = record.extra.get("cpu_seconds")
    value = record.train_seconds if record.extra.get("device_type") == "cuda" or cpu is None else cpu
    return float(value) if isinstance(value, (int, float)) else None


def grid_to_go(stored: dict[str, Any], config: CalibrationConfig, numbers: list[int]) -> list[tuple[int, dict[str, Any]]]:
    """The (trial, grid point) pairs without a stored training; one lost with its worker counts as none (fidelity's rule).

    >>> config = CalibrationConfig(epochs=(1,), image_sizes=(16,), data_fractions=(1.0,))
    >>> grid_to_go({"calibration:1:1:16:1": {"status": "ok"}}, config, [1, 2])
    [(2, {'epochs': 1, 'image_size': 16, 'data_fraction': 1.0})]
    """
    return [(number, setting) for setting in config.grid() for number in numbers if not settled(stored.get(key_of(number, setting)))]


def train_grid(run: Run, config: CalibrationConfig, numbers: list[int], log: Any) -> None:
    """Train every (picked trial, grid point) not stored yet, storing each record in the study."""
    threads = max(1, int(run.config.cpus_per_trial))
    trials = {t.number: t for t in pick_trials(run, config.trials)}
    jobs = []
    for number, setting in grid_to_go(run.study.user_attrs, config, numbers):
        record = record_of(trials[number])
        train = replace(run.config.train, threads=threads, seed=run.config.train.seed if record.seed is None else record.seed, **setting)
        jobs.append(Job((number, setting), record.spec, asdict(train), setting["data_fraction"], label=f"calibrate: trial {number}"))
    log(f"calibrate: {len(config.grid())} proxy settings x {len(numbers)} trials, {len(jobs)} trainings to go")

    def done(job: Job, record: TrialRecord) -> None:
        number, setting = job.key
        run.study.set_user_attr(key_of(number, setting), record.with_(extra={**record.extra, "setting": setting}).to_attrs())
        log(f"calibrate: trial {number} at {setting}: {record.status}")

    if jobs:
        run_jobs(run, jobs, config.concurrent, done, log)


def table_rows(run: Run, config: CalibrationConfig, long_audit: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (grid point, score): cost, tau and its interval, fraction of the ceiling."""
    rows = long_audit["trials"]
    numbers, long = [r["trial"] for r in rows], [r["accuracy"] for r in rows]
    long_records = stored_results(run.study)
    long_costs = [cost_of(long_records[n]) for n in numbers]
    long_cost = sum(c for c in long_costs if c is not None) / max(1, sum(c is not None for c in long_costs))
    table = []
    for setting in config.grid():
        records = [run.study.user_attrs.get(key_of(n, setting), {}) for n in numbers]
        ok = [TrialRecord.from_attrs(r).ok for r in records]
        costs = [cost_of(r) for r, good in zip(records, ok) if good]
        scores = {name: [proxy_scores(r)[name] if good else None for r, good in zip(records, ok)] for name in SCORES}
        result = score_table(scores, long)  # the ceiling is the long audit's
        cost = sum(c for c in costs if c is not None) / max(1, len(costs))
        for name, row in result["scores"].items():
            if row:
                table.append({"setting": setting, "score": name, "cost": cost, "relative_cost": cost / long_cost if long_cost else None,
                              "kendall_tau": row["kendall_tau"], "interval": row["interval"], "spearman": row["spearman"],
                              "fraction_of_ceiling": fraction_of(row["kendall_tau"], long_audit["ceiling"]), "trials": row["trials"]})
    return table


def choose(table: list[dict[str, Any]], target: float, scores: tuple[str, ...] = ACCURACY_SCORES) -> dict[str, Any] | None:
    """The cheapest row of ``table`` whose score is one of ``scores`` and whose fraction of the ceiling is >= ``target``.

    Equal costs: the higher fraction wins. None when no row reaches the target.
    """
    reaching = [r for r in table if r["score"] in scores and r.get("fraction_of_ceiling") is not None
                and r["fraction_of_ceiling"] >= target and r.get("cost") is not None]
    return min(reaching, key=lambda r: (r["cost"], -r["fraction_of_ceiling"])) if reaching else None


def recommend(table: list[dict[str, Any]], ceiling: dict[str, Any], target: float) -> dict[str, Any] | None:
    """:func:`choose`'s row, or None when the ceiling is noise (its interval reaches 0): never a recommendation measured against noise."""
    return choose(table, target) if ceiling.get("reliable", True) else None


def frontier(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows no cheaper row beats in fraction of the ceiling (cost ascending): what each budget buys."""
    best, front = float("-inf"), []
    for row in sorted((r for r in table if r.get("fraction_of_ceiling") is not None), key=lambda r: (r["cost"], -r["fraction_of_ceiling"])):
        if row["fraction_of_ceiling"] > best:
            best = row["fraction_of_ceiling"]
            front.append(row)
    return front


def snippet(row: dict[str, Any]) -> str:
    """The sweep-config lines (YAML) that make ``row``'s setting and score the sweep's proxy."""
    s = row["setting"]
    return (f"# nas calibrate: {row['fraction_of_ceiling']:.2f} of the seed ceiling at {row['relative_cost']:.3f} of the long cost\n"
            f"train: {{epochs: {s['epochs']}, image_size: {s['image_size']}, data_fraction: {s['data_fraction']:g}, score: {row['score']}}}\n")


def plot(table: list[dict[str, Any]], target: float, path: Path, steady: bool = True) -> None:
    """Cost against fraction of the ceiling, one series per score, the target as a line (a warning title when the ceiling is noise)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name in SCORES:
        rows = sorted((r for r in table if r["score"] == name and r["fraction_of_ceiling"] is not None), key=lambda r: r["cost"])
        if rows:
            axes.plot([r["relative_cost"] or r["cost"] for r in rows], [r["fraction_of_ceiling"] for r in rows], "o-", label=name, alpha=0.8)
    axes.axhline(target, color="grey", linestyle="--", label=f"target {target:g}")
    axes.set_xscale("log")
    axes.set_xlabel("proxy cost / long-schedule cost (CPU seconds per architecture)")
    axes.set_ylabel("Kendall tau / seed ceiling")
    axes.legend(fontsize=8)
    if not steady:
        axes.set_title("the seed ceiling's interval reaches 0: fractions of it mean little", fontsize=9, color="firebrick")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run_calibration(run: Run, config: CalibrationConfig, quiet: bool = False) -> dict[str, Any]:
    """The long schedule twice, the grid, the table, the choice; writes calibration.{json,yaml,png} into the run directory."""
    log = (lambda message: None) if quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    long_audit = run_fidelity(run, config.long(), quiet=quiet)
    if long_audit["ceiling"] is None or len(long_audit["trials"]) < 3:
        raise RuntimeError(f"calibrate: only {len(long_audit['trials'])} architectures finished the long schedule; need 3 with both seeds")
    train_grid(run, config, [r["trial"] for r in long_audit["trials"]], log)
    table = table_rows(run, config, long_audit)
    steady = long_audit["ceiling"].get("reliable", True)
    chosen = recommend(table, long_audit["ceiling"], config.target)
    result = {"run_dir": str(run.path), "long_schedule": config.long().schedule(), "ceiling": long_audit["ceiling"],
              "trials": [r["trial"] for r in long_audit["trials"]], "target": config.target, "table": table, "ceiling_reliable": steady,
              "recommended": chosen, "frontier": frontier(table), "snippet": snippet(chosen) if chosen else None}
    atomic_write_json(run.path / "calibration.json", result)
    if chosen:
        atomic_write_text(run.path / "calibration.yaml", result["snippet"])
    else:
        (run.path / "calibration.yaml").unlink(missing_ok=True)  # an earlier run's recommendation no longer holds
    plot(table, config.target, run.path / "calibration.png", steady)
    return result


def summary_text(result: dict[str, Any]) -> str:
    """The CLI's table: one line per grid point and score, the ceiling, the recommendation or the frontier."""
    ceiling = result["ceiling"]
    lines = [f"calibration of {result['run_dir']} on {len(result['trials'])} architectures; long schedule {result['long_schedule']}",
             f"seed ceiling: Kendall tau {ceiling['kendall_tau']:.3f} [{ceiling['interval'][0]:.2f}, {ceiling['interval'][1]:.2f}]",
             f"{'epochs':>6} {'px':>4} {'data':>5} {'score':<16} {'CPU s':>8} {'x long':>7} {'tau':>6} {'of ceil':>7}"]
    for r in result["table"]:
        s, fraction = r["setting"], r["fraction_of_ceiling"]
        lines.append(f"{s['epochs']:>6} {s['image_size']:>4} {s['data_fraction']:>5.2f} {r['score']:<16} {r['cost']:>8.1f} "
                     f"{r['relative_cost'] or 0:>7.3f} {r['kendall_tau'] if r['kendall_tau'] is not None else float('nan'):>6.3f} "
                     f"{fraction if fraction is not None else float('nan'):>7.2f}")
    if not result.get("ceiling_reliable", True):
        lines.append(f"nothing recommended: {UNRELIABLE}; the frontier (what each budget buys, as tau against the long schedule):")
        lines += [f"  {r['setting']} {r['score']}: tau {r['kendall_tau']:.3f} at {r['relative_cost'] or 0:.3f} of the long cost"
                  for r in result["frontier"]]
    elif result["recommended"]:
        lines.append(f"recommended (cheapest reaching {result['target']:g} of the ceiling), written to calibration.yaml:\n"
                     + result["snippet"].rstrip())
    else:
        lines.append(f"no grid point reaches {result['target']:g} of the ceiling with an accuracy-like score; the frontier:")
        lines += [f"  {r['setting']} {r['score']}: {r['fraction_of_ceiling']:.2f} at {r['relative_cost'] or 0:.3f} of the long cost"
                  for r in result["frontier"]]
    return "\n".join(lines)
