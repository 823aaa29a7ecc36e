"""``nas calibrate``'s choice on a planted cost/tau table, and its snippet accepted by the sweep's config."""

import pytest

from nas.errors import InputError
from runners.analysis.calibrate import CalibrationConfig, choose, cost_of, frontier, snippet
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
