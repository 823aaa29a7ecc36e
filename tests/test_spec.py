import json

import pytest

from nas.spec import NetworkSpec, SpecError, StageSpec
from nas.zoo import NAMES, get


@pytest.mark.parametrize("name", NAMES)
def test_registry_json_round_trip(name):
    spec = get(name)
    assert NetworkSpec.from_json(spec.to_json()) == spec
    assert json.loads(spec.to_json())["schema_version"] == 1


@pytest.mark.parametrize("name", NAMES)
def test_registry_block_string_round_trip(name):
    spec = get(name)
    for stage in spec.stages:
        assert StageSpec.from_string(stage.to_string()) == stage
    rebuilt = NetworkSpec.from_block_strings(
        spec.name, spec.stem_channels, spec.block_strings, head_channels=spec.head_channels,
        dropout=spec.dropout, train_image_size=spec.train_image_size, eval_image_size=spec.eval_image_size,
    )
    assert rebuilt == spec


@pytest.mark.parametrize(
    "text, expected",
    [
        ("r2_k3_s1_e1_i24_o24_c1", dict(operator="fused_mbconv", layers=2, kernel=3, stride=1, expansion=1, se_ratio=0.0)),
        ("r6_k3_s2_e4_i64_o128_se0.25", dict(operator="mbconv", layers=6, stride=2, expansion=4, output_channels=128, se_ratio=0.25)),
        ("r2_k5_s22_e6_i24_o40_se0.25", dict(operator="mbconv", kernel=5, stride=2)),  # v1 stride notation
    ],
)
def test_block_string_reads_reference_grammar(text, expected):
    stage = StageSpec.from_string(text)
    for key, value in expected.items():
        assert getattr(stage, key) == value


@pytest.mark.parametrize(
    "text, needle",
    [
        ("r2_k3_s1_e1_i24", "missing token"),
        ("r2_k3_s1_e1_i24_o24_x9", "unknown token"),
        ("r2_k4_s1_e1_i24_o24", "kernel"),
        ("rX_k3_s1_e1_i24_o24", "not a number"),
        ("r2_k3_s1_e1_i24_o24_c2", "c2"),
        ("r2_r3_k3_s1_e1_i24_o24", "twice"),
        ("", "non-empty"),
    ],
)
def test_bad_block_strings(text, needle):
    with pytest.raises(SpecError, match=needle):
        StageSpec.from_string(text)


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("operator", "sepconv", "operator"),
        ("kernel", 4, "kernel: 4"),
        ("layers", 0, "layers: 0"),
        ("stride", 3, "stride: 3"),
        ("expansion", 0, "expansion"),
        ("se_ratio", 1.5, "se_ratio"),
        ("layers", True, "layers"),
    ],
)
def test_stage_validation_names_field(field, value, needle):
    good = dict(operator="mbconv", layers=1, kernel=3, stride=1, expansion=1, input_channels=8, output_channels=8)
    with pytest.raises(SpecError, match=needle):
        StageSpec(**{**good, field: value})


def test_network_validation():
    spec = get("efficientnetv2-b0")
    data = spec.to_dict()
    data["stages"][1]["input_channels"] = 17
    with pytest.raises(SpecError, match=r"stages\[1\].input_channels"):
        NetworkSpec.from_dict(data)
    with pytest.raises(SpecError, match="unknown field"):
        NetworkSpec.from_dict({**spec.to_dict(), "colour": 1})
    partial = spec.to_dict()
    del partial["stem_channels"]
    with pytest.raises(SpecError, match="missing field.*stem_channels"):
        NetworkSpec.from_dict(partial)
    with pytest.raises(SpecError, match="schema_version"):
        NetworkSpec.from_dict({**spec.to_dict(), "schema_version": 99})
    with pytest.raises(SpecError, match="malformed"):
        NetworkSpec.from_json("{not json")


def test_stages_accept_block_strings_in_json():
    spec = get("efficientnetv2-s")
    data = {**spec.to_dict(), "stages": list(spec.block_strings)}
    assert NetworkSpec.from_dict(data) == spec


def test_key_identifies_architecture():
    spec = get("efficientnetv2-b0")
    assert spec.key() == spec.with_classes(1000).key()
    assert spec.key().startswith("stem32 r1_k3_s1_e1_i32_o16_c1")
    assert get("efficientnetv2-s").key() != spec.key()
