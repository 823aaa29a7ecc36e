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
from nas.record import DIRECTIONS, PROVENANCE, RESCORED, REWARD, record_of
from nas.scores import ACCURACY_SCORES, SCORES, check_score, proxy_scores
from rewards import pareto_front
from runners.credentials import mask_url
from runners.preflight import check_reward
from runners.study import Run, best_scored, scored_trials, trial_spec
from runners.yardstick import against_backbone, compare


def rescore(run: Run, name: str = "paper", score: str = "accuracy", **options: Any) -> list[dict[str, Any]]:
    """Re-rank the finished trials under another reward and proxy score from their stored records (no training).

    ``score`` (:data:`nas.scores.SCORES`, derived from each trial's curve) is A in the reward when it
    is accuracy-like; any other score ranks the trials by itself (the reward then uses the final accuracy).
    Returns one row per trial, best first: number, old/new reward, the score, old/new rank, spec key.
    """
    check_score(score, SCORES)
    reward = check_reward(name, options)
    trials = scored_trials(run.study)
    # ties broken by trial number, so equal rewards keep a stable order
    old_order = sorted(trials, key=lambda t: (-record_of(t).reward, t.number))
    old_rank = {t.number: i for i, t in enumerate(old_order, 1)}
    records = {t.number: record_of(t) for t in trials}
    scores = {n: proxy_scores(r)[score] for n, r in records.items()}
    a_of = {n: scores[n] if score in ACCURACY_SCORES and scores[n] is not None else r.accuracy for n, r in records.items()}
    new_value = {n: reward(a_of[n], *r.asp[1:]) for n, r in records.items()}
    key = (lambda n: new_value[n]) if score in ACCURACY_SCORES else (lambda n: -math.inf if scores[n] is None else scores[n])
    new_order = sorted(trials, key=lambda t: (-key(t.number), t.number))
    return [
        {"rank": i, "number": t.number, "old_rank": old_rank[t.number], "rank_change": old_rank[t.number] - i,
         **records[t.number].pick(RESCORED), REWARD: new_value[t.number], "old_reward": records[t.number].reward,
         "score": scores[t.number]}
        for i, t in enumerate(new_order, 1)
    ]


def rescore_yardstick(run: Run, name: str = "paper", **options: Any) -> dict[str, Any]:
    """The backbone against the best trials under the re-scoring reward (see :func:`runners.yardstick.compare`)."""
    reward = check_reward(name, options)
    return compare(run.study, reward)


def pareto_trials(run: Run) -> list[optuna.trial.FrozenTrial]:
    """Finished trials on the Pareto front of (max accuracy, min step time, min params)."""
    trials = scored_trials(run.study)
    return [trials[i] for i in pareto_front([record_of(t).asp for t in trials], list(DIRECTIONS))]


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
    record = record_of(trial)
    if trial.state != optuna.trial.TrialState.COMPLETE or record.spec is None:
        reason = record.failure_reason
        raise InputError(f"trial {number}: it is {trial.state.name}{f' ({reason})' if reason else ''}; only finished trials export")
    return [trial]


def provenance(run: Run, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """Where an exported spec comes from: the study, the trial's record (:data:`nas.record.PROVENANCE`), versions, the backbone."""
    record = record_of(trial)
    return {
        "study": run.config.name, "storage": mask_url(run.config.storage_url), "run_dir": str(run.path), "trial": trial.number,
        **record.pick(PROVENANCE), "reward_config": run.config.reward, "objective": run.config.objective,
        "data": record.data or run.config.data, "backbone": run.config.backbone, "optuna_version": optuna.__version__,
        "nas_version": nas.__version__, "trained_at": record.finished_at,
        "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "against_backbone": against_backbone(run.study, trial),
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
