"""One number check for every config and spec type: booleans, NaN, inf, strings and out-of-range values are
rejected with a message naming the field and the allowed values."""

import math

import pytest

from nas.configs import OptimizerConfig, TimingConfig, TrainConfig
from nas.errors import InputError, check_number
from nas.scaling import scale
from nas.schedule import ProgressiveConfig
from nas.spec import SpecError, StageSpec
from nas.zoo import get
from rewards import RewardError, get_reward, paper
from runners.config import SweepConfig
from search_spaces.space import SearchSpace, StageChoices

STAGE = dict(operator="mbconv", layers=1, kernel=3, stride=1, expansion=1, input_channels=8, output_channels=8)


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda v: OptimizerConfig(lr=v), "lr"),
        (lambda v: OptimizerConfig(weight_decay=v), "weight_decay"),
        (lambda v: OptimizerConfig(seed=v), "seed"),
        (lambda v: OptimizerConfig(threads=v), "threads"),
        (lambda v: TrainConfig(epochs=v), "epochs"),
        (lambda v: ProgressiveConfig(max_mixup=v), "max_mixup"),
        (lambda v: ProgressiveConfig(max_randaugment=v), "max_randaugment"),
        (lambda v: ProgressiveConfig(ema_decay=v), "ema_decay"),
        (lambda v: ProgressiveConfig(eval_image_size=v), "eval_image_size"),
        (lambda v: TimingConfig(steps=v), "steps"),
        (lambda v: TimingConfig(image_size=v), "image_size"),
        (lambda v: SweepConfig(cpus_per_trial=v), "cpus_per_trial"),
        (lambda v: SweepConfig(gpus_per_trial=v), "gpus_per_trial"),
        (lambda v: SweepConfig(n_trials=v), "n_trials"),
        (lambda v: StageChoices(se_ratio=v), "se_ratio"),
        (lambda v: StageChoices(min_layers=v), "min_layers"),
        (lambda v: StageSpec(**{**STAGE, "se_ratio": v}), "se_ratio"),
        (lambda v: StageSpec(**{**STAGE, "layers": v}), "layers"),
        (lambda v: scale(get("efficientnet-b0"), v, 1.0), "width"),
        (lambda v: SearchSpace.from_config({"layers_delta": v}), "layers_delta"),
    ],
)
@pytest.mark.parametrize("value", [True, math.nan, math.inf, "1"])
def test_every_config_rejects_non_numbers(make, field, value):
    with pytest.raises(InputError, match=f"{field}: .* is not allowed, allowed an? (number|integer)"):
        make(value)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: OptimizerConfig(lr=0.0), r"lr: 0.0 is not allowed, allowed a number in \[1e-08, 10\]"),
        (lambda: ProgressiveConfig(max_randaugment=30), r"max_randaugment: 30 .* in \[0, 30\) \(RandAugment's range"),
        (lambda: ProgressiveConfig(ema_decay=1.0), r"ema_decay: 1.0 .* a number in \(0, 1\) or null"),
        (lambda: TimingConfig(image_size=8), "image_size: 8 is not allowed, allowed an integer >= 16 or null"),
        (lambda: SweepConfig(cpus_per_trial=0), "cpus_per_trial: 0 is not allowed, allowed a number > 0"),
        (lambda: StageChoices(max_layers=101), r"max_layers: 101 is not allowed, allowed an integer in \[1, 100\]"),
        (lambda: scale(get("efficientnet-b0"), 1.0, 17), r"depth: 17 .* a number in \(0, 16\]"),
    ],
)
def test_out_of_range_names_field_and_allowed_values(make, message):
    with pytest.raises(InputError, match=message):
        make()


def test_spec_errors_stay_spec_errors_and_edges_are_inclusive():
    with pytest.raises(SpecError):
        StageSpec(**{**STAGE, "expansion": 17})
    assert StageSpec(**{**STAGE, "se_ratio": 1}).se_ratio == 1  # an int is a number
    assert StageChoices(se_ratio=None).se_ratio is None and StageChoices(se_ratio=0).se_for("mbconv") == 0.0
    check_number("x", 0, low=0, high=1)
    check_number("x", 1, low=0, high=1)
    with pytest.raises(InputError):
        check_number("x", 0, low=0, low_open=True)


@pytest.mark.parametrize("call", [lambda: paper(True, 1.0, 1.0), lambda: get_reward("paper", w=True),
                                  lambda: get_reward("constrained", target=math.nan)])
def test_rewards_reject_booleans_and_nan(call):
    with pytest.raises(RewardError, match="is not allowed"):
        call()
