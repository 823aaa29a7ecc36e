"""Working with a finished sweep without training: re-scoring, the Pareto front, exporting specs."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna

import nas
from nas.errors import InputError
from nas.io import atomic_write_json
from rewards import RewardError, get_reward, pareto_front
from runners.credentials import mask_url
from runners.study import Run, best_scored, raw_metrics, scored_trials, trial_spec
from runners.yardstick import against_backbone


def rescore(run: Run, name: str = "paper", score: str = "accuracy", **options: Any) -> list[dict[str, Any]]:
    """Re-rank the finished trials under another reward and proxy score from their stored records (no training).

    ``score`` (:data:`nas.scores.SCORES`, derived from each trial's curve) is A in the reward when it
    is accuracy-like; any other score ranks the trials by itself (the reward then uses the final accuracy).
    Returns one row per trial, best first: number, old/new reward, the score, old/new rank, spec key.
    """
    from nas.scores import ACCURACY_SCORES, SCORES, check_score, proxy_scores

    check_score(score, SCORES)
    try:
        reward = get_reward(name, **options)
    except RewardError as error:
        raise InputError(str(error)) from None
    trials = scored_trials(run.study)
    # ties broken by trial number, so equal rewards keep a stable order
    old_order = sorted(trials, key=lambda t: (-t.user_attrs["reward"], t.number))
    old_rank = {t.number: i for i, t in enumerate(old_order, 1)}
    scores = {t.number: proxy_scores(t.user_attrs)[score] for t in trials}
    a_of = {t.number: scores[t.number] if score in ACCURACY_SCORES and scores[t.number] is not None else t.user_attrs["accuracy"]
            for t in trials}
    new_value = {t.number: reward(a_of[t.number], t.user_attrs["normalized_step_time"], t.user_attrs["normalized_params"])
                 for t in trials}
    key = (lambda n: new_value[n]) if score in ACCURACY_SCORES else (lambda n: -math.inf if scores[n] is None else scores[n])
    new_order = sorted(trials, key=lambda t: (-key(t.number), t.number))
    return [
        {"rank": i, "number": t.number, "old_rank": old_rank[t.number], "rank_change": old_rank[t.number] - i,
         "reward": new_value[t.number], "old_reward": t.user_attrs["reward"], **raw_metrics(t), "score": scores[t.number],
         "spec_key": t.user_attrs.get("spec_key")}
        for i, t in enumerate(new_order, 1)
    ]


def rescore_yardstick(run: Run, name: str = "paper", **options: Any) -> dict[str, Any]:
    """The backbone against the best trials under the re-scoring reward (see :func:`runners.yardstick.compare`)."""
    from runners.yardstick import compare

    try:
        reward = get_reward(name, **options)
    except RewardError as error:
        raise InputError(str(error)) from None
    return compare(run.study, reward)


def pareto_trials(run: Run) -> list[optuna.trial.FrozenTrial]:
    """Finished trials on the Pareto front of (max accuracy, min step time, min params)."""
    trials = scored_trials(run.study)
    points = [(t.user_attrs["accuracy"], t.user_attrs["normalized_step_time"], t.user_attrs["normalized_params"]) for t in trials]
    return [trials[i] for i in pareto_front(points, ["maximize", "minimize", "minimize"])]


def best_trial(run: Run) -> optuna.trial.FrozenTrial:
    best = best_scored(run.study)
    if best is None:
        raise InputError(f"trial: {run.path} has no finished trial yet")
    return best


def pick_trials(run: Run, which: str) -> list[optuna.trial.FrozenTrial]:
    """``best``, ``pareto`` or a trial number; a failed, pruned or missing trial is an InputError."""
    if which == "best":
        return [best_trial(run)]
    if which == "pareto":
        front = pareto_trials(run)
        if not front:
            raise InputError(f"trial: {run.path} has no finished trial yet")
        return front
    try:
        number = int(which)
    except ValueError:
        raise InputError(f"--trial: {which!r} is not allowed, allowed best, pareto or a trial number") from None
    trial = run.trial(number)
    if trial.state != optuna.trial.TrialState.COMPLETE or "spec" not in trial.user_attrs:
        reason = trial.user_attrs.get("failure_reason")
        raise InputError(f"trial {number}: it is {trial.state.name}{f' ({reason})' if reason else ''}; only finished trials export")
    return [trial]


def provenance(run: Run, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    a = trial.user_attrs
    return {
        "study": run.config.name, "storage": mask_url(run.config.storage_url), "run_dir": str(run.path), "trial": trial.number,
        "accuracy": a.get("accuracy"), "normalized_step_time": a.get("normalized_step_time"), "step_time_ms": a.get("step_time_ms"),
        "reference_step_time_ms": a.get("reference_step_time_ms"), "params": a.get("params"),
        "normalized_params": a.get("normalized_params"), "reward": a.get("reward"), "reward_config": run.config.reward,
        "objective": run.config.objective, "data": a.get("data", run.config.data), "backbone": run.config.backbone,
        "device": a.get("device"), "host": a.get("host"), "torch_version": a.get("torch_version"), "optuna_version": optuna.__version__,
        "nas_version": nas.__version__, "trained_at": a.get("finished_at"), "train_config": a.get("train_config"),
        "timing_config": a.get("timing_config"), "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "against_backbone": against_backbone(run.study, trial),
    }


def export(run: Run, which: str, output: str | Path, force: bool = False) -> list[Path]:
    """Write ``{"spec": ..., "provenance": ...}`` for the chosen trial(s); ``pareto`` writes a directory."""
    trials = pick_trials(run, which)
    output = Path(output)
    if which == "pareto":
        if output.exists() and not output.is_dir():
            raise InputError(f"-o: {output} exists and is not a directory (pareto exports one file per trial)")
        targets = [output / f"trial-{t.number}.json" for t in trials]
    else:
        targets = [output]
    existing = [p for p in targets if p.exists()]
    if existing and not force:
        raise InputError(f"-o: {existing[0]} exists, allowed a new path or --force to overwrite")
    for trial, target in zip(trials, targets):
        spec = replace(trial_spec(trial), name=f"{run.config.name}-trial{trial.number}")
        atomic_write_json(target, {"spec": spec.to_dict(), "provenance": provenance(run, trial)})
    return targets
