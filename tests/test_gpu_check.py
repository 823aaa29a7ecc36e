"""bench/gpu_check.py: the one-shot GPU check, run here in its CPU form (the GPU run is done where a GPU is lent)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "bench" / "gpu_check.py")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the script would run, not refuse")
def test_refuses_in_one_line_without_a_gpu():
    result = subprocess.run([sys.executable, SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "--cpu" in result.stderr


@pytest.mark.slow
def test_cpu_mode_runs_every_measurement():
    result = subprocess.run([sys.executable, SCRIPT, "--cpu", "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)  # exactly one JSON document on stdout
    assert doc["mode"] == "smoke" and doc["throughput"]["trainer_img_s"] > 0 and doc["throughput"]["bare_img_s"] > 0
    neighbour = doc["neighbour"]
    assert len(neighbour["alone_ms"]) == len(neighbour["lock_on_ms"]) == len(neighbour["lock_off_ms"]) == 2
    assert neighbour["lock_on_ratio"] > 0 and neighbour["lock_off_ratio"] > 0
    table3 = doc["table3"]
    assert table3["mbconv"]["params"] != table3["fused_1_3"]["params"]  # the stages really changed operator
    assert set(doc["packing"]) == {"1", "2"} and all(v["aggregate_img_s"] > 0 for v in doc["packing"].values())
    assert "| measurement | value | target |" in result.stderr
