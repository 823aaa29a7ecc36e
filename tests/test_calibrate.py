"""``nas calibrate``'s choice on a planted cost/tau table, and its snippet accepted by the sweep's config."""

import math
from types import SimpleNamespace

import optuna
import pytest

from nas.errors import InputError
from runners.analysis.calibrate import CalibrationConfig, choose, cost_of, frontier, grid_to_go, key_of, snippet, table_rows
from runners.config import resolve_config


def _row(epochs, size, fraction, score, cost, of_ceiling, long_cost=100.0):
    return {"setting": {"epochs": epochs, "image_size": size, "data_fraction": fraction}, "score": score, "cost": cost,
            "relative_cost": cost / long_cost, "fraction_of_ceiling": of_ceiling}


PLANTED = [
    _row(1, 16, 0.25, "accuracy", 1.0, 0.40), _row(1, 16, 0.25, "sotl", 1.0, 0.95),  # sotl is cheapest, but cannot be A
    _row(1, 16, 1.0, "accuracy", 4.0, 0.70), _row(1, 16, 1.0, "best_accuracy", 4.0, 0.79),  # just below the target
    _row(2, 16, 0.25, "accuracy", 2.5, None),  # no ceiling fraction (a side constant): never chosen
    _row(1, 32, 1.0, "accuracy", 9.0, 0.85), _row(1, 32, 1.0, "best_accuracy", 9.0, 0.90),  # the answer: cheapest >= 0.8, higher wins
    _row(2, 32, 1.0, "accuracy", 18.0, 1.05),
]


def test_calibration_picks_the_cheapest_setting_reaching_the_target():
    chosen = choose(PLANTED, 0.8)
    assert chosen["setting"] == {"epochs": 1, "image_size": 32, "data_fraction": 1.0} and chosen["score"] == "best_accuracy"
    assert choose(PLANTED, 0.7)["setting"]["image_size"] == 16 and choose(PLANTED, 0.7)["score"] == "best_accuracy"
    assert choose(PLANTED, 1.0)["cost"] == 18.0
    assert choose(PLANTED, 1.1) is None  # nothing reaches it: the frontier tells what each budget buys
    assert [(r["cost"], r["fraction_of_ceiling"]) for r in frontier(PLANTED)] == [(1.0, 0.95), (18.0, 1.05)]
    assert choose(PLANTED, 0.9, scores=("sotl",))["cost"] == 1.0
    assert cost_of({"cpu_seconds": 3.0, "train_seconds": 2.0}) == 3.0  # CPU seconds on a CPU worker
    assert cost_of({"cpu_seconds": 3.0, "train_seconds": 2.0, "device_type": "cuda"}) == 2.0  # GPU seconds on a GPU worker


def test_a_rerun_trains_only_grid_points_without_a_standing_result():
    """Missing or lost with its worker: trained again; ok or the training's own failure: stands (nothing trains twice)."""
    from runners.analysis.retrain import LOST_WORKER

    config = CalibrationConfig(epochs=(1,), image_sizes=(16,), data_fractions=(0.5, 1.0))
    half, full = config.grid()
    stored = {key_of(1, half): {"status": "ok"}, key_of(1, full): {"status": "failed", "failure_reason": "non-finite loss at epoch 1"},
              key_of(2, half): {"status": "failed", "failure_reason": f"{LOST_WORKER}: WorkerCrashedError: died"}}
    assert grid_to_go(stored, config, [1, 2]) == [(2, half), (2, full)]


def test_table_rows_of_planted_trainings_with_a_tie_and_a_constant_score():
    """One grid point, four architectures: each score's tau against the long accuracy, by hand; a constant score stays in the table."""
    study = optuna.create_study()  # in memory: the user attributes table_rows reads
    setting = {"epochs": 1, "image_size": 16, "data_fraction": 0.5}
    long = [0.6, 0.7, 0.8, 0.9]  # long accuracy of trials 0..3
    proxy = [0.2, 0.4, 0.3, 0.4]  # a tie: trials 1 and 3
    train_loss = [1.0, 0.5, 0.8, 0.2]  # sotl -1.0, -0.5, -0.8, -0.2
    for n in range(4):
        study.set_user_attr(f"fidelity:{n}", {"status": "ok", "cpu_seconds": (10.0, 12.0, 14.0, 12.0)[n]})  # the long schedule: 12 s
        study.set_user_attr(key_of(n, setting), {"status": "ok", "cpu_seconds": (2.0, 4.0, 3.0, 3.0)[n],  # 3 s: a quarter of the long
                                                 "curve": [{"val_accuracy": proxy[n], "val_loss": 1.0, "train_loss": train_loss[n]}]})
    config = CalibrationConfig(trials=4, epochs=(1,), image_sizes=(16,), data_fractions=(0.5,))
    audit = {"trials": [{"trial": n, "accuracy": long[n]} for n in range(4)], "ceiling": {"kendall_tau": 0.5}}
    table = {r["score"]: r for r in table_rows(SimpleNamespace(study=study), config, audit)}
    assert set(table) == {"accuracy", "best_accuracy", "val_loss", "sotl", "sotl_last", "train_likelihood"}
    assert all(r["setting"] == setting and r["cost"] == 3.0 and r["relative_cost"] == 0.25 and r["trials"] == 4 for r in table.values())
    # proxy accuracy: (1,2) discordant, (1,3) tied in the proxy only, 4 concordant: tau-b = (4 - 1) / sqrt(6 * 5)
    for name in ("accuracy", "best_accuracy"):  # one epoch: the best is the last
        assert table[name]["kendall_tau"] == pytest.approx(3 / math.sqrt(30))
        assert table[name]["fraction_of_ceiling"] == pytest.approx(3 / math.sqrt(30) / 0.5)
    for name in ("sotl", "sotl_last", "train_likelihood"):  # one swap of six pairs, (1,2): (5 - 1) / 6
        assert table[name]["kendall_tau"] == pytest.approx(2 / 3) and table[name]["fraction_of_ceiling"] == pytest.approx(4 / 3)
    assert table["val_loss"]["kendall_tau"] is None and table["val_loss"]["fraction_of_ceiling"] is None  # constant: no tau, still a row
    assert choose(list(table.values()), 1.2, scores=("accuracy", "best_accuracy")) is None  # only the training-loss scores reach it
    assert choose(list(table.values()), 1.2)["score"] == "train_likelihood"  # sotl's ranking, in a form the sweep takes as A


def test_recommended_snippet_is_a_sweep_config(tmp_path):
    path = tmp_path / "calibration.yaml"
    path.write_text(snippet(choose(PLANTED, 0.8)))
    train = resolve_config(str(path), {}).train
    assert (train.epochs, train.image_size, train.data_fraction, train.score) == (1, 32, 1.0, "best_accuracy")


def test_calibration_config_validation():
    assert len(CalibrationConfig().grid()) == 8 and CalibrationConfig().grid()[0] == {"epochs": 1, "image_size": 16, "data_fraction": 0.25}
    for bad, field in (({"data_fractions": (0.0,)}, "data_fractions"), ({"epochs": ()}, "epochs"), ({"target": 1.5}, "target"),
                       ({"trials": 1}, "trials")):
        with pytest.raises(InputError, match=field):
            CalibrationConfig(**bad)


def test_sweep_accepts_data_fraction_and_score_and_older_studies_still_resume():
    from runners.sweep.settings import search_settings, settings_difference
    from search_spaces import SearchSpace

    space = SearchSpace.from_config({})
    calibrated = resolve_config(None, {"name": "x", "train": {"data_fraction": 0.5, "score": "best_accuracy"}})
    stored = search_settings(calibrated, space.backbone, space)
    assert (stored["train"]["data_fraction"], stored["train"]["score"]) == (0.5, "best_accuracy")  # stored settings, as today
    default = search_settings(resolve_config(None, {"name": "x"}), space.backbone, space)
    assert settings_difference(stored, default) == ["train.data_fraction", "train.score"]  # another driver must agree
    older = {**default, "train": {k: v for k, v in default["train"].items() if k not in ("data_fraction", "score")}}
    assert settings_difference(older, default) == []  # a study stored before these settings existed resumes
    with pytest.raises(InputError, match="score"):
        resolve_config(None, {"name": "x", "train": {"score": "sotl"}})


def test_a_ceiling_that_is_noise_recommends_nothing():
    """Twelve architectures whose long accuracies two seeds rank unrelatedly: the ceiling's interval reaches 0,
    so no fraction of it is trusted, no setting is recommended, and the fidelity lines say why."""
    from runners.analysis.calibrate import recommend, summary_text
    from runners.analysis.fidelity import score_lines, score_table

    long = [0.80, 0.81, 0.82, 0.83, 0.84, 0.85, 0.86, 0.87, 0.88, 0.89, 0.90, 0.91]
    replica = [0.85, 0.80, 0.91, 0.83, 0.88, 0.81, 0.90, 0.84, 0.82, 0.89, 0.86, 0.87]  # another seed: unrelated order
    steady = [0.80, 0.82, 0.81, 0.83, 0.84, 0.86, 0.85, 0.87, 0.88, 0.90, 0.89, 0.91]  # the same order, two swaps
    noisy = score_table({"accuracy": long}, long, replica)
    assert not noisy["ceiling"]["reliable"] and noisy["ceiling"]["interval"][0] <= 0
    assert score_table({"accuracy": long}, long, steady)["ceiling"]["reliable"]
    assert any("does not rank these architectures reproducibly" in line for line in score_lines(noisy))
    row = {**PLANTED[0], "kendall_tau": 0.5, "fraction_of_ceiling": 5.0}
    assert recommend([row], noisy["ceiling"], 0.8) is None and recommend([row], {**noisy["ceiling"], "reliable": True}, 0.8) == row
    result = {"run_dir": "r", "trials": list(range(12)), "long_schedule": {}, "ceiling": noisy["ceiling"], "table": [row],
              "target": 0.8, "recommended": None, "frontier": [row], "snippet": None, "ceiling_reliable": False}
    text = summary_text(result)
    assert "nothing recommended" in text and "tau 0.500" in text and "calibration.yaml" not in text
