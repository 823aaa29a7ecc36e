"""``nas dashboard``: the sweep's study in optuna-dashboard, made NAS-aware.

Each finished trial gets a note (stage table, A, S, step time, P, reward) and its spec JSON as an
artifact; the study gets a note with the best spec and the Pareto front. ``nas dashboard`` writes
whatever is missing and keeps doing so while it serves (so a dashboard opened mid-sweep is live).
"""

from __future__ import annotations

import errno
import json
import socket
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import optuna

from nas.errors import InputError
from nas.record import DIRECTIONS, TrialRecord, record_of
from nas.scores import a_label
from nas.spec import NetworkSpec
from rewards import pareto_front
from runners.analysis.fidelity import audit_rows, score_lines
from runners.analysis.figures import fidelity_rows, refresh_figures
from runners.analysis.report import reward_formula
from runners.study import Run, backbone_trial, best_scored, open_run, scored_trials, stage_table_markdown, study_score
from runners.yardstick import against_backbone, compare, markdown, verdict

MARK = "nas_note_written"  # study system attribute prefix: trial N has its note


def artifact_store(run_dir: str | Path) -> optuna.artifacts.FileSystemArtifactStore:
    path = Path(run_dir) / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(str(path))


BACKBONE_NOTE = ("The backbone, evaluated through the same proxy as every trial: the yardstick for S and P and the reference "
                 "the search must beat. It is not a search result: its objective value is stored as -inf (+inf for S and P in "
                 "multi-objective studies) so that it is never the study's best; its real reward is in the table below and in "
                 "its user attribute `reward`.\n\n")


def trial_note(number: int, record: TrialRecord, reward_config: dict[str, Any], backbone: bool = False, label: str = a_label()) -> str:
    """Markdown for one trial (or the backbone yardstick): metrics and the stage table."""
    spec = NetworkSpec.from_dict(record.spec)
    reused = f"\n\nReused the record of trial {record.reused_from} (same architecture)." if record.reused_from is not None else ""
    title = f"## Backbone yardstick (trial {number}): reward {record.reward:.4f}\n\n{BACKBONE_NOTE}" if backbone else \
        f"## Trial {number}: reward {record.reward:.4f}\n\n"
    a, s, p = record.asp
    return (
        title +
        f"| {label} | S (norm. step time) | step time | P (norm. params) | params | reward |\n|---|---|---|---|---|---|\n"
        f"| {a:.4f} | {s:.3f} | {record.step_time_ms:.1f} ms | {p:.3f} | {record.params:,} | {record.reward:.4f} |\n\n"
        f"Reward: {reward_formula(reward_config)}; data {record.data}; device {record.device}.\n\n"
        f"### Stage table\n\n{stage_table_markdown(spec)}\n\n`{record.spec_key}`{reused}\n"
    )


def annotate_trial(study: optuna.Study, storage: optuna.storages.BaseStorage, study_id: int,
                   trial: optuna.trial.FrozenTrial, run_dir: str | Path, reward_config: dict[str, Any], backbone: bool = False) -> None:
    """Write the note of a finished trial and its spec JSON as a study artifact (named after the trial)."""
    from optuna_dashboard import save_note

    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    note = trial_note(trial.number, record_of(trial), reward_config, backbone, label=a_label(study_score(study)))
    save_note(optuna.Trial(study, trial_id), note)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"trial-{trial.number}-spec.json"
        path.write_text(json.dumps(record_of(trial).spec, indent=2))
        # a finished trial takes no artifacts: the study keeps it
        optuna.artifacts.upload_artifact(artifact_store=artifact_store(run_dir), file_path=str(path), study_or_trial=study,
                                         storage=storage, mimetype="application/json")
    storage.set_study_system_attr(study_id, f"{MARK}:{trial.number}", True)


def study_note(study: optuna.Study, reward_config: dict[str, Any]) -> str:
    done, best = scored_trials(study), best_scored(study)
    if best is None:
        return "## NAS sweep\n\nNo finished trial yet."
    records = {t.number: record_of(t) for t in done}
    front = sorted((done[i] for i in pareto_front([records[t.number].asp for t in done], list(DIRECTIONS))),
                   key=lambda t: -records[t.number].accuracy)
    rows = "\n".join("| {} | {:.4f} | {:.3f} | {:.3f} | {:.4f} |".format(t.number, *records[t.number].asp, records[t.number].reward)
                     for t in front)
    record = records[best.number]
    return (
        f"## Best: trial {best.number}, reward {record.reward:.4f}\n\n"
        f"**{verdict(best.number, record, against_backbone(study, best))}.**\n\n"
        f"Reward {reward_formula(reward_config)}; {len(done)} finished trials (the backbone yardstick not counted; its "
        f"objective value is kept out so it is never best).\n\n{stage_table_markdown(NetworkSpec.from_dict(record.spec))}\n\n"
        f"`{record.spec_key}`\n\n"
        f"## Pareto front (max A, min S, min P): {len(front)} trials\n\n| trial | A | S | P | reward |\n|---|---|---|---|---|\n{rows}\n"
    )


def annotate(run: Run) -> int:
    """Notes and spec artifacts for finished trials that have none yet, the study note and the NAS figures.

    Returns the number of trials annotated. The sweep driver leaves this to ``nas dashboard`` (off
    its per-trial path), which calls it at start and then every few seconds while it serves.
    """
    from optuna_dashboard import get_note, save_note

    # a random sampler: a Trial handle for a note constructs without the study sampler's work
    study = optuna.load_study(study_name=run.config.name, storage=run.storage, sampler=optuna.samplers.RandomSampler())
    study_id = run.storage.get_study_id_from_name(run.config.name)
    marks = run.storage.get_study_system_attrs(study_id)  # one read for every trial's mark
    base = backbone_trial(study)
    todo = [t for t in scored_trials(study) + ([base] if base else []) if not marks.get(f"{MARK}:{t.number}")]
    for trial in todo:
        annotate_trial(study, run.storage, study_id, trial, run.path, run.config.reward, backbone=base is not None and trial.number == base.number)
    body = nas_study_note(study, run.config.reward)
    refresh_figures(study, only_if_changed=True)
    if get_note(study) != body:
        save_note(study, body)
    return len(todo)


def check_listen(host: str, port: int) -> None:
    """The address must resolve and the port be free, before anything is printed or written (InputError otherwise).

    Binds the way the server will (``SO_REUSEADDR``, as wsgiref does), then lets go.
    """
    if not 1 <= port <= 65535:
        raise InputError(f"--port: {port} is not a TCP port, allowed 1..65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as error:
        raise InputError(f"--host: {host!r} does not resolve ({error}), allowed a local host name or IP address") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except PermissionError:
            raise InputError(f"--port: {port} needs privileges on {host}, allowed a port >= 1024") from None
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise InputError(f"--port: {port} is in use on {host}, allowed a free port") from None
            raise InputError(f"--host: cannot listen on {host} ({error.strerror}), allowed an address of this machine") from None


def serve(run_dir: str, host: str = "127.0.0.1", port: int = 8080, refresh_seconds: float = 5.0, storage: str | None = None) -> None:
    """Serve the run's study with optuna-dashboard; annotations are refreshed in the background."""
    from optuna_dashboard import run_server

    check_listen(host, port)
    run = open_run(run_dir, storage)
    annotate(run)
    stop = threading.Event()

    def refresh() -> None:  # live while a sweep runs
        while not stop.wait(refresh_seconds):
            try:
                annotate(run)
            except Exception as error:  # a busy SQLite file must not kill the server
                print(f"dashboard: annotation skipped: {error}", file=sys.stderr)

    threading.Thread(target=refresh, daemon=True).start()
    # the server runs beside the main thread: Ctrl-C or SIGTERM raised in the main thread while the server was inside a
    # request was swallowed there (wsgiref logs every exception of a handler and serves on), so the process never ended
    server = threading.Thread(target=run_server, args=(run.storage,), daemon=True,
                              kwargs=dict(host=host, port=port, artifact_store=artifact_store(run.path)))
    server.start()
    print(f"optuna-dashboard for {run.config.name}: http://{host}:{port}/dashboard  (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        while server.is_alive():
            server.join(0.5)
    finally:
        stop.set()


def nas_study_note(study: optuna.Study, reward_config: dict[str, Any]) -> str:
    """The study note with the backbone yardstick and, when present, the fidelity audit appended."""
    body = study_note(study, reward_config) + "\n" + markdown(compare(study))
    rows = fidelity_rows(study)
    if rows:
        result = audit_rows(rows)
        body += ("\n## Proxy fidelity (long schedule)\n\n"
                 f"{len(rows)} trials retrained: Kendall tau {_fmt(result['kendall_tau_accuracy'])} / Spearman "
                 f"{_fmt(result['spearman_accuracy'])} on accuracy, Kendall tau {_fmt(result['kendall_tau_reward'])} / "
                 f"Spearman {_fmt(result['spearman_reward'])} on reward; top-{result['top_k']} overlap "
                 f"{_fmt(result['top_k_overlap_reward'])}. The scatter is the figure `nas-fidelity`.\n")
        body += "\nAgainst the noise ceiling (each proxy score vs long accuracy):\n\n" + "".join(f"- {line}\n" for line in score_lines(result))
    return body


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
