"""The NAS figures on the dashboard's study page (optuna-dashboard's plotly API): summary, A vs S, reward, parallel
coordinates, choices per stage and proxy fidelity. ``nas dashboard`` redraws them while it serves; the driver never does.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import optuna

from nas.record import record_of
from nas.scores import a_label
from runners.analysis.fidelity import latest_rows, stored_results
from runners.study import backbone_trial, scored_trials, study_score
from search_spaces.space import CHOICES, param_name


def figure_summary(trials: list[optuna.trial.FrozenTrial], backbone: optuna.trial.FrozenTrial | None):
    """The answer on the study's first screen: the best trials against the backbone (the full study note: Note)."""
    import plotly.graph_objects as go

    best = sorted(trials, key=lambda t: (-record_of(t).reward, t.number))[:5]
    rows = ([(f"backbone (trial {backbone.number})", record_of(backbone))] if backbone else []) + [
        (f"trial {t.number}", record_of(t)) for t in best]
    base = record_of(backbone).reward if backbone else None
    verdict = ("no backbone yardstick" if base is None else "no trial beat the backbone" if not best or record_of(best[0]).reward <= base
               else f"trial {best[0].number} beats the backbone's reward by {record_of(best[0]).reward - base:+.4f}")
    columns = [[r[0] for r in rows], [f"{r.reward:.4f}" for _, r in rows], [f"{r.asp[0]:.4f}" for _, r in rows],
               [f"{r.asp[1]:.3f}" for _, r in rows], [f"{r.asp[2]:.3f}" for _, r in rows]]
    figure = go.Figure(go.Table(header=dict(values=["", "reward", "A", "S", "P"]), cells=dict(values=columns)))
    figure.update_layout(title=f"NAS summary: {verdict} (full study note: the Note page)", margin=dict(t=50, b=10))
    return figure


def figure_parallel(trials: list[optuna.trial.FrozenTrial], backbone: optuna.trial.FrozenTrial | None, label: str = a_label()):
    """Parallel coordinates over A, S, P and reward (the backbone included, coloured red)."""
    import plotly.graph_objects as go

    every = trials + ([backbone] if backbone else [])
    records = [record_of(t) for t in every]
    axes = [dict(label=label, values=[r.asp[i] for r in records]) for i, label in enumerate((label, "S (step time)", "P (params)"))]
    axes.append(dict(label="reward", values=[r.reward for r in records]))
    colour = [1 if backbone is not None and t.number == backbone.number else 0 for t in every]
    figure = go.Figure(go.Parcoords(dimensions=axes, line=dict(color=colour, colorscale=[[0, "#636efa"], [1, "red"]])))
    figure.update_layout(title="NAS: A, S, P and reward per trial (red: the backbone)")
    return figure


def figure_a_vs_s(trials: list[optuna.trial.FrozenTrial], backbone: optuna.trial.FrozenTrial | None, label: str = a_label()):
    """A vs S, P as colour, the backbone as a red star."""
    import plotly.graph_objects as go

    a = [record_of(t) for t in trials]
    figure = go.Figure(go.Scatter(
        x=[x.normalized_step_time for x in a], y=[x.accuracy for x in a], mode="markers", name="trials",
        text=[f"trial {t.number}" for t in trials],
        marker=dict(color=[x.normalized_params for x in a], colorscale="Viridis", showscale=True, size=9,
                    colorbar=dict(title="P"))))
    if backbone is not None:
        b = record_of(backbone)
        figure.add_trace(go.Scatter(x=[b.normalized_step_time], y=[b.accuracy], mode="markers", name="backbone",
                                    text=[f"backbone (trial {backbone.number})"],
                                    marker=dict(symbol="star", size=18, color="red")))
    figure.update_layout(title=f"NAS: {label} vs training step time S (colour: params P)",
                         xaxis_title="S (step time / backbone)", yaxis_title=label,
                         legend=dict(orientation="h", y=-0.25))  # clear of the colour bar
    return figure


def figure_reward(trials: list[optuna.trial.FrozenTrial], backbone: optuna.trial.FrozenTrial | None):
    """Reward per trial, best so far, and the backbone's reward as a horizontal line."""
    import plotly.graph_objects as go

    ordered = sorted(trials, key=lambda t: t.number)
    rewards = [record_of(t).reward for t in ordered]
    best = [max(rewards[: i + 1]) for i in range(len(rewards))]
    figure = go.Figure([go.Scatter(x=[t.number for t in ordered], y=rewards, mode="markers", name="trial reward"),
                        go.Scatter(x=[t.number for t in ordered], y=best, mode="lines", line_shape="hv", name="best so far")])
    if backbone is not None:
        figure.add_hline(y=record_of(backbone).reward, line_dash="dash", line_color="red",
                         annotation_text=f"backbone {record_of(backbone).reward:.4f}")
    figure.update_layout(title="NAS: reward over trials (dashed: the backbone)", xaxis_title="trial", yaxis_title="reward")
    return figure


def figure_choices(trials: list[optuna.trial.FrozenTrial]):
    """Share of each choice per stage, top 10% by reward against all trials (one row per choice kind)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    kinds = CHOICES
    top = sorted(trials, key=lambda t: -record_of(t).reward)[: max(1, len(trials) // 10)]
    figure = make_subplots(rows=len(kinds), cols=1, subplot_titles=[f"{k} per stage" for k in kinds])
    for row, kind in enumerate(kinds, 1):
        stages = max((len(record_of(t).spec["stages"]) for t in trials), default=0)
        names = [param_name(n, kind) for n in range(1, stages + 1)]
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
    """Write (overwrite) the NAS figures into the study; returns their ids. Never raises: the dashboard keeps serving."""
    try:
        from optuna_dashboard import save_plotly_graph_object

        trials, backbone, label = scored_trials(study), backbone_trial(study), a_label(study_score(study))
        rows = fidelity_rows(study)
        drawn = (tuple(t.number for t in trials), backbone and backbone.number, tuple(r["trial"] for r in rows))
        if only_if_changed and _FIGURES_DRAWN.get(study.study_name) == drawn:
            return []
        written = []
        if trials:
            for graph_id, figure in (("nas-summary", figure_summary(trials, backbone)), ("nas-a-vs-s", figure_a_vs_s(trials, backbone, label)),
                                     ("nas-reward", figure_reward(trials, backbone)), ("nas-parallel", figure_parallel(trials, backbone, label)),
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
    return latest_rows(study, stored_results(study))
