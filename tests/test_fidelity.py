"""The backbone yardstick and ``nas fidelity`` on a real small sweep; the rank statistics against scipy."""

import json
import math
import re
from dataclasses import replace

import pytest
from scipy import stats

from nas.errors import InputError
from nas.record import BACKBONE_ROLE
from nas.scores import ACCURACY_SCORES, SCORES
from nas.spec import NetworkSpec
from runners.analysis import fidelity
from runners.analysis.fidelity import (
    PREFIX,
    REPLICA_PREFIX,
    fraction_of,
    kendall_tau,
    score_table,
    spearman,
    tau_interval,
    top_k_overlap,
)
from runners.study import backbone_trial, best_scored, open_run, scored_trials
from tests.conftest import assert_one_line_error, run_nas

FAST = ["--epochs", "1", "--image-size", "16", "--timing-image-size", "32", "--timing-batch-size", "8", "--timing-steps", "3"]


def test_rank_statistics_hand_computed():
    # one discordant pair of six: tau = (5 - 1) / 6; rank differences (0, 1, 1, 0): rho = 1 - 6 * 2 / (4 * 15)
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert top_k_overlap([0.9, 0.8, 0.1, 0.2], [0.7, 0.1, 0.9, 0.2], 2) == 0.5


def test_ceiling_fraction_and_bootstrap_interval_on_planted_data_with_ties():
    long = [0.50, 0.60, 0.60, 0.70, 0.80, 0.90]  # a tie in the long schedule
    replica = [0.52, 0.58, 0.65, 0.75, 0.74, 0.91]  # the same architectures, another seed: one swap
    proxy = {"perfect": [1, 2, 3, 4, 5, 6], "tied": [0.1, 0.1, 0.2, 0.2, 0.3, 0.3], "missing": [None, None, 1.0, None, None, None]}
    table = score_table(proxy, long, replica, k=2)
    # tau-b with the tie in `long`: 13 concordant, 1 discordant, 1 pair tied in long only -> 12 / sqrt(15 * 14)
    ceiling = table["ceiling"]
    assert ceiling["kendall_tau"] == pytest.approx(12 / math.sqrt(15 * 14)) == pytest.approx(stats.kendalltau(long, replica).statistic)
    assert ceiling["trials"] == 6
    perfect = table["scores"]["perfect"]  # a tie in long only: 14 concordant of 15 pairs, tau-b = 14 / sqrt(15 * 14)
    assert perfect["kendall_tau"] == pytest.approx(14 / math.sqrt(15 * 14))
    assert perfect["fraction_of_ceiling"] == pytest.approx(14 / 12)  # above the ceiling: the ceiling is a noisy estimate too
    tied = table["scores"]["tied"]  # ties on both sides: scipy's tau-b
    assert tied["kendall_tau"] == pytest.approx(stats.kendalltau(proxy["tied"], long).statistic)
    assert tied["fraction_of_ceiling"] == pytest.approx(tied["kendall_tau"] / ceiling["kendall_tau"])
    assert tied["spearman"] == pytest.approx(stats.spearmanr(proxy["tied"], long).statistic)
    assert table["scores"]["missing"] is None  # fewer than 2 values: no statistic
    for row in (ceiling, perfect, tied):
        low, high = row["interval"]
        assert -1 <= low <= row["kendall_tau"] <= high <= 1 and high - low > 0.05  # six points: a wide interval
    assert tau_interval(proxy["tied"], long) == tied["interval"]  # seeded: the same interval every time
    assert tau_interval([1, 2, 3, 4, 5, 6, 7, 8], [2, 4, 6, 8, 10, 12, 14, 16]) == [pytest.approx(1.0), pytest.approx(1.0)]
    once = score_table({"missing": proxy["missing"]}, long, None)  # the long schedule ran once: no ceiling, no fraction
    assert once["ceiling"] is None and once["scores"]["missing"] is None
    assert fraction_of(0.3, {"kendall_tau": -0.1}) is None  # no positive ceiling: no fraction


def _row(trial, proxy_accuracy, accuracy, proxy_reward, reward, replica):
    return {"trial": trial, "backbone": trial == 0, "proxy_accuracy": proxy_accuracy, "accuracy": accuracy, "proxy_reward": proxy_reward,
            "reward": reward, "replica_accuracy": replica, "scores": {"accuracy": proxy_accuracy}}


def test_a_retraining_lost_with_its_worker_is_retrained_by_the_next_run():
    """Resuming retrains what has no result of this schedule, and what its node lost; a training's own failure stays."""
    from runners.analysis.retrain import LOST_WORKER

    schedule = {"epochs": 8, "image_size": 28, "data_fraction": 1.0}
    done = {1: {"schedule": schedule, "status": "ok"},
            2: {"schedule": schedule, "status": "failed", "failure_reason": f"{LOST_WORKER}: WorkerCrashedError: died"},
            3: {"schedule": schedule, "status": "failed", "failure_reason": "non-finite loss at epoch 2"},
            4: {"schedule": {**schedule, "epochs": 4}, "status": "ok"}}
    assert fidelity.to_retrain(done, [1, 2, 3, 4, 5], schedule) == [2, 4, 5]


def test_audit_of_planted_rows_with_a_tie_and_a_constant_side():
    rows = [_row(0, 0.50, 0.80, 0.50, 0.80, 0.78), _row(1, 0.60, 0.85, 0.62, 0.79, 0.91),  # trial 0: the backbone
            _row(2, 0.60, 0.70, 0.55, 0.75, 0.72), _row(3, 0.70, 0.90, 0.70, 0.78, 0.88)]  # trials 1 and 2 tie in proxy accuracy
    audit = fidelity.audit_rows(rows)
    # accuracy, pairs by hand: (0,2) discordant, (1,2) tied in the proxy only, the other 4 concordant: tau-b = (4 - 1) / sqrt(6 * 5)
    assert audit["kendall_tau_accuracy"] == pytest.approx(3 / math.sqrt(30))
    # average ranks (1, 2.5, 2.5, 4) against (2, 3, 1, 4): rho = 3 / sqrt(4.5 * 5)
    assert audit["spearman_accuracy"] == pytest.approx(3 / math.sqrt(4.5 * 5))
    # reward: ranks (1, 3, 2, 4) against (4, 3, 1, 2): 2 concordant, 4 discordant; rank differences (-3, 0, 1, 2)
    assert audit["kendall_tau_reward"] == pytest.approx(-1 / 3) and audit["spearman_reward"] == pytest.approx(1 - 6 * 14 / (4 * 15))
    assert audit["top_k"] == 1 and audit["top_k_overlap_reward"] == 0.0  # top by proxy reward: trial 3; by long reward: the backbone
    # the best proxy trial (3) loses to the backbone in long reward (0.78 < 0.80) but beats it in long accuracy (0.90 > 0.80)
    assert audit["best_proxy_trial"] == 3
    assert audit["best_beats_backbone_long"] is False and audit["best_beats_backbone_long_accuracy"] is True
    # the ceiling: long accuracy against its replica, one swap (trials 1 and 3) of six pairs: (5 - 1) / 6
    assert audit["ceiling"]["kendall_tau"] == pytest.approx(2 / 3) and audit["ceiling"]["trials"] == 4
    score = audit["scores"]["accuracy"]
    assert score["kendall_tau"] == pytest.approx(3 / math.sqrt(30)) and score["fraction_of_ceiling"] == pytest.approx(3 / math.sqrt(30) / (2 / 3))
    assert {name for name, row in audit["scores"].items() if row is None} == {"best_accuracy", "val_loss", "sotl", "sotl_last",
                                                                                 "train_likelihood"}

    flat = fidelity.audit_rows([{**r, "accuracy": 0.8, "reward": 0.8} for r in rows])  # the long schedule ties every trial
    assert (flat["kendall_tau_accuracy"], flat["spearman_accuracy"], flat["kendall_tau_reward"], flat["spearman_reward"]) == (None,) * 4
    assert flat["best_beats_backbone_long"] is False and flat["best_beats_backbone_long_accuracy"] is False  # a tie does not beat


def test_proxy_scores_from_a_real_tiny_trial_with_data_fraction_and_score():
    from nas.configs import TimingConfig, TrainConfig
    from nas.evaluate import evaluate_candidate
    from nas.scores import proxy_scores
    from nas.zoo import get

    config = TrainConfig(epochs=2, image_size=16, batch_size=32, data_fraction=0.1, score="best_accuracy", threads=1)
    record = evaluate_candidate(get("efficientnetv2-b0", 10), "digits", config, timing_config=TimingConfig(batch_size=4, image_size=32, warmup=1, steps=3),
                                lock=False)
    curve = record.curve
    assert record.status == "ok" and len(curve) == 2
    full = round(1797 * 0.8)  # digits, 20 % held out for validation
    assert all(epoch["images"] <= full // 10 for epoch in curve)  # the proxy trained on a tenth of the training split
    assert record.accuracy == max(e["val_accuracy"] for e in curve) and record.final_accuracy == curve[-1]["val_accuracy"]
    scores = proxy_scores(record)
    assert scores == {"accuracy": curve[-1]["val_accuracy"], "best_accuracy": record.accuracy, "val_loss": -curve[-1]["val_loss"],
                      "sotl": -(curve[0]["train_loss"] + curve[1]["train_loss"]), "sotl_last": -curve[-1]["train_loss"],
                      "train_likelihood": pytest.approx(math.exp(-(curve[0]["train_loss"] + curve[1]["train_loss"]) / 2))}
    assert proxy_scores({"accuracy": 0.5}) == {"accuracy": 0.5, "best_accuracy": None, "val_loss": None, "sotl": None, "sotl_last": None,
                                               "train_likelihood": None}
    by_loss = evaluate_candidate(get("efficientnetv2-b0", 10), "digits", replace(config, score="train_likelihood"),
                                 timing_config=TimingConfig(batch_size=4, image_size=32, warmup=1, steps=3), lock=False)
    assert by_loss.accuracy == pytest.approx(math.exp(sum(-e["train_loss"] for e in by_loss.curve) / 2))  # sotl's ranking as A
    with pytest.raises(InputError, match="score"):
        TrainConfig(score="sotl")  # not accuracy-like: cannot be A in the reward
    with pytest.raises(InputError, match="data_fraction"):
        TrainConfig(data_fraction=0)


def _or_none(value: float):
    """A statistic as the audit stores it: None where it is undefined (nan: one side constant), else the value."""
    return None if math.isnan(value) else pytest.approx(value)


@pytest.mark.slow
def test_backbone_yardstick_and_fidelity_end_to_end(tmp_path, small_space):
    args = ["search", "--name", "fid", "--runs-dir", tmp_path, "--concurrent", "2", "--sampler", "random", "--seed", "5", *small_space,
            *FAST]
    result = run_nas(*args, "--trials", "3", "--json")
    assert result.code == 0, result.err
    run = open_run(tmp_path / "fid")
    marked = [t for t in run.study.trials if t.user_attrs.get("role") == BACKBONE_ROLE]
    assert len(marked) == 1 and marked[0].number == 0  # evaluated first
    base = backbone_trial(run.study)
    assert base.number == 0 and base.user_attrs["normalized_params"] == 1.0
    assert base.user_attrs["spec_key"] == NetworkSpec.from_dict(run.study.user_attrs["backbone"]).key()
    assert result.json()["complete"] == 3  # not counted toward --trials
    assert len(scored_trials(run.study)) == 3 and base.number not in {t.number for t in scored_trials(run.study)}
    assert result.json()["best_trial"] == best_scored(run.study).number != base.number

    resumed = run_nas(*args, "--trials", "4", "--json")  # resume: still one backbone
    assert resumed.code == 0, resumed.err
    run = open_run(tmp_path / "fid")
    assert sum(t.user_attrs.get("role") == BACKBONE_ROLE for t in run.study.trials) == 1
    assert resumed.json()["complete"] == 4 and resumed.json()["trials_this_run"] == 1

    rescore = run_nas("rescore", tmp_path / "fid", "--json").json()["backbone"]
    assert rescore["backbone"]["trial"] == 0 and rescore["trials"] == 4
    assert "backbone (trial 0)" in run_nas("rescore", tmp_path / "fid").out
    by_sotl = run_nas("rescore", tmp_path / "fid", "--score", "sotl", "--json").json()["trials"]  # any score, from the stored curves
    assert [r["score"] for r in by_sotl] == sorted((r["score"] for r in by_sotl), reverse=True) and all(r["score"] < 0 for r in by_sotl)
    assert_one_line_error(run_nas("rescore", tmp_path / "fid", "--score", "speed"), "score")
    export = run_nas("export", tmp_path / "fid", "-o", tmp_path / "arch.json")
    assert export.code == 0, export.err
    provenance = json.loads((tmp_path / "arch.json").read_text())["provenance"]
    against, mine, base_attrs = provenance["against_backbone"], run.trial(provenance["trial"]).user_attrs, base.user_attrs
    no_worse = [mine["accuracy"] >= base_attrs["accuracy"], mine["normalized_step_time"] <= base_attrs["normalized_step_time"],
                mine["normalized_params"] <= base_attrs["normalized_params"]]
    better = [mine["accuracy"] > base_attrs["accuracy"], mine["normalized_step_time"] < base_attrs["normalized_step_time"],
              mine["normalized_params"] < base_attrs["normalized_params"]]
    assert against["backbone_trial"] == 0 and against["dominates"] == (all(no_worse) and any(better))
    assert against["beats_reward"] == (mine["reward"] > base_attrs["reward"])

    fid = run_nas("fidelity", tmp_path / "fid", "--trials", "3", "--epochs", "2", "--json")
    assert fid.code == 0, fid.err
    audit = fid.json()
    numbers = [row["trial"] for row in audit["trials"]]
    assert len(numbers) == 3 and 0 in numbers and best_scored(run.study).number in numbers
    for number in numbers:  # a start line for each retraining, both seeds, before its result line
        assert f"fidelity: trial {number} started: 2 epochs" in fid.err
        assert f"fidelity: trial {number} (second seed) started: 2 epochs" in fid.err
    run = open_run(tmp_path / "fid")
    stored = {int(k[len(PREFIX):]): v for k, v in run.study.user_attrs.items() if k.startswith(PREFIX)}
    assert sorted(stored) == sorted(numbers)
    rows = [stored[n] for n in sorted(numbers)]
    assert all(r["schedule"] == {"epochs": 2, "image_size": 16, "data_fraction": 1.0} and r["status"] == "ok" for r in rows)
    for proxy, long, name in (("proxy_accuracy", "accuracy", "accuracy"), ("proxy_reward", "reward", "reward")):
        x, y = [r[proxy] for r in rows], [r[long] for r in rows]  # ties kept: tau-b; a constant side: no statistic (None)
        assert audit[f"kendall_tau_{name}"] == _or_none(stats.kendalltau(x, y).statistic), (x, y)
        assert audit[f"spearman_{name}"] == _or_none(stats.spearmanr(x, y).statistic), (x, y)
    best = max((n for n in sorted(numbers) if n != 0), key=lambda n: stored[n]["proxy_reward"])  # the best proxy trial, not the backbone
    assert audit["best_proxy_trial"] == best
    assert audit["best_beats_backbone_long"] == (stored[best]["reward"] > stored[0]["reward"])
    assert audit["best_beats_backbone_long_accuracy"] == (stored[best]["accuracy"] > stored[0]["accuracy"])
    replicas = {int(k[len(REPLICA_PREFIX):]): v for k, v in run.study.user_attrs.items() if k.startswith(REPLICA_PREFIX)}
    assert sorted(replicas) == sorted(numbers)  # the long schedule a second time, another seed: the ceiling
    assert all(replicas[n]["seed"] == stored[n]["seed"] + 1 and replicas[n]["schedule"] == stored[n]["schedule"] for n in numbers)
    assert audit["ceiling"]["trials"] == 3 and set(audit["scores"]) == set(SCORES)
    assert "seed ceiling: Kendall tau" in fidelity.summary_text(audit) and "score sotl " in fidelity.summary_text(audit)

    again = run_nas("fidelity", tmp_path / "fid", "--trials", "3", "--epochs", "2", "--json")  # resumable: nothing retrained
    assert again.code == 0 and "0 to go" in again.err and again.json()["trials"] == audit["trials"]
    assert again.json()["ceiling"] == audit["ceiling"]

    report = run_nas("report", tmp_path / "fid", "-o", tmp_path / "r.html")
    assert report.code == 0, report.err
    page = (tmp_path / "r.html").read_text()
    assert "Proxy fidelity" in page and "seed ceiling" in page and "Backbone yardstick" in page and "<table id='yardstick'>" in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 4  # reward, Pareto, choices, fidelity scatter

    from runners.analysis.dashboard import nas_study_note
    from runners.analysis.figures import refresh_figures

    assert set(refresh_figures(run.study)) == {"nas-a-vs-s", "nas-reward", "nas-choices", "nas-fidelity", "nas-summary", "nas-parallel"}
    note = nas_study_note(run.study, run.config.reward)
    assert "Backbone yardstick: trial 0" in note and "Proxy fidelity" in note and "noise ceiling" in note

    assert_one_line_error(run_nas("fidelity", tmp_path / "fid", "--data-fraction", "0"), "data_fraction")

    # nas calibrate on the same run: the long schedule (both seeds) is the one fidelity stored, only the grid trains
    args = ["calibrate", tmp_path / "fid", "--trials", "3", "--epochs", "1", "--image-sizes", "16", "--data-fractions", "0.5,1",
            "--long-epochs", "2", "--long-image-size", "16", "--json"]
    calibrated = run_nas(*args)
    assert calibrated.code == 0, calibrated.err
    assert "6 retrainings already done with this schedule, 0 to go" in calibrated.err and "6 trainings to go" in calibrated.err
    result = calibrated.json()
    assert {(r["setting"]["data_fraction"], r["score"]) for r in result["table"]} <= {(f, s) for f in (0.5, 1.0) for s in audit["scores"]}
    assert all(r["cost"] > 0 and r["relative_cost"] > 0 for r in result["table"]) and (tmp_path / "fid" / "calibration.png").exists()
    assert result["ceiling"] == audit["ceiling"]
    reaching = [r for r in result["table"] if r["score"] in ACCURACY_SCORES and r["fraction_of_ceiling"] is not None
                and r["fraction_of_ceiling"] >= 0.8]  # the default target, accuracy-like scores only
    cheapest = min(reaching, key=lambda r: (r["cost"], -r["fraction_of_ceiling"])) if reaching else None
    if not result["ceiling"]["reliable"]:  # its bootstrap interval reaches 0 (likely with 3 architectures): never a recommendation
        cheapest = None
        assert not result["ceiling_reliable"] and (result["ceiling"]["interval"] is None or result["ceiling"]["interval"][0] <= 0)
    assert result["recommended"] == cheapest and (result["snippet"] is None) == (cheapest is None)
    assert (tmp_path / "fid" / "calibration.yaml").exists() == (cheapest is not None)
    again = run_nas(*args)  # resumable: nothing trains
    assert again.code == 0 and "0 trainings to go" in again.err and again.json()["table"] == result["table"]
    assert_one_line_error(run_nas("calibrate", tmp_path / "fid", "--target", "2"), "target")
