import math

import pytest

from rewards import REWARDS, RewardError, constrained, get_reward, paper, pareto_front


def test_hand_computed_paper_reward():
    assert paper(0.8, 1.25, 1.5) == pytest.approx(0.8 * 1.25**-0.07 * 1.5**-0.05, rel=1e-12)
    assert paper(0.8, 1.25, 1.5) == pytest.approx(0.77179, abs=1e-5)  # 0.8 * 0.984503 * 0.979932


def test_zero_exponents_give_accuracy():
    assert paper(0.73, 4.0, 9.0, w=0, v=0) == 0.73


@pytest.mark.parametrize("name", list(REWARDS))
def test_monotonicity(name):
    reward = get_reward(name)
    assert reward(0.9, 1.0, 1.0) > reward(0.8, 1.0, 1.0)
    assert reward(0.9, 2.0, 1.0) <= reward(0.9, 1.0, 1.0)
    assert reward(0.9, 1.0, 2.0) <= reward(0.9, 1.0, 1.0)
    if name == "paper":
        assert reward(0.9, 2.0, 1.0) < reward(0.9, 1.0, 1.0) and reward(0.9, 1.0, 2.0) < reward(0.9, 1.0, 1.0)


def test_constrained_reward():
    assert constrained(0.9, 0.5, 1.0, target=1.0, alpha=0.0, beta=-1.0) == 0.9
    assert constrained(0.9, 2.0, 1.0, target=1.0, alpha=0.0, beta=-1.0) == pytest.approx(0.45)
    assert constrained(0.9, 0.5, 1.0, target=1.0, alpha=-0.07, beta=-0.07) == pytest.approx(0.9 * 0.5**-0.07)


@pytest.mark.parametrize(
    "args, needle",
    [((1.2, 1.0, 1.0), "accuracy"), ((-0.1, 1.0, 1.0), "accuracy"), ((0.5, 0.0, 1.0), "step_time"),
     ((0.5, math.inf, 1.0), "step_time"), ((0.5, 1.0, -3), "params"), ((math.nan, 1.0, 1.0), "accuracy")],
)
def test_invalid_inputs_name_the_value(args, needle):
    with pytest.raises(RewardError, match=needle):
        paper(*args)


def test_get_reward_rejects_unknowns():
    with pytest.raises(RewardError, match="unknown reward 'speed'"):
        get_reward("speed")
    with pytest.raises(RewardError, match="unknown option"):
        get_reward("accuracy", w=1)


def test_pareto_front():
    pts = [(0.9, 2.0, 3.0), (0.8, 1.0, 3.0), (0.8, 1.0, 4.0), (0.95, 3.0, 1.0), (0.7, 2.5, 5.0)]
    assert pareto_front(pts, ["maximize", "minimize", "minimize"]) == [0, 1, 3]
