import json

import pytest
import torch

from nas.io import load_spec
from nas.model import build, count_params
from tests.conftest import assert_one_line_error, run_nas


def test_inspect_json_is_one_document():
    result = run_nas("inspect", "efficientnetv2-b0", "--json", "--image-size", "224")
    assert result.code == 0, result.err
    data = result.json()
    assert data["params"] == 7_139_704
    assert data["image_size"] == 224
    assert data["spec"]["stages"][0]["operator"] == "fused_mbconv"


def test_inspect_text_has_table():
    result = run_nas("inspect", "efficientnetv2-s")
    assert result.code == 0
    assert "fused_mbconv" in result.out and "21,458,488" in result.out


@pytest.mark.parametrize("width, depth, params", [(1.0, 1.1, 7_794_184), (1.1, 1.2, 9_109_994), (1.2, 1.4, 12_233_232)])
def test_scale_cli_b1_b2_b3(tmp_path, width, depth, params):
    out = tmp_path / "b.json"
    result = run_nas("scale", "efficientnet-b0", "--width", width, "--depth", depth, "-o", out, "--json")
    assert result.code == 0, result.err
    assert result.json()["params"] == params
    assert run_nas("inspect", out, "--json").json()["params"] == params


def test_scaled_json_builds_same_network(tmp_path):
    out = tmp_path / "b2.json"
    assert run_nas("scale", "efficientnetv2-b0", "--width", "1.1", "--depth", "1.2", "-o", out).code == 0
    loaded = load_spec(str(out))
    from nas.scaling import scale
    from nas.zoo import get

    original = build(scale(get("efficientnetv2-b0"), 1.1, 1.2)).eval()
    rebuilt = build(loaded).eval()
    rebuilt.load_state_dict(original.state_dict())
    assert count_params(rebuilt) == count_params(original)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), original(x))


def _stage(**over):
    return {"operator": "mbconv", "layers": 1, "kernel": 3, "stride": 1, "expansion": 1,
            "input_channels": 32, "output_channels": 16, "se_ratio": 0.25, **over}


@pytest.mark.parametrize(
    "content, needle",
    [
        ({"name": "x", "stem_channels": 32, "stages": [_stage(kernel=4)]}, "kernel"),
        ({"name": "x", "stem_channels": 32, "stages": [_stage(operator="sepconv")]}, "operator"),
        ({"name": "x", "stem_channels": 32, "stages": [_stage(layers=0)]}, "layers"),
        ({"name": "x", "stages": [_stage()]}, "stem_channels"),
        ({"name": "x", "stem_channels": 32, "stages": [_stage()], "wings": 2}, "wings"),
        ({"name": "x", "stem_channels": 32, "stages": [{k: v for k, v in _stage().items() if k != "stride"}]}, "stride"),
        ("{bad json", "malformed"),
        ({"name": "x", "stem_channels": 32, "stages": ["r1_k3_s1_e1_i32"]}, "missing token"),
    ],
)
def test_inspect_bad_specs(tmp_path, content, needle):
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    assert_one_line_error(run_nas("inspect", path), needle)


def test_usage_errors_exit_2():
    assert_one_line_error(run_nas("inspect", "no-such-model"), "no-such-model")
    assert_one_line_error(run_nas("scale", "efficientnet-b0", "--width", "abc", "--depth", "1", "-o", "x.json"), "width")
