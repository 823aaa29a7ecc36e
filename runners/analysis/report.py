"""``nas report``: one self-contained HTML file (plots inline as PNG, no network) for sharing a sweep."""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from collections import Counter
from pathlib import Path

import optuna

from nas.io import atomic_write_text
from nas.record import METRICS, REWARD, record_of
from nas.scores import a_label
from rewards import pareto_front
from runners.analysis.fidelity import audit, score_lines
from runners.analysis.results import pareto_trials
from runners.study import Run, backbone_numbers, backbone_trial, scored_trials
from runners.study import sweep_counts as study_counts
from runners.yardstick import against_backbone, compare, verdict
from search_spaces.space import param_name

MIN_TOP = 5  # choice frequencies of a top group smaller than this say nothing (every bar 0 or 1)
CURVES = 5  # learning curves of this many top trials (and the backbone)


def reward_formula(reward: dict) -> str:
    """The reward as its formula with its options.

    >>> reward_formula({"name": "paper", "w": -0.07, "v": -0.05})
    'paper: A * S^w * P^v with w=-0.07, v=-0.05'
    >>> reward_formula({"name": "custom", "function": "__main__.my_reward"})
    'custom: __main__.my_reward(A, S, P)'
    """
    name = reward.get("name")
    options = ", ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in reward.items() if k != "name")
    if name == "paper":
        return f"paper: A * S^w * P^v with {options}"
    if name == "constrained":
        return f"constrained: A * (S / target)^(alpha if S <= target else beta) with {options or 'target=1, alpha=0, beta=-1'}"
    if name == "accuracy":
        return "accuracy: A"
    if name == "custom":
        return f"custom: {reward.get('function')}(A, S, P)"
    return f"{name} ({options})"


def sweep_counts(run: Run) -> dict[str, int]:
    """Trial counts as ``nas search`` prints them (:func:`runners.study.sweep_counts`), the running ones and the backbone."""
    trials = run.study.get_trials(deepcopy=False)
    counts = study_counts(trials)
    backbone = backbone_numbers(trials)
    running = sum(not t.state.is_finished() and t.number not in backbone for t in trials)
    return {"complete": counts["complete"], "pruned": counts["pruned"], "failed": counts["failed"] + counts["interrupted"],
            "running": running, "backbone": len(backbone)}


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td.key{text-align:left;font-family:monospace;font-size:11px}img{max-width:100%}"""


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _img(figure, alt: str) -> str:
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{_png(figure)}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def reward_plot(trials: list[optuna.trial.FrozenTrial], backbone: optuna.trial.FrozenTrial | None = None):
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 3.5))
    numbers = [t.number for t in trials]
    rewards = [record_of(t).reward for t in trials]
    best, running = [], float("-inf")
    for r in rewards:
        running = max(running, r)
        best.append(running)
    axis.scatter(numbers, rewards, s=18, label="trial reward")
    axis.step(numbers, best, where="post", color="C3", label="best so far")
    if backbone is not None:
        axis.axhline(record_of(backbone).reward, color="red", linestyle="--", linewidth=1,
                     label=f"backbone (trial {backbone.number}) {record_of(backbone).reward:.4f}")
    axis.set(xlabel="trial", ylabel="reward", title="Reward over trials")
    axis.legend()
    return figure


def pareto_plot(trials: list[optuna.trial.FrozenTrial], front: list[optuna.trial.FrozenTrial],
                backbone: optuna.trial.FrozenTrial | None = None, label: str = a_label()):
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5))
    s = [record_of(t).normalized_step_time for t in trials]
    a = [record_of(t).accuracy for t in trials]
    p = [record_of(t).normalized_params for t in trials]
    points = axis.scatter(s, a, c=p, s=[30 + 40 * x for x in p], cmap="viridis", alpha=0.8)
    figure.colorbar(points, label="P (params / backbone)")
    axis.scatter([record_of(t).normalized_step_time for t in front], [record_of(t).accuracy for t in front], s=140,
                 facecolors="none", edgecolors="red", linewidths=1.5, label="on the (A, S, P) Pareto front")
    two_d = sorted((trials[i] for i in pareto_front(list(zip(a, s)), ["maximize", "minimize"])),
                   key=lambda t: record_of(t).normalized_step_time)
    axis.step([record_of(t).normalized_step_time for t in two_d], [record_of(t).accuracy for t in two_d], "r--",
              where="post", linewidth=1, label="(A, S) front")
    for t in trials:
        axis.annotate(str(t.number), (record_of(t).normalized_step_time, record_of(t).accuracy), fontsize=7,
                      xytext=(4, 4), textcoords="offset points")
    if backbone is not None:
        axis.scatter([record_of(backbone).normalized_step_time], [record_of(backbone).accuracy], marker="*", s=260, color="red",
                     label=f"backbone (trial {backbone.number})", zorder=5)
    axis.set(xlabel="S (training step time / backbone)", ylabel=label, title=f"{label} vs training step time")
    axis.legend()
    return figure


def choice_plot(trials: list[optuna.trial.FrozenTrial], top: list[optuna.trial.FrozenTrial], stages: int,
                backbone: optuna.trial.FrozenTrial | None = None):
    """Share of each choice per stage among the top 10% against all trials; the backbone's choice marked."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(3, stages, figsize=(2.2 * stages, 6.5), squeeze=False)
    for row, (what, name) in enumerate((("op", "operator"), ("kernel", "kernel"), ("expansion", "expansion"))):
        for column in range(stages):
            key = param_name(column + 1, what)
            axis = axes[row][column]
            values = sorted({t.params[key] for t in trials if key in t.params}, key=str)
            every = Counter(t.params.get(key) for t in trials)
            best = Counter(t.params.get(key) for t in top)
            xs = range(len(values))
            axis.bar([x - 0.2 for x in xs], [every[v] / max(1, len(trials)) for v in values], 0.4, label="all")
            axis.bar([x + 0.2 for x in xs], [best[v] / max(1, len(top)) for v in values], 0.4, label="top 10%")
            axis.set_xticks(list(xs), [str(v).replace("fused_mbconv", "fused") for v in values], fontsize=7)
            if backbone is not None and backbone.params.get(key) in values:
                axis.scatter([values.index(backbone.params[key])], [1.0], marker="v", color="red", s=40,
                             label="backbone" if row == column == 0 else None, zorder=5)
            axis.set_ylim(0, 1.08)
            if column == 0:
                axis.set_ylabel(name)
            if row == 0:
                axis.set_title(f"stage {column + 1}", fontsize=9)
    axes[0][0].legend(fontsize=7)
    figure.suptitle(f"How often each choice was made: top 10% ({len(top)} trials) vs all {len(trials)} (red: the backbone's choice)")
    figure.tight_layout()
    return figure


def curves_plot(top: list[optuna.trial.FrozenTrial], backbone: optuna.trial.FrozenTrial | None):
    """Validation accuracy per epoch of the top trials and the backbone (their stored proxy-training curves)."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 3.5))
    for trial in top:
        curve = record_of(trial).curve or []
        axis.plot([p["epoch"] for p in curve], [p["val_accuracy"] for p in curve], marker="o", label=f"trial {trial.number}")
    if backbone is not None:
        curve = record_of(backbone).curve or []
        axis.plot([p["epoch"] for p in curve], [p["val_accuracy"] for p in curve], marker="*", color="red", linestyle="--",
                  markersize=10, label=f"backbone (trial {backbone.number})")
    axis.set(xlabel="epoch", ylabel="validation accuracy", title=f"Learning curves: the top {len(top)} trials and the backbone")
    axis.legend(fontsize=7)
    return figure


def choices_section(trials: list[optuna.trial.FrozenTrial], backbone: optuna.trial.FrozenTrial | None) -> list[str]:
    """The choice-frequency plot, only when the top 10% holds at least ``MIN_TOP`` trials; otherwise why not."""
    top = sorted(trials, key=lambda t: -record_of(t).reward)[: len(trials) // 10]
    if len(top) < MIN_TOP:
        return [f"<p class='choices-skipped'>Not shown: the top 10% of {len(trials)} scored trials is {len(top)} trial(s); choice "
                f"frequencies need at least {MIN_TOP} there ({10 * MIN_TOP} scored trials), or every bar is 0 or 1.</p>"]
    stages = len(record_of(trials[0]).spec["stages"])
    return [_img(choice_plot(trials, top, stages, backbone), f"choices per stage: top 10% ({len(top)} trials) vs all {len(trials)}")]


def top_table(trials: list[optuna.trial.FrozenTrial]) -> str:
    head = "<tr><th>rank</th><th>trial</th><th>reward</th><th>A</th><th>S</th><th>step ms</th><th>P</th><th>params</th><th>spec</th></tr>"
    rows = []
    for rank, t in enumerate(sorted(trials, key=lambda t: -record_of(t).reward)[:10], 1):
        r = record_of(t)
        a, s, p = r.asp
        rows.append(f"<tr><td>{rank}</td><td>{t.number}</td><td>{r.reward:.4f}</td><td>{a:.4f}</td>"
                    f"<td>{s:.3f}</td><td>{r.step_time_ms:.1f}</td><td>{p:.3f}</td>"
                    f"<td>{r.params:,}</td><td class='key'>{html.escape(r.spec_key or '')}</td></tr>")
    return f"<table id='top10'>{head}{''.join(rows)}</table>"


def yardstick_html(comparison: dict) -> str:
    """The backbone against the best trials: A, S, P and whether any trial dominates it."""
    base = comparison["backbone"]
    if base is None:
        return "<p>The backbone was not evaluated in this sweep (its architecture is outside the space, or an older sweep).</p>"
    head = ("<tr><th>trial</th><th>reward</th><th>A</th><th>A - A(backbone)</th><th>S</th><th>S / S(backbone)</th><th>P</th>"
            "<th>P / P(backbone)</th><th>dominates</th></tr>")
    a, s, p = (base[name] for name in METRICS)
    first = (f"<tr class='backbone'><td>{base['trial']} (backbone)</td><td>{base[REWARD]:.4f}</td><td>{a:.4f}</td>"
             f"<td></td><td>{s:.3f}</td><td></td><td>{p:.3f}</td><td></td><td></td></tr>")
    rows = ""
    for r in comparison["top"]:
        a, s, p = (r[name] for name in METRICS)
        rows += (f"<tr class='vs'><td>{r['trial']}</td><td>{r[REWARD]:.4f}</td><td>{a:.4f}</td><td>{r['accuracy_delta']:+.4f}</td>"
                 f"<td>{s:.3f}</td><td>{r['step_time_ratio']:.3f}</td><td>{p:.3f}</td><td>{r['params_ratio']:.3f}</td>"
                 f"<td>{'yes' if r['dominates'] else 'no'}</td></tr>")
    dominating = comparison["dominating"]
    return (f"<p>{comparison['beating_reward']} of {comparison['trials']} trials have a higher reward than the backbone; "
            f"trials that dominate it in (A, S, P): {', '.join(map(str, dominating)) if dominating else 'none'}.</p>"
            f"<table id='yardstick'>{head}{first}{rows}</table>")


def fidelity_plot(rows: list[dict]):
    """Proxy vs long-schedule accuracy and reward, one point per retrained trial, the backbone as a star."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, (proxy, long, name) in zip(axes, (("proxy_accuracy", "accuracy", "accuracy"), ("proxy_reward", "reward", "reward"))):
        for r in rows:
            axis.scatter(r[proxy], r[long], marker="*" if r["backbone"] else "o", s=160 if r["backbone"] else 30,
                         color="red" if r["backbone"] else "C0")
            axis.annotate(str(r["trial"]), (r[proxy], r[long]), fontsize=7, xytext=(4, 4), textcoords="offset points")
        axis.set(xlabel=f"proxy {name}", ylabel=f"long-schedule {name}", title=f"{name}: proxy vs long schedule")
    figure.tight_layout()
    return figure


def fidelity_html(run: Run) -> str:
    result = audit(run)
    if not result["trials"]:
        return "<p>No fidelity audit yet: <code>nas fidelity RUN_DIR</code> retrains some trials with a longer schedule.</p>"

    def number(value) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    schedule = result["schedule"]
    text = (f"<p>{len(result['trials'])} trials retrained for {schedule['epochs']} epochs at {schedule['image_size']} px on "
            f"{schedule['data_fraction']:g} of the training data (proxy: {run.config.train.epochs} epochs at "
            f"{run.config.train.image_size} px). Accuracy: Kendall tau {number(result['kendall_tau_accuracy'])}, Spearman "
            f"{number(result['spearman_accuracy'])}; reward: Kendall tau {number(result['kendall_tau_reward'])}, Spearman "
            f"{number(result['spearman_reward'])}; top-{result['top_k']} overlap {number(result['top_k_overlap_reward'])}.")
    if result["best_beats_backbone_long"] is not None:
        text += (f" The best proxy trial ({result['best_proxy_trial']}) "
                 f"{'beats' if result['best_beats_backbone_long'] else 'does not beat'} the backbone on the long schedule.")
    text += "</p><ul id='ceiling'>" + "".join(f"<li>{html.escape(line)}</li>" for line in score_lines(result)) + "</ul>"
    return text + _img(fidelity_plot(result["trials"]), "proxy fidelity: proxy vs long-schedule accuracy and reward")


def write_report(run: Run, output: str | Path) -> Path:
    """Render the report of ``run`` to ``output`` (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    trials = sorted(scored_trials(run.study), key=lambda t: t.number)
    counts = sweep_counts(run)
    summary = (f"{counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} failed"
               + (f", {counts['running']} running or waiting" if counts["running"] else "")
               + (", and the backbone yardstick" if counts["backbone"] else ""))
    config = run.config
    backbone = backbone_trial(run.study)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>NAS sweep {html.escape(config.name)}</title>"
             f"<style>{STYLE}</style></head><body>",
             f"<h1>NAS sweep <code>{html.escape(config.name)}</code></h1>",
             f"<p>{summary}. Data <b>{html.escape(config.data)}</b>, backbone <b>{html.escape(config.backbone)}</b>, "
             f"reward <b>{html.escape(reward_formula(config.reward))}</b> with {html.escape(a_label(config.train.score))}, "
             f"sampler {config.sampler}, "
             f"{config.train.epochs} epochs at {config.train.image_size}px; step time at {config.timing.image_size}px, "
             f"batch {config.timing.batch_size}. Generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC.</p>"]
    if not trials:
        parts.append("<p>No finished trial yet.</p>")
    else:
        front = pareto_trials(run)
        best = sorted(trials, key=lambda t: (-record_of(t).reward, t.number))
        parts.append(f"<p class='verdict'><b>Best {html.escape(verdict(best[0].number, record_of(best[0]), against_backbone(run.study, best[0])))}"
                     f".</b></p>")
        parts += ["<h2>Reward</h2>", _img(reward_plot(trials, backbone), "reward over trials with the best-so-far line and the backbone"),
                  "<h2>Pareto front</h2>", _img(pareto_plot(trials, front, backbone, a_label(config.train.score)),
                                                "Pareto front: accuracy vs step time, params as colour, the backbone as a star"),
                  "<h2>Learning curves</h2>", _img(curves_plot(best[:CURVES], backbone),
                                                   "validation accuracy per epoch: the top trials and the backbone"),
                  "<h2>Choices per stage</h2>", *choices_section(trials, backbone),
                  "<h2>Top 10</h2>", top_table(trials),
                  "<h2>Backbone yardstick</h2>", yardstick_html(compare(run.study)),
                  "<h2>Proxy fidelity</h2>", fidelity_html(run)]
    parts.append("</body></html>")
    return atomic_write_text(output, "\n".join(parts))
