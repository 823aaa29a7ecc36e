"""The backbone as a yardstick: one reference trial per sweep, and how the search results compare with it.

Every sweep evaluates its backbone first, through the same proxy (same training, same timing), as
an enqueued trial with the user attribute ``role = "backbone"``. It is never counted toward the
requested trials, never a duplicate source and never "best"; ``rescore``, ``report``, ``export``
and the dashboard compare the best trials with it in A, S and P.

    >>> dominates({"accuracy": 0.9, "normalized_step_time": 0.8, "normalized_params": 1.0},
    ...           {"accuracy": 0.9, "normalized_step_time": 1.0, "normalized_params": 1.0})
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna

from runners.study import BACKBONE_ROLE, backbone_numbers, backbone_trial, scored_trials
from search_spaces import SearchSpace

TrialState = optuna.trial.TrialState
METRICS = ("accuracy", "normalized_step_time", "normalized_params")


def backbone_params(space: SearchSpace) -> dict[str, Any] | None:
    """The parameters under which :meth:`SearchSpace.suggest` yields the backbone; None if the space excludes it."""
    params: dict[str, Any] = {}
    for number, (choice, stage) in enumerate(zip(space.stages, space.backbone.stages), 1):
        if (stage.operator not in choice.operators or not choice.min_layers <= stage.layers <= choice.max_layers
                or stage.kernel not in choice.kernels or stage.expansion not in choice.expansions
                or choice.se_for(stage.operator) != stage.se_ratio):
            return None
        params.update({f"stage{number}.op": stage.operator, f"stage{number}.layers": stage.layers,
                       f"stage{number}.kernel": stage.kernel, f"stage{number}.expansion": stage.expansion})
    return params


def ensure_backbone_trial(study: optuna.Study, space: SearchSpace) -> bool:
    """Enqueue the backbone once per study (idempotent on resume and across drivers); True when enqueued now.

    A backbone trial that is waiting, running, finished or truly failed counts as present; one a
    killed driver left interrupted is present through its retry (``retry_of``).
    """
    trials = study.get_trials(deepcopy=False)
    numbers = backbone_numbers(trials)
    alive = [t for t in trials if t.number in numbers and not (
        t.state == TrialState.FAIL and str(t.user_attrs.get("failure_reason", "")).startswith("interrupted"))]
    params = backbone_params(space)
    if alive or params is None:
        return False
    study.enqueue_trial(params, user_attrs={"role": BACKBONE_ROLE}, skip_if_exists=False)
    return True


def dominates(a: dict[str, float], b: dict[str, float]) -> bool:
    """``a`` is at least as good as ``b`` in A (max), S and P (min), and better in one."""
    at_least = a["accuracy"] >= b["accuracy"] and a["normalized_step_time"] <= b["normalized_step_time"] \
        and a["normalized_params"] <= b["normalized_params"]
    better = a["accuracy"] > b["accuracy"] or a["normalized_step_time"] < b["normalized_step_time"] \
        or a["normalized_params"] < b["normalized_params"]
    return at_least and better


def _metrics(trial: optuna.trial.FrozenTrial, reward: Callable[[float, float, float], float] | None) -> dict[str, float]:
    out = {name: float(trial.user_attrs[name]) for name in METRICS}
    out["reward"] = float(reward(*(out[name] for name in METRICS)) if reward else trial.user_attrs["reward"])
    return out


def compare(study: optuna.Study, reward: Callable[[float, float, float], float] | None = None, top: int = 5) -> dict[str, Any]:
    """The backbone's A, S, P, reward; the ``top`` trials by reward against it; the trials that dominate it.

    ``reward`` re-scores every trial and the backbone from stored raw metrics (default: stored reward).
    """
    base_trial = backbone_trial(study)
    trials = scored_trials(study)
    if base_trial is None:
        return {"backbone": None, "top": [], "dominating": [], "beating_reward": None, "trials": len(trials)}
    base = {"trial": base_trial.number, **_metrics(base_trial, reward)}
    rows = sorted(((t, _metrics(t, reward)) for t in trials), key=lambda pair: (-pair[1]["reward"], pair[0].number))
    top_rows = [{"trial": t.number, **m, "accuracy_delta": m["accuracy"] - base["accuracy"],
                 "step_time_ratio": m["normalized_step_time"] / base["normalized_step_time"],
                 "params_ratio": m["normalized_params"] / base["normalized_params"],
                 "beats_reward": m["reward"] > base["reward"], "dominates": dominates(m, base)} for t, m in rows[:top]]
    return {"backbone": base, "top": top_rows, "dominating": [t.number for t, m in rows if dominates(m, base)],
            "beating_reward": sum(m["reward"] > base["reward"] for _, m in rows), "trials": len(rows)}


def summary_lines(comparison: dict[str, Any], limit: int = 3) -> list[str]:
    """Plain-text lines for the CLI: the backbone, the best trials relative to it, who dominates it."""
    base = comparison["backbone"]
    if base is None:
        return ["backbone yardstick: not evaluated in this sweep"]
    lines = [f"backbone (trial {base['trial']}): reward {base['reward']:.4f}, A {base['accuracy']:.4f}, "
             f"S {base['normalized_step_time']:.3f}, P {base['normalized_params']:.3f}; "
             f"{comparison['beating_reward']} of {comparison['trials']} trials have a higher reward"]
    for row in comparison["top"][:limit]:
        lines.append(f"  trial {row['trial']}: reward {row['reward']:.4f}, A {row['accuracy_delta']:+.4f}, "
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
    rows = "\n".join(f"| {r['trial']} | {r['reward']:.4f} | {r['accuracy']:.4f} ({r['accuracy_delta']:+.4f}) | "
                     f"{r['normalized_step_time']:.3f} (x{r['step_time_ratio']:.3f}) | {r['normalized_params']:.3f} "
                     f"(x{r['params_ratio']:.3f}) | {'yes' if r['dominates'] else 'no'} |" for r in comparison["top"])
    dominating = comparison["dominating"]
    return (f"## Backbone yardstick: trial {base['trial']}\n\n"
            f"Backbone: reward {base['reward']:.4f}, A {base['accuracy']:.4f}, S {base['normalized_step_time']:.3f}, "
            f"P {base['normalized_params']:.3f}. {comparison['beating_reward']} of {comparison['trials']} trials have a "
            f"higher reward; dominating it in (A, S, P): {', '.join(map(str, dominating)) if dominating else 'none'}.\n\n"
            f"| trial | reward | A (vs backbone) | S (ratio) | P (ratio) | dominates |\n|---|---|---|---|---|---|\n{rows}\n")


def against_backbone(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, Any] | None:
    """One trial against the backbone (for an export's provenance); None without a backbone."""
    base_trial = backbone_trial(study)
    if base_trial is None or any(name not in trial.user_attrs for name in METRICS):
        return None
    base, mine = _metrics(base_trial, None), _metrics(trial, None)
    return {"backbone_trial": base_trial.number, **{f"backbone_{name}": base[name] for name in (*METRICS, "reward")},
            "accuracy_delta": mine["accuracy"] - base["accuracy"],
            "step_time_ratio": mine["normalized_step_time"] / base["normalized_step_time"],
            "params_ratio": mine["normalized_params"] / base["normalized_params"],
            "beats_reward": mine["reward"] > base["reward"], "dominates": dominates(mine, base)}


def verdict(number: int, attrs: dict[str, Any], against: dict[str, Any] | None) -> str:
    """One line: a trial's A, S, P, reward against the backbone's, and whether it beats it.

    >>> verdict(4, {"accuracy": 0.9, "normalized_step_time": 0.8, "normalized_params": 0.5, "reward": 0.94},
    ...         {"backbone_trial": 0, "backbone_accuracy": 0.95, "backbone_normalized_step_time": 1.0,
    ...          "backbone_normalized_params": 1.0, "backbone_reward": 0.95, "beats_reward": False, "dominates": False})
    'trial 4: A 0.9000, S 0.800, P 0.500, reward 0.9400 vs backbone (trial 0): A 0.9500, S 1.000, P 1.000, reward 0.9500; it does not beat the backbone'
    """
    text = (f"trial {number}: A {attrs['accuracy']:.4f}, S {attrs['normalized_step_time']:.3f}, P {attrs['normalized_params']:.3f}, "
            f"reward {attrs['reward']:.4f}")
    if against is None:
        return text + " (no backbone yardstick in this sweep)"
    text += (f" vs backbone (trial {against['backbone_trial']}): A {against['backbone_accuracy']:.4f}, "
             f"S {against['backbone_normalized_step_time']:.3f}, P {against['backbone_normalized_params']:.3f}, "
             f"reward {against['backbone_reward']:.4f}; ")
    if not against["beats_reward"]:
        return text + "it does not beat the backbone"
    return text + ("it beats the backbone and dominates it in (A, S, P)" if against["dominates"] else "it beats the backbone's reward")
