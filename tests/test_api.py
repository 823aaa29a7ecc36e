"""The Python API as a user calls it: the README's example, run as written; specs and models from arch.json."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

import nas
from nas.spec import NetworkSpec
from nas.zoo import get
from tests.conftest import ROOT


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_example_runs_as_written(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    proc = subprocess.run([sys.executable, "-c", readme_example()], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch.Size([4, 2])" in proc.stdout and "best trial" in proc.stdout
    assert json.loads((tmp_path / "arch.json").read_text())["provenance"]["trial"] is not None
    # the study says what ran: the user's data and the reward function, not digits / paper
    from runners.study import open_run, scored_trials

    run = open_run(tmp_path / "runs" / "api-demo")
    assert run.study.user_attrs["data"].startswith("user data: 240 images 1x16x16 (20% held out for test), 2 classes, sha256 ")
    assert run.study.user_attrs["reward"] == {"name": "custom", "function": "__main__.my_reward"}
    best = max(scored_trials(run.study), key=lambda t: t.user_attrs["reward"])
    a = best.user_attrs
    assert a["reward"] == pytest.approx(a["accuracy"] * a["normalized_step_time"] ** -0.1 * a["normalized_params"] ** -0.02)
    assert "backbone (trial 0) started" in proc.stderr  # progress lines for API sweeps too


def test_create_model_from_every_source(tmp_path):
    spec = get("efficientnetv2-b0")
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps({"spec": spec.to_dict(), "provenance": {"trial": 3}}))
    assert NetworkSpec.from_dict(json.loads(arch.read_text())) == spec  # an exported arch.json, as a dict
    for source in (str(arch), arch, "efficientnetv2-b0", spec, spec.to_dict(), json.loads(arch.read_text())):
        assert nas.load_spec(source, num_classes=5) == spec.with_classes(5)
    model = nas.create_model(arch, num_classes=7, in_chans=1)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 7)
    assert nas.create_model(spec)(torch.zeros(2, 3, 32, 32)).shape == (2, spec.num_classes)


def test_user_dataset_from_a_torch_dataset():
    from torch.utils.data import TensorDataset

    train = TensorDataset(torch.rand(20, 3, 8, 8), torch.randint(0, 3, (20,)))
    data = nas.user_dataset(train, (torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8), torch.randint(0, 3, (10,))),
                            num_classes=3)
    assert data.train_images.dtype == torch.uint8 and data.train_images.shape == (20, 3, 8, 8) and len(data.test_images) == 10
    assert data.name.startswith("user data: 20 train / 10 test images 3x8x8, 3 classes, sha256 ")
