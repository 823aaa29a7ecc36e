import json

import pytest

from nas.model import build, count_params
from nas.plan import count_macs, count_spec_params
from nas.scaling import MEMBERS, family
from nas.zoo import get
from tests.conftest import assert_one_line_error, run_nas

OFFICIAL = {"s": ("efficientnetv2-s", 384), "m": ("efficientnetv2-m", 480), "l": ("efficientnetv2-l", 480)}


@pytest.mark.parametrize("member", ["s", "m", "l"])
def test_family_of_v2_base_matches_official_members(member):
    produced = family(get("efficientnetv2-b0"))[member]
    official = get(OFFICIAL[member][0])
    size = OFFICIAL[member][1]
    assert abs(count_spec_params(produced) / count_spec_params(official) - 1) <= 0.10
    assert abs(count_macs(produced, size) / count_macs(official, size) - 1) <= 0.15
    assert produced.eval_image_size == size <= 480
    assert produced.train_image_size == MEMBERS[member].train_image_size


def test_rule_shape():
    members = family(get("efficientnetv2-b0"))
    assert len(members["s"].stages) == 6 and len(members["m"].stages) == 7 and len(members["l"].stages) == 7
    assert members["m"].stages[4].layers == 14 and members["l"].stages[4].layers == 20  # later stages deepened
    assert members["m"].stages[-1].stride == 1 and members["m"].stages[-1].output_channels > members["m"].stages[-2].output_channels
    assert members["l"].head_channels == 1280


def test_registry_tables_stay_literal():
    assert [s.layers for s in get("efficientnetv2-m").stages] == [3, 5, 5, 7, 14, 18, 5]


def test_family_cli_writes_members(tmp_path):
    result = run_nas("scale", "efficientnetv2-b0", "--family", "-o", tmp_path / "fam", "--json")
    assert result.code == 0, result.err
    data = result.json()["members"]
    assert [m["member"] for m in data] == ["s", "m", "l"]
    for m in data:
        assert count_params(build(json_spec(m["path"]))) == m["params"]
        assert m["progressive"]["max_image_size"] == m["train_image_size"]
    text = run_nas("scale", "efficientnetv2-b0", "--family", "--members", "s", "-o", tmp_path / "one")
    assert text.code == 0 and "RA 5->10" in text.out


def json_spec(path):
    from nas.spec import NetworkSpec

    return NetworkSpec.from_dict(json.loads(open(path).read()))


def test_family_from_exported_sweep_spec(finished_sweep, tmp_path):
    arch = tmp_path / "arch.json"
    assert run_nas("export", finished_sweep, "-o", arch).code == 0
    result = run_nas("scale", arch, "--family", "-o", tmp_path / "fam", "--json")
    assert result.code == 0, result.err
    params = [m["params"] for m in result.json()["members"]]
    assert params[0] < params[1] < params[2]
    for m in result.json()["members"]:
        assert count_params(build(json_spec(m["path"]))) == m["params"]


@pytest.mark.parametrize(
    "args, needle",
    [(["efficientnetv2-b0", "--family", "--members", "s,xl"], "xl"),
     (["/no/such/arch.json", "--family"], "arch.json")],
)
def test_family_bad_input(tmp_path, args, needle):
    assert_one_line_error(run_nas("scale", *args, "-o", tmp_path / "out"), needle)


def test_family_invalid_base_file(tmp_path):
    bad = tmp_path / "arch.json"
    bad.write_text('{"spec": {"name": "x"}, "provenance": {}}')
    assert_one_line_error(run_nas("scale", bad, "--family", "-o", tmp_path / "out"), "missing field")
