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
from nas.spec import NetworkSpec
from runners.study import Run, best_scored, open_run, scored_trials, stage_table_markdown

MARK = "nas_note_written"  # study system attribute prefix: trial N has its note


def artifact_store(run_dir: str | Path) -> optuna.artifacts.FileSystemArtifactStore:
    path = Path(run_dir) / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(str(path))


BACKBONE_NOTE = ("The backbone, evaluated through the same proxy as every trial: the yardstick for S and P and the reference "
                 "the search must beat. It is not a search result: its objective value is stored as -inf (+inf for S and P in "
                 "multi-objective studies) so that it is never the study's best; its real reward is in the table below and in "
                 "its user attribute `reward`.\n\n")


def trial_note(number: int, attrs: dict[str, Any], reward_config: dict[str, Any], backbone: bool = False) -> str:
    """Markdown for one trial (or the backbone yardstick): metrics and the stage table."""
    from runners.report import reward_formula

    spec = NetworkSpec.from_dict(attrs["spec"])
    reused = f"\n\nReused the record of trial {attrs['reused_from']} (same architecture)." if "reused_from" in attrs else ""
    title = f"## Backbone yardstick (trial {number}): reward {attrs['reward']:.4f}\n\n{BACKBONE_NOTE}" if backbone else \
        f"## Trial {number}: reward {attrs['reward']:.4f}\n\n"
    return (
        title +
        f"| A (accuracy) | S (norm. step time) | step time | P (norm. params) | params | reward |\n|---|---|---|---|---|---|\n"
        f"| {attrs['accuracy']:.4f} | {attrs['normalized_step_time']:.3f} | {attrs['step_time_ms']:.1f} ms | "
        f"{attrs['normalized_params']:.3f} | {attrs['params']:,} | {attrs['reward']:.4f} |\n\n"
        f"Reward: {reward_formula(reward_config)}; data {attrs.get('data')}; device {attrs.get('device')}.\n\n"
        f"### Stage table\n\n{stage_table_markdown(spec)}\n\n`{attrs['spec_key']}`{reused}\n"
    )


def annotate_trial(study: optuna.Study, storage: optuna.storages.BaseStorage, study_id: int,
                   trial: optuna.trial.FrozenTrial, run_dir: str | Path, reward_config: dict[str, Any], backbone: bool = False) -> None:
    """Write the note of a finished trial and its spec JSON as a study artifact (named after the trial)."""
    from optuna_dashboard import save_note

    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    save_note(optuna.Trial(study, trial_id), trial_note(trial.number, trial.user_attrs, reward_config, backbone))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"trial-{trial.number}-spec.json"
        path.write_text(json.dumps(trial.user_attrs["spec"], indent=2))
        # a finished trial takes no artifacts: the study keeps it
        optuna.artifacts.upload_artifact(artifact_store=artifact_store(run_dir), file_path=str(path), study_or_trial=study,
                                         storage=storage, mimetype="application/json")
    storage.set_study_system_attr(study_id, f"{MARK}:{trial.number}", True)


def study_note(study: optuna.Study, reward_config: dict[str, Any]) -> str:
    from rewards import pareto_front

    done, best = scored_trials(study), best_scored(study)
    if best is None:
        return "## NAS sweep\n\nNo finished trial yet."
    points = [(t.user_attrs["accuracy"], t.user_attrs["normalized_step_time"], t.user_attrs["normalized_params"]) for t in done]
    front = sorted((done[i] for i in pareto_front(points, ["maximize", "minimize", "minimize"])), key=lambda t: -t.user_attrs["accuracy"])
    rows = "\n".join(f"| {t.number} | {t.user_attrs['accuracy']:.4f} | {t.user_attrs['normalized_step_time']:.3f} | "
                     f"{t.user_attrs['normalized_params']:.3f} | {t.user_attrs['reward']:.4f} |" for t in front)
    from runners.report import reward_formula
    from runners.yardstick import against_backbone, verdict

    spec = NetworkSpec.from_dict(best.user_attrs["spec"])
    return (
        f"## Best: trial {best.number}, reward {best.user_attrs['reward']:.4f}\n\n"
        f"**{verdict(best.number, best.user_attrs, against_backbone(study, best))}.**\n\n"
        f"Reward {reward_formula(reward_config)}; {len(done)} finished trials (the backbone yardstick not counted; its "
        f"objective value is kept out so it is never best).\n\n{stage_table_markdown(spec)}\n\n`{best.user_attrs['spec_key']}`\n\n"
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
    from runners.study import backbone_trial

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
    print(f"optuna-dashboard for {run.config.name}: http://{host}:{port}/dashboard  (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        run_server(run.storage, host=host, port=port, artifact_store=artifact_store(run.path))
    finally:
        stop.set()


# ---- custom figures (optuna-dashboard's own API; refreshed by the sweep driver) ----------------
FIGURE_IDS = ("nas-summary", "nas-a-vs-s", "nas-reward", "nas-parallel", "nas-choices", "nas-fidelity")


def figure_summary(trials: list[optuna.trial.FrozenTrial], backbone: optuna.trial.FrozenTrial | None):
    """The answer on the study's first screen: the best trials against the backbone (the full study note: Note)."""
    import plotly.graph_objects as go

    best = sorted(trials, key=lambda t: (-t.user_attrs["reward"], t.number))[:5]
    rows = ([(f"backbone (trial {backbone.number})", backbone.user_attrs)] if backbone else []) + [(f"trial {t.number}", t.user_attrs)
                                                                                                   for t in best]
    base = backbone.user_attrs["reward"] if backbone else None
    verdict = ("no backbone yardstick" if base is None else "no trial beat the backbone" if not best or best[0].user_attrs["reward"] <= base
               else f"trial {best[0].number} beats the backbone's reward by {best[0].user_attrs['reward'] - base:+.4f}")
    columns = [[r[0] for r in rows]] + [[f"{a[k]:.4f}" if k in ("accuracy", "reward") else f"{a[k]:.3f}" for _, a in rows]
                                        for k in ("reward", "accuracy", "normalized_step_time", "normalized_params")]
    figure = go.Figure(go.Table(header=dict(values=["", "reward", "A", "S", "P"]), cells=dict(values=columns)))
    figure.update_layout(title=f"NAS summary: {verdict} (full study note: the Note page)", margin=dict(t=50, b=10))
    return figure


def figure_parallel(trials: list[optuna.trial.FrozenTrial], backbone: optuna.trial.FrozenTrial | None):
    """Parallel coordinates over A, S, P and reward (the backbone included, coloured red)."""
    import plotly.graph_objects as go

    every = trials + ([backbone] if backbone else [])
    axes = [dict(label=label, values=[t.user_attrs[key] for t in every]) for label, key in
            (("A (accuracy)", "accuracy"), ("S (step time)", "normalized_step_time"), ("P (params)", "normalized_params"),
             ("reward", "reward"))]
    colour = [1 if backbone is not None and t.number == backbone.number else 0 for t in every]
    figure = go.Figure(go.Parcoords(dimensions=axes, line=dict(color=colour, colorscale=[[0, "#636efa"], [1, "red"]])))
    figure.update_layout(title="NAS: A, S, P and reward per trial (red: the backbone)")
    return figure


def figure_a_vs_s(trials: list[optuna.trial.FrozenTrial], backbone: optuna.trial.FrozenTrial | None):
    """A vs S, P as colour, the backbone as a red star."""
    import plotly.graph_objects as go

    a = [t.user_attrs for t in trials]
    figure = go.Figure(go.Scatter(
        x=[x["normalized_step_time"] for x in a], y=[x["accuracy"] for x in a], mode="markers", name="trials",
        text=[f"trial {t.number}" for t in trials],
        marker=dict(color=[x["normalized_params"] for x in a], colorscale="Viridis", showscale=True, size=9,
                    colorbar=dict(title="P"))))
    if backbone is not None:
        b = backbone.user_attrs
        figure.add_trace(go.Scatter(x=[b["normalized_step_time"]], y=[b["accuracy"]], mode="markers", name="backbone",
                                    text=[f"backbone (trial {backbone.number})"],
                                    marker=dict(symbol="star", size=18, color="red")))
    figure.update_layout(title="NAS: accuracy A vs training step time S (colour: params P)",
                         xaxis_title="S (step time / backbone)", yaxis_title="A (validation accuracy)",
                         legend=dict(orientation="h", y=-0.25))  # clear of the colour bar
    return figure


def figure_reward(trials: list[optuna.trial.FrozenTrial], backbone: optuna.trial.FrozenTrial | None):
    """Reward per trial, best so far, and the backbone's reward as a horizontal line."""
    import plotly.graph_objects as go

    ordered = sorted(trials, key=lambda t: t.number)
    rewards = [t.user_attrs["reward"] for t in ordered]
    best = [max(rewards[: i + 1]) for i in range(len(rewards))]
    figure = go.Figure([go.Scatter(x=[t.number for t in ordered], y=rewards, mode="markers", name="trial reward"),
                        go.Scatter(x=[t.number for t in ordered], y=best, mode="lines", line_shape="hv", name="best so far")])
    if backbone is not None:
        figure.add_hline(y=backbone.user_attrs["reward"], line_dash="dash", line_color="red",
                         annotation_text=f"backbone {backbone.user_attrs['reward']:.4f}")
    figure.update_layout(title="NAS: reward over trials (dashed: the backbone)", xaxis_title="trial", yaxis_title="reward")
    return figure


def figure_choices(trials: list[optuna.trial.FrozenTrial]):
    """Share of each choice per stage, top 10% by reward against all trials (one row per choice kind)."""
    from collections import Counter

    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    kinds = ("op", "layers", "kernel", "expansion")
    top = sorted(trials, key=lambda t: -t.user_attrs["reward"])[: max(1, len(trials) // 10)]
    figure = make_subplots(rows=len(kinds), cols=1, subplot_titles=[f"{k} per stage" for k in kinds])
    for row, kind in enumerate(kinds, 1):
        names = sorted({n for t in trials for n in t.params if n.endswith(f".{kind}")}, key=lambda n: int(n[5:].split(".")[0]))
        labels, every, best = [], [], []
        for name in names:
            counts_all, counts_top = Counter(t.params.get(name) for t in trials), Counter(t.params.get(name) for t in top)
            for value in sorted((v for v in counts_all if v is not None), key=str):
                labels.append(f"{name.split('.')[0].replace('stage', 's')}:{str(value).replace('fused_mbconv', 'fused')}")
                every.append(counts_all[value] / len(trials))
                best.append(counts_top[value] / len(top))
        figure.add_trace(go.Bar(x=labels, y=every, name="all", marker_color="#636efa", showlegend=row == 1), row=row, col=1)
        figure.add_trace(go.Bar(x=labels, y=best, name="top 10%", marker_color="#ef553b", showlegend=row == 1), row=row, col=1)
    figure.update_layout(title="NAS: choices per stage, top 10% vs all", barmode="group", margin=dict(t=60, b=20),
                         legend=dict(orientation="h", y=1.08, x=0.6))
    figure.update_xaxes(tickfont=dict(size=7), tickangle=-60)  # the dashboard gives each figure 450 px
    figure.update_annotations(font_size=10)
    return figure


def figure_fidelity(rows: list[dict[str, Any]]):
    """Proxy reward vs long-schedule reward of the retrained trials (backbone as a star)."""
    import plotly.graph_objects as go

    figure = go.Figure()
    for backbone, name, marker in ((False, "trials", dict(size=10)), (True, "backbone", dict(symbol="star", size=18, color="red"))):
        part = [r for r in rows if r["backbone"] == backbone]
        figure.add_trace(go.Scatter(x=[r["proxy_reward"] for r in part], y=[r["reward"] for r in part], mode="markers", name=name,
                                    text=[f"trial {r['trial']}: A {r['proxy_accuracy']:.3f} -> {r['accuracy']:.3f}" for r in part],
                                    marker=marker))
    figure.update_layout(title="NAS: proxy fidelity, proxy reward vs long-schedule reward", xaxis_title="proxy reward",
                         yaxis_title="long-schedule reward")
    return figure


_FIGURES_DRAWN: dict[str, tuple] = {}  # study name -> what the figures last showed (the dashboard polls)


def refresh_figures(study: optuna.Study, only_if_changed: bool = False) -> list[str]:
    """Write (overwrite) the NAS figures into the study; returns their ids. Never raises: the sweep must go on."""
    try:
        from optuna_dashboard import save_plotly_graph_object

        from runners.study import backbone_trial

        trials, backbone = scored_trials(study), backbone_trial(study)
        rows = fidelity_rows(study)
        drawn = (tuple(t.number for t in trials), backbone and backbone.number, tuple(r["trial"] for r in rows))
        if only_if_changed and _FIGURES_DRAWN.get(study.study_name) == drawn:
            return []
        written = []
        if trials:
            for graph_id, figure in (("nas-summary", figure_summary(trials, backbone)), ("nas-a-vs-s", figure_a_vs_s(trials, backbone)),
                                     ("nas-reward", figure_reward(trials, backbone)), ("nas-parallel", figure_parallel(trials, backbone)),
                                     ("nas-choices", figure_choices(trials))):
                save_plotly_graph_object(study, figure, graph_object_id=graph_id)
                written.append(graph_id)
        if rows:
            save_plotly_graph_object(study, figure_fidelity(rows), graph_object_id="nas-fidelity")
            written.append("nas-fidelity")
        _FIGURES_DRAWN[study.study_name] = drawn
        return written
    except Exception as error:
        print(f"warning: dashboard figures not refreshed: {type(error).__name__}: {error}", file=sys.stderr)
        return []


def fidelity_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """The stored fidelity results of the latest (longest) schedule, as the audit's rows."""
    from runners.fidelity import latest_rows, stored_results

    return latest_rows(study, stored_results(study))


def nas_study_note(study: optuna.Study, reward_config: dict[str, Any]) -> str:
    """The study note with the backbone yardstick and, when present, the fidelity audit appended."""
    from runners.yardstick import compare, markdown

    body = study_note(study, reward_config) + "\n" + markdown(compare(study))
    rows = fidelity_rows(study)
    if rows:
        from runners.fidelity import audit_rows

        result = audit_rows(rows)
        body += ("\n## Proxy fidelity (long schedule)\n\n"
                 f"{len(rows)} trials retrained: Kendall tau {_fmt(result['kendall_tau_accuracy'])} / Spearman "
                 f"{_fmt(result['spearman_accuracy'])} on accuracy, Kendall tau {_fmt(result['kendall_tau_reward'])} / "
                 f"Spearman {_fmt(result['spearman_reward'])} on reward; top-{result['top_k']} overlap "
                 f"{_fmt(result['top_k_overlap_reward'])}. The scatter is the figure `nas-fidelity`.\n")
        from runners.fidelity import score_lines

        body += "\nAgainst the noise ceiling (each proxy score vs long accuracy):\n\n" + "".join(f"- {line}\n" for line in score_lines(result))
    return body


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
