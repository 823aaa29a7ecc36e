"""The backbone as a yardstick: one reference trial per sweep, and how the search results compare with it.

Every sweep evaluates its backbone first, through the same proxy (same training, same timing), as
an enqueued trial with the user attribute ``role = "backbone"``. It is never counted toward the
requested trials, never a duplicate source and never "best"; ``rescore``, ``report``, ``export``
and the dashboard compare the best trials with it in A, S and P.

    >>> dominates((0.9, 0.8, 1.0), (0.9, 1.0, 1.0))
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import optuna

from nas.record import DIRECTIONS, METRICS, REWARD, TrialRecord, record_of
from runners.study import backbone_trial, scored_trials


def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """``a`` is at least as good as ``b`` in (A, S, P) under their directions (A max, S and P min), and better in one."""
    signs = [1 if d == "maximize" else -1 for d in DIRECTIONS]
    mine, theirs = [x * s for x, s in zip(a, signs)], [y * s for y, s in zip(b, signs)]
    return all(x >= y for x, y in zip(mine, theirs)) and any(x > y for x, y in zip(mine, theirs))


def _scored(trial: optuna.trial.FrozenTrial, reward: Callable[[float, float, float], float] | None) -> tuple[tuple[float, ...], float]:
    """((A, S, P), reward): the stored reward, or ``reward`` recomputed from the stored A, S, P."""
    record = record_of(trial)
    asp = tuple(float(x) for x in record.asp)
    return asp, float(reward(*asp) if reward else record.reward)


def _named(asp: tuple[float, ...], value: float, prefix: str = "") -> dict[str, float]:
    return {**{prefix + name: x for name, x in zip(METRICS, asp)}, prefix + REWARD: value}


def _relative(asp: tuple[float, ...], base: tuple[float, ...]) -> dict[str, float]:
    return {"accuracy_delta": asp[0] - base[0], "step_time_ratio": asp[1] / base[1], "params_ratio": asp[2] / base[2]}


def compare(study: optuna.Study, reward: Callable[[float, float, float], float] | None = None, top: int = 5) -> dict[str, Any]:
    """The backbone's A, S, P, reward; the ``top`` trials by reward against it; the trials that dominate it.

    ``reward`` re-scores every trial and the backbone from stored raw metrics (default: stored reward).
    Every row names A, S, P by their record fields (``accuracy``, ``normalized_step_time``, ``normalized_params``).
    """
    base_trial = backbone_trial(study)
    trials = scored_trials(study)
    if base_trial is None:
        return {"backbone": None, "top": [], "dominating": [], "beating_reward": None, "trials": len(trials)}
    base_asp, base_reward = _scored(base_trial, reward)
    rows = sorted(((t, *_scored(t, reward)) for t in trials), key=lambda row: (-row[2], row[0].number))
    top_rows = [{"trial": t.number, **_named(asp, value), **_relative(asp, base_asp), "beats_reward": value > base_reward,
                 "dominates": dominates(asp, base_asp)} for t, asp, value in rows[:top]]
    return {"backbone": {"trial": base_trial.number, **_named(base_asp, base_reward)}, "top": top_rows,
            "dominating": [t.number for t, asp, _ in rows if dominates(asp, base_asp)],
            "beating_reward": sum(value > base_reward for _, _, value in rows), "trials": len(rows)}


def _asp_text(row: dict[str, Any], prefix: str = "") -> str:
    a, s, p = (row[prefix + name] for name in METRICS)
    return f"A {a:.4f}, S {s:.3f}, P {p:.3f}"


def summary_lines(comparison: dict[str, Any], limit: int = 3) -> list[str]:
    """Plain-text lines for the CLI: the backbone, the best trials relative to it, who dominates it."""
    base = comparison["backbone"]
    if base is None:
        return ["backbone yardstick: not evaluated in this sweep"]
    lines = [f"backbone (trial {base['trial']}): reward {base[REWARD]:.4f}, {_asp_text(base)}; "
             f"{comparison['beating_reward']} of {comparison['trials']} trials have a higher reward"]
    for row in comparison["top"][:limit]:
        lines.append(f"  trial {row['trial']}: reward {row[REWARD]:.4f}, A {row['accuracy_delta']:+.4f}, "
                     f"S x{row['step_time_ratio']:.3f}, P x{row['params_ratio']:.3f} vs backbone"
                     + ("  (dominates it)" if row["dominates"] else ""))
    dominating = comparison["dominating"]
    lines.append(f"  trials dominating the backbone in (A, S, P): {', '.join(map(str, dominating)) if dominating else 'none'}")
    return lines


def markdown(comparison: dict[str, Any]) -> str:
    """A markdown section for the dashboard's study note."""
    base = comparison["backbone"]
    if base is None:
        return "## Backbone yardstick\n\nThe backbone was not evaluated in this sweep.\n"
    rows = []
    for r in comparison["top"]:
        a, s, p = (r[name] for name in METRICS)
        rows.append(f"| {r['trial']} | {r[REWARD]:.4f} | {a:.4f} ({r['accuracy_delta']:+.4f}) | {s:.3f} (x{r['step_time_ratio']:.3f}) "
                    f"| {p:.3f} (x{r['params_ratio']:.3f}) | {'yes' if r['dominates'] else 'no'} |")
    dominating = comparison["dominating"]
    return (f"## Backbone yardstick: trial {base['trial']}\n\n"
            f"Backbone: reward {base[REWARD]:.4f}, {_asp_text(base)}. {comparison['beating_reward']} of {comparison['trials']} "
            f"trials have a higher reward; dominating it in (A, S, P): {', '.join(map(str, dominating)) if dominating else 'none'}.\n\n"
            "| trial | reward | A (vs backbone) | S (ratio) | P (ratio) | dominates |\n|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")


def against_backbone(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, Any] | None:
    """One trial against the backbone (for an export's provenance); None without a backbone."""
    base_trial = backbone_trial(study)
    if base_trial is None or None in record_of(trial).asp:
        return None
    (base_asp, base_reward), (asp, value) = _scored(base_trial, None), _scored(trial, None)
    return {"backbone_trial": base_trial.number, **_named(base_asp, base_reward, "backbone_"), **_relative(asp, base_asp),
            "beats_reward": value > base_reward, "dominates": dominates(asp, base_asp)}


def verdict(number: int, record: TrialRecord | Mapping[str, Any], against: dict[str, Any] | None) -> str:
    """One line: a trial's A, S, P, reward against the backbone's, and whether it beats it.

    >>> verdict(4, TrialRecord(status="ok", accuracy=0.9, normalized_step_time=0.8, normalized_params=0.5, reward=0.94),
    ...         {"backbone_trial": 0, "backbone_accuracy": 0.95, "backbone_normalized_step_time": 1.0,
    ...          "backbone_normalized_params": 1.0, "backbone_reward": 0.95, "beats_reward": False, "dominates": False})
    'trial 4: A 0.9000, S 0.800, P 0.500, reward 0.9400 vs backbone (trial 0): A 0.9500, S 1.000, P 1.000, reward 0.9500; it does not beat the backbone'
    """
    record = record if isinstance(record, TrialRecord) else TrialRecord.from_attrs(record)
    text = f"trial {number}: {_asp_text(record.metrics())}, reward {record.reward:.4f}"
    if against is None:
        return text + " (no backbone yardstick in this sweep)"
    text += (f" vs backbone (trial {against['backbone_trial']}): {_asp_text(against, 'backbone_')}, "
             f"reward {against['backbone_' + REWARD]:.4f}; ")
    if not against["beats_reward"]:
        return text + "it does not beat the backbone"
    return text + ("it beats the backbone and dominates it in (A, S, P)" if against["dominates"] else "it beats the backbone's reward")
