"""The rl and evolution samplers: seeded, rebuilt from the study (resume), better than random on an analytic objective."""

import json
import subprocess
import sys

import optuna
import pytest

from nas.errors import InputError
from runners.config import SweepConfig
from search_spaces import SAMPLERS, SearchSpace, make_sampler
from search_spaces.analytic import AnalyticObjective
from search_spaces.evolution import RegularizedEvolutionSampler
from search_spaces.history import scored_history
from tests.conftest import ROOT

NEW = ("rl", "evolution")

SCRIPT = """
import json, sys, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
from search_spaces import SearchSpace, make_sampler
from search_spaces.analytic import AnalyticObjective
name, storage, trials = sys.argv[1], sys.argv[2], int(sys.argv[3])
objective = AnalyticObjective.draw(SearchSpace.default("efficientnetv2-b0"), seed=7)
study = optuna.create_study(study_name="s", storage=None if storage == "-" else storage, load_if_exists=True,
                            direction="maximize", sampler=make_sampler(name, seed=11))
study.optimize(objective, n_trials=trials)
print(json.dumps([t.params for t in sorted(study.trials, key=lambda t: t.number)]))
"""


def _run(name: str, storage: str, trials: int) -> list[dict]:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, name, storage, str(trials)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("name", NEW)
def test_same_seed_same_proposals_in_two_processes(name):
    first, second = _run(name, "-", 40), _run(name, "-", 40)
    assert first == second
    assert len({json.dumps(p, sort_keys=True) for p in first}) > 30  # it explores, not a constant


@pytest.mark.parametrize("name", NEW)
def test_rebuilt_from_the_study_after_a_restart(name, tmp_path):
    resumed = f"sqlite:///{tmp_path / 'resumed.db'}"
    before = _run(name, resumed, 30)
    after = _run(name, resumed, 30)  # a new process loads the study and continues: 60 trials in all
    assert after[:30] == before
    assert after[30:] != before  # no replay of the first run's proposals
    uninterrupted = _run(name, f"sqlite:///{tmp_path / 'straight.db'}", 60)
    assert after == uninterrupted  # the sampler's state lives in the study only


def _regret(sampler_name: str, seed: int, trials: int = 300) -> float:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    objective = AnalyticObjective.draw(SearchSpace.default("efficientnetv2-b0"), seed=100 + seed)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(sampler_name, seed=seed))
    study.optimize(objective, n_trials=trials)
    return -study.best_value


def test_lower_regret_than_random_search_at_300_trials_over_5_seeds():
    regrets = {name: [_regret(name, seed) for seed in range(5)] for name in ("random", *NEW)}
    mean = {name: sum(values) / len(values) for name, values in regrets.items()}
    assert all(value >= 0 for values in regrets.values() for value in values)  # 0 is the known optimum
    assert mean["evolution"] < mean["random"], regrets
    assert mean["rl"] < mean["random"], regrets


def test_analytic_optimum_is_the_target():
    objective = AnalyticObjective.draw(SearchSpace.default("efficientnetv2-b0"), seed=3)
    assert objective.reward(objective.target) == 0
    assert objective.reward(objective.space.backbone) < 0 or objective.target.key() == objective.space.backbone.key()


@pytest.mark.parametrize("name", NEW)
def test_backbone_and_unscored_trials_are_ignored(name):
    study = optuna.create_study(direction="maximize", sampler=make_sampler(name, seed=0))
    study.enqueue_trial({"x": 3}, user_attrs={"role": "backbone"})
    study.optimize(lambda t: t.suggest_int("x", 0, 9) * 1.0, n_trials=1)  # the backbone, value 3
    failed = study.ask()
    failed.suggest_int("x", 0, 9)
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    assert scored_history(study) == []
    study.optimize(lambda t: t.suggest_int("x", 0, 9) * 1.0, n_trials=5)
    assert [t.number for t, _ in scored_history(study)] == [2, 3, 4, 5, 6]


def test_evolution_child_differs_from_its_parent_in_one_choice():
    sampler = RegularizedEvolutionSampler(seed=0, population=4, sample=4)  # the tournament sees the whole population
    study = optuna.create_study(direction="maximize", sampler=sampler)
    space = {"a": optuna.distributions.CategoricalDistribution(["p", "q", "r"]), "b": optuna.distributions.IntDistribution(1, 5)}
    study.optimize(lambda t: float(t.suggest_categorical("a", ["p", "q", "r"]) == "q") + t.suggest_int("b", 1, 5), n_trials=4)
    child = sampler.propose(study, study.ask(), space)
    parent = max(study.trials[:4], key=lambda t: (t.value, -t.number)).params
    assert sum(child[k] != parent[k] for k in parent) == 1


def test_sampler_names_and_validation():
    assert set(NEW) <= set(SAMPLERS)
    assert SweepConfig(sampler="rl").sampler == "rl" and SweepConfig(sampler="evolution").sampler == "evolution"
    with pytest.raises(InputError, match="sample"):
        RegularizedEvolutionSampler(population=3, sample=5)
    with pytest.raises(InputError, match="sampler"):
        make_sampler("annealing")


# ---- Optuna's sampler contract, over every distribution type (as Optuna's own sampler tests enumerate them) ----
FloatD, IntD, CatD = optuna.distributions.FloatDistribution, optuna.distributions.IntDistribution, optuna.distributions.CategoricalDistribution
DISTRIBUTIONS = {
    "float": FloatD(-1.0, 1.0), "float_point": FloatD(0.5, 0.5), "float_step": FloatD(-1.0, 1.0, step=0.1),
    "float_step_odd": FloatD(0.0, 0.9, step=0.3), "float_log": FloatD(1e-7, 1.0, log=True),
    "float_fine_grid": FloatD(0.0, 1.0, step=1e-6),  # too many points to list: drawn as a range, still on the grid
    "int": IntD(-10, 10), "int_step": IntD(-10, 8, step=3), "int_log": IntD(1, 100, log=True), "int_point": IntD(3, 3),
    "int_wide": IntD(0, 10**9),  # too many to list: drawn as a range
    "cat_str": CatD(["a", "b", "c"]), "cat_mixed": CatD([None, 1, 2.5, "x", True]),
}


def _check(distribution, value) -> None:
    """Inside the distribution, on its grid, and with the Python type Optuna's own samplers return."""
    assert distribution._contains(distribution.to_internal_repr(value)), (distribution, value)
    if isinstance(distribution, FloatD):
        assert type(value) is float
    elif isinstance(distribution, IntD):
        assert type(value) is int
    else:
        assert any(value is c or (type(value) is type(c) and value == c) for c in distribution.choices)


def _suggest(trial, key, d):
    """The public suggest call for distribution ``d``."""
    if isinstance(d, FloatD):
        return trial.suggest_float(key, d.low, d.high, step=d.step, log=d.log)
    if isinstance(d, IntD):
        return trial.suggest_int(key, d.low, d.high, step=d.step, log=d.log)
    return trial.suggest_categorical(key, d.choices)


def _small(name):
    return RegularizedEvolutionSampler(seed=1, population=4, sample=2) if name == "evolution" else make_sampler(name, seed=1)


@pytest.mark.parametrize("name", NEW)
def test_sample_independent_keeps_every_distribution_type(name):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=_small(name))

    def objective(trial):
        values = {key: _suggest(trial, key, d) for key, d in DISTRIBUTIONS.items()}
        return sum(float(v) for v in values.values() if isinstance(v, (int, float)))

    study.optimize(objective, n_trials=30)  # past the initial population: history-driven proposals too
    for trial in study.trials:
        for key, distribution in DISTRIBUTIONS.items():
            _check(distribution, trial.params[key])
    assert len({t.params["float_step"] for t in study.trials}) > 3


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("kind", ["numerical", "categorical", "mixed"])
def test_sample_relative_handles_numerical_categorical_and_mixed_spaces(name, kind):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    keys = {"numerical": [k for k in DISTRIBUTIONS if not k.startswith("cat")],
            "categorical": [k for k in DISTRIBUTIONS if k.startswith("cat")], "mixed": list(DISTRIBUTIONS)}[kind]
    space = {k: DISTRIBUTIONS[k] for k in keys}
    sampler = _small(name)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for number in range(8):  # scored history, so evolution mutates and rl has learned logits
        trial = study.ask()
        values = sampler.sample_relative(study, study.get_trials(deepcopy=False)[-1], space)
        assert set(values) == set(space)  # every parameter drawn here, numerical ones included: never a TypeError
        for key, value in values.items():
            _check(space[key], value)
            _suggest(trial, key, space[key])
        study.tell(trial, float(number % 3))
    assert sampler.infer_relative_search_space(study, study.trials[-1]).keys() <= set(space)
