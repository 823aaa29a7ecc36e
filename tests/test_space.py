import itertools
import json
import subprocess
import sys

import optuna
import pytest
import torch

from nas.errors import InputError
from nas.model import build
from nas.plan import count_spec_params
from search_spaces import SAMPLERS, SearchSpace, StageChoices, make_sampler
from tests.conftest import assert_one_line_error, run_nas

optuna.logging.set_verbosity(optuna.logging.WARNING)

SMALL = {
    "backbone": "efficientnetv2-b0",
    "defaults": {"operators": ["mbconv"], "kernels": [3], "expansions": [1], "layers": 1},
    "stages": {
        "1": {"operators": ["mbconv", "fused_mbconv"], "layers": [1, 2]},
        "4": {"kernels": [3, 5], "expansions": [1, 4, 6]},
        "6": {"layers": [1, 3]},
    },
}


def test_size_equals_brute_force_count_of_keys():
    space = SearchSpace.from_config(SMALL)
    options = [space.stage_options(n) for n in range(1, len(space.stages) + 1)]
    keys = set()
    for combo in itertools.product(*options):
        choices = {n: (s.operator, s.layers, s.kernel, s.expansion) for n, s in enumerate(combo, 1)}
        keys.add(space.spec_from_choices(choices).key())
    assert space.size() == len(keys) == 2 * 2 * 6 * 3


def test_param_range_is_min_and_max_over_space():
    space = SearchSpace.from_config(SMALL)
    options = [space.stage_options(n) for n in range(1, len(space.stages) + 1)]
    counts = [
        count_spec_params(space.spec_from_choices({n: (s.operator, s.layers, s.kernel, s.expansion) for n, s in enumerate(c, 1)}))
        for c in itertools.product(*options)
    ]
    assert space.param_range() == (min(counts), max(counts))


def test_default_space_around_backbone():
    space = SearchSpace.default("efficientnetv2-b0")
    assert [(c.min_layers, c.max_layers) for c in space.stages] == [(1, 2), (1, 3), (1, 3), (2, 4), (4, 6), (7, 9)]
    assert all(c.operators == ("mbconv", "fused_mbconv") and c.kernels == (3, 5) and c.expansions == (1, 4, 6) for c in space.stages)


def test_parameter_names_are_readable():
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    SearchSpace.default().suggest(trial)
    assert {"stage3.op", "stage3.layers", "stage3.kernel", "stage3.expansion"} <= set(trial.params)


def test_thousand_random_samples_valid_and_in_range():
    space = SearchSpace.default()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(1000):
        trial = study.ask()
        spec = space.suggest(trial)
        for choice, stage in zip(space.stages, spec.stages):
            assert stage.operator in choice.operators and stage.kernel in choice.kernels
            assert stage.expansion in choice.expansions and choice.min_layers <= stage.layers <= choice.max_layers
            assert stage.se_ratio == (0.25 if stage.operator == "mbconv" else 0.0)
        assert space.spec_from_params(trial.params) == spec
        study.tell(trial, 0.0)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_yields_specs_that_build_and_run(sampler):
    space = SearchSpace.from_config(SMALL)
    directions = ["maximize", "minimize"] if sampler == "nsga2" else ["maximize"]
    study = optuna.create_study(sampler=make_sampler(sampler, seed=3), directions=directions)
    for _ in range(3):
        trial = study.ask()
        spec = space.suggest(trial).with_classes(10)
        with torch.no_grad():
            assert build(spec).eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
        values = [0.5, float(count_spec_params(spec))] if sampler == "nsga2" else 0.5
        study.tell(trial, values)


SCRIPT = """
import json, sys, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
from search_spaces import SearchSpace, make_sampler
from nas.plan import count_spec_params
space = SearchSpace.default()
study = optuna.create_study(sampler=make_sampler(sys.argv[1], seed=7), direction="maximize")
keys = []
for _ in range(8):
    t = study.ask(); spec = space.suggest(t); keys.append(spec.key())
    study.tell(t, -count_spec_params(spec) / 1e7)
print(json.dumps(keys))
"""


@pytest.mark.parametrize("sampler", ["tpe", "random", "qmc"])
def test_seeded_sampler_same_sequence_in_two_processes(sampler):
    runs = [subprocess.run([sys.executable, "-c", SCRIPT, sampler], capture_output=True, text=True, check=True).stdout for _ in range(2)]
    assert json.loads(runs[0]) == json.loads(runs[1])
    assert len(set(json.loads(runs[0]))) > 1


@pytest.mark.parametrize(
    "config, needle",
    [
        ({"defaults": {"operators": ["sepconv"]}}, "sepconv"),
        ({"stages": {"2": {"kernels": []}}}, "empty"),
        ({"stages": {"2": {"kernels": [3, 4]}}}, "kernels: 4"),
        ({"stages": {"3": {"layers": [4, 2]}}}, "min 4 > max 2"),
        ({"stages": {"9": {"layers": 1}}}, "stage number"),
        ({"colour": 1}, "colour"),
    ],
)
def test_bad_space_config(tmp_path, config, needle):
    with pytest.raises(InputError, match=needle):
        SearchSpace.from_config(config)
    path = tmp_path / "space.json"
    path.write_text(json.dumps(config))
    assert_one_line_error(run_nas("space", "--config", path), needle)


def test_space_cli_json_and_yaml(tmp_path):
    import yaml

    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    data = run_nas("space", "--config", path, "--json").json()
    assert data["size"] == 72 and len(data["stages"]) == 6
    text = run_nas("space")
    assert text.code == 0 and "distinct architectures: 1,451,188,224" in text.out


def test_stage_choices_validation():
    with pytest.raises(InputError, match="expansions"):
        StageChoices(expansions=(0,))
