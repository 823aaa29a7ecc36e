"""``nas dashboard``: the sweep's study in optuna-dashboard, made NAS-aware.

Each finished trial gets a note (stage table, A, S, step time, P, reward) and its spec JSON as an
artifact; the study gets a note with the best spec and the Pareto front. ``nas dashboard`` writes
whatever is missing and keeps doing so while it serves (so a dashboard opened mid-sweep is live).
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import optuna

from nas.spec import NetworkSpec
from runners.study import best_scored, open_run, scored_trials, stage_table_markdown

MARK = "nas_note_written"


def artifact_store(run_dir: str | Path) -> optuna.artifacts.FileSystemArtifactStore:
    path = Path(run_dir) / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(str(path))


def trial_note(number: int, attrs: dict[str, Any], reward_config: dict[str, Any]) -> str:
    """Markdown for one trial: metrics and the stage table."""
    spec = NetworkSpec.from_dict(attrs["spec"])
    options = ", ".join(f"{k}={v}" for k, v in reward_config.items() if k != "name")
    reused = f"\n\nReused the record of trial {attrs['reused_from']} (same architecture)." if "reused_from" in attrs else ""
    return (
        f"## Trial {number}: reward {attrs['reward']:.4f}\n\n"
        f"| A (accuracy) | S (norm. step time) | step time | P (norm. params) | params | reward |\n|---|---|---|---|---|---|\n"
        f"| {attrs['accuracy']:.4f} | {attrs['normalized_step_time']:.3f} | {attrs['step_time_ms']:.1f} ms | "
        f"{attrs['normalized_params']:.3f} | {attrs['params']:,} | {attrs['reward']:.4f} |\n\n"
        f"Reward: {reward_config['name']} ({options}); data {attrs.get('data')}; device {attrs.get('device')}.\n\n"
        f"### Stage table\n\n{stage_table_markdown(spec)}\n\n`{attrs['spec_key']}`{reused}\n"
    )


def annotate_trial(study: optuna.Study, trial: optuna.Trial | optuna.trial.FrozenTrial, run_dir: str | Path,
                   reward_config: dict[str, Any]) -> None:
    """Write the note and the spec artifact of one trial (once).

    The sweep calls this just before telling the trial, while Optuna still accepts trial artifacts;
    for a trial already finished, the artifact goes to the study instead (named after the trial).
    """
    from optuna_dashboard import save_note

    trial_id = trial._trial_id
    if study._storage.get_study_system_attrs(study._study_id).get(f"{MARK}:{trial_id}"):
        return
    frozen = study._storage.get_trial(trial_id)
    live = trial if isinstance(trial, optuna.Trial) else optuna.Trial(study, trial_id)
    save_note(live, trial_note(frozen.number, frozen.user_attrs, reward_config))
    running = frozen.state == optuna.trial.TrialState.RUNNING
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"trial-{frozen.number}-spec.json"
        path.write_text(json.dumps(frozen.user_attrs["spec"], indent=2))
        optuna.artifacts.upload_artifact(artifact_store=artifact_store(run_dir), file_path=str(path),
                                         study_or_trial=frozen if running else study, storage=study._storage,
                                         mimetype="application/json")
    study._storage.set_study_system_attr(study._study_id, f"{MARK}:{trial_id}", True)


def study_note(study: optuna.Study, reward_config: dict[str, Any]) -> str:
    from rewards import pareto_front

    done, best = scored_trials(study), best_scored(study)
    if best is None:
        return "## NAS sweep\n\nNo finished trial yet."
    points = [(t.user_attrs["accuracy"], t.user_attrs["normalized_step_time"], t.user_attrs["normalized_params"]) for t in done]
    front = sorted((done[i] for i in pareto_front(points, ["maximize", "minimize", "minimize"])), key=lambda t: -t.user_attrs["accuracy"])
    rows = "\n".join(f"| {t.number} | {t.user_attrs['accuracy']:.4f} | {t.user_attrs['normalized_step_time']:.3f} | "
                     f"{t.user_attrs['normalized_params']:.3f} | {t.user_attrs['reward']:.4f} |" for t in front)
    spec = NetworkSpec.from_dict(best.user_attrs["spec"])
    return (
        f"## Best: trial {best.number}, reward {best.user_attrs['reward']:.4f}\n\n"
        f"Reward {reward_config['name']} " + ", ".join(f"{k}={v}" for k, v in reward_config.items() if k != "name")
        + f"; {len(done)} finished trials.\n\n{stage_table_markdown(spec)}\n\n`{best.user_attrs['spec_key']}`\n\n"
        f"## Pareto front (max A, min S, min P): {len(front)} trials\n\n| trial | A | S | P | reward |\n|---|---|---|---|---|\n{rows}\n"
    )


def annotate(study: optuna.Study, run_dir: str | Path, reward_config: dict[str, Any]) -> int:
    """Backfill notes and artifacts of finished trials, and refresh the study note; returns trials annotated."""
    from optuna_dashboard import get_note, save_note

    count = 0
    for trial in scored_trials(study):
        if not study._storage.get_study_system_attrs(study._study_id).get(f"{MARK}:{trial._trial_id}"):
            annotate_trial(study, trial, run_dir, reward_config)
            count += 1
    body = study_note(study, reward_config)
    if get_note(study) != body:
        save_note(study, body)
    return count


def serve(run_dir: str, host: str = "127.0.0.1", port: int = 8080, refresh_seconds: float = 5.0) -> None:
    """Serve the run's study with optuna-dashboard; annotations are refreshed in the background."""
    from optuna_dashboard import run_server

    run = open_run(run_dir)
    # notes need a live Trial; a random sampler keeps its construction free of sampler work
    study = optuna.load_study(study_name=run.config.name, storage=run.study._storage, sampler=optuna.samplers.RandomSampler())
    annotate(study, run.path, run.config.reward)
    stop = threading.Event()

    def refresh() -> None:  # live while a sweep runs
        while not stop.wait(refresh_seconds):
            try:
                annotate(study, run.path, run.config.reward)
            except Exception as error:  # a busy SQLite file must not kill the server
                print(f"dashboard: annotation skipped: {error}", file=sys.stderr)

    threading.Thread(target=refresh, daemon=True).start()
    print(f"optuna-dashboard for {run.config.name}: http://{host}:{port}/dashboard  (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        run_server(run.study._storage, host=host, port=port, artifact_store=artifact_store(run.path))
    finally:
        stop.set()
