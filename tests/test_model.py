import pytest
import torch

from nas.model import build, count_macs_traced, count_params
from nas.plan import count_macs
from nas.scaling import round_filters, scale
from nas.zoo import NAMES, get

OFFICIAL_PARAMS = {
    "efficientnet-b0": 5_288_548,
    "efficientnetv2-b0": 7_139_704,
    "efficientnetv2-s": 21_458_488,
    "efficientnetv2-m": 54_139_356,
    "efficientnetv2-l": 118_515_272,
}
# multiply-adds at the eval size, from REFERENCE.md (code-derived)
REFERENCE_MACS = {
    "efficientnet-b0": 0.39e9,
    "efficientnetv2-b0": 0.72e9,
    "efficientnetv2-s": 8.4e9,
    "efficientnetv2-m": 24.6e9,
    "efficientnetv2-l": 56.1e9,
}


@pytest.mark.parametrize("name", NAMES)
def test_exact_param_counts(name):
    assert count_params(build(get(name))) == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize("name", NAMES)
def test_macs_within_two_percent(name):
    spec = get(name)
    macs = count_macs(spec, spec.eval_image_size)
    assert abs(macs / REFERENCE_MACS[name] - 1) < 0.02


@pytest.mark.parametrize("name", ["efficientnet-b0", "efficientnetv2-b0"])
@pytest.mark.parametrize("size", [32, 63, 96])
def test_analytic_macs_equal_traced(name, size):
    spec = get(name, num_classes=10)
    assert count_macs(spec, size) == count_macs_traced(build(spec), size)


@pytest.mark.parametrize("name", NAMES)
def test_forward_shape_any_registry_spec(name):
    model = build(get(name, num_classes=7)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)


def test_channels_last_and_odd_resolution():
    model = build(get("efficientnetv2-b0", num_classes=10)).eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 77, 50).to(memory_format=torch.channels_last)
    with torch.no_grad():
        out = model(x)
        ref = model.to(memory_format=torch.contiguous_format)(x.contiguous())
    assert out.shape == (2, 10)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_one_training_step_at_32():
    torch.manual_seed(0)
    model = build(get("efficientnetv2-b0", num_classes=10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    before = model.classifier.weight.detach().clone()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert not torch.equal(before, model.classifier.weight)


def test_block_semantics_fused_expansion_one_has_no_projection():
    model = build(get("efficientnetv2-s"))
    first = model.stages[0][0]  # fused, e=1, 24->24: one conv+BN+SiLU, identity SE
    convs = [m for m in first.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 and convs[0].kernel_size == (3, 3)
    assert isinstance(first.conv_pwl, torch.nn.Identity) and isinstance(first.se, torch.nn.Identity)
    assert first.use_residual


def test_stochastic_depth_grows_linearly():
    spec = get("efficientnetv2-b0")
    model = build(spec)
    probs = [getattr(b.drop_path, "p", 0.0) for b in model.blocks()]
    n = spec.total_blocks
    for i, block in enumerate(model.blocks()):
        if block.use_residual:
            assert probs[i] == pytest.approx(spec.stochastic_depth * i / n)


@pytest.mark.parametrize("width, depth, params", [(1.0, 1.1, 7_794_184), (1.1, 1.2, 9_109_994), (1.2, 1.4, 12_233_232)])
def test_scale_b0_to_b1_b2_b3(width, depth, params):
    assert count_params(build(scale(get("efficientnet-b0"), width, depth))) == params


def test_round_filters_guard():
    assert round_filters(32, 1.0) == 32
    assert round_filters(16, 1.1) == 16
    assert round_filters(1280, 1.1) == 1408
    assert round_filters(20, 0.5) == 16  # 10 rounds to 8, below 0.9*10 -> +8


@pytest.mark.parametrize("name", NAMES)
def test_analytic_param_count_equals_built(name):
    from nas.plan import count_spec_params

    assert count_spec_params(get(name)) == OFFICIAL_PARAMS[name]


def test_named_nested_modules_like_timm():
    spec = get("efficientnetv2-b0", num_classes=10)
    model = build(spec)
    assert model.spec == spec
    assert [len(stage) for stage in model.stages] == [s.layers for s in spec.stages]
    keys = model.state_dict().keys()
    # fused stage: conv_exp (+ conv_pwl when e != 1); MBConv stage: conv_pw, conv_dw, se, conv_pwl
    assert "stages.1.0.conv_exp.conv.weight" in keys and "stages.1.0.conv_pwl.bn.weight" in keys
    for name in ("conv_pw.conv", "conv_dw.conv", "se.conv_reduce", "se.conv_expand", "conv_pwl.conv"):
        assert f"stages.3.0.{name}.weight" in keys
    assert model.stages[3][0].conv_dw.conv.groups == model.stages[3][0].conv_dw.conv.in_channels
    assert not any(key.startswith("blocks.") for key in keys)


@pytest.mark.parametrize("name", NAMES)
def test_block_plans_describe_the_built_convolutions(name):
    """Every conv the plan lists is built with exactly those shapes, in forward order (SE convs aside)."""
    from nas.plan import plan_stage

    spec = get(name)
    model = build(spec)
    planned = [(c.in_channels, c.out_channels, c.kernel, c.stride, c.groups)
               for stage in spec.stages for plan in plan_stage(stage) for c in plan.convs]
    built = [(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.groups)
             for stage in model.stages for m in stage.modules()
             if isinstance(m, torch.nn.Conv2d) and m.bias is None]  # the SE convs carry a bias
    assert built == planned


def test_load_checkpoint_rebuilds_from_the_stored_spec(tmp_path):
    import json

    from nas.errors import InputError
    from nas.model import load_checkpoint
    from nas.scaling import scale

    spec = scale(get("efficientnetv2-b0", num_classes=5), 0.5, 0.5)  # not a registry spec: only the file knows it
    model = build(spec).eval()
    identity = json.dumps({"spec": spec.to_dict(), "config": {}, "data": "digits"})
    path = tmp_path / "checkpoint.pt"
    torch.save({"identity": identity, "model": model.state_dict(), "ema": {}}, path)
    loaded = load_checkpoint(path).eval()
    assert loaded.spec == spec
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    with pytest.raises(InputError, match="no EMA weights"):
        load_checkpoint(path, ema=True)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
