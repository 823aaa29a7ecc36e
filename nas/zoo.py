"""The registry: official EfficientNet / EfficientNetV2 tables as literal data.

These are golden fixtures (tests check their exact parameter counts); scaling rules live in
:mod:`nas.scaling`, never here. The S / M / L image sizes and dropout are the family members' settings
(:data:`nas.scaling.MEMBERS`), written once there.

    >>> get("efficientnetv2-s").eval_image_size
    384
"""

from __future__ import annotations

from nas.scaling import member_settings
from nas.spec import NetworkSpec, SpecError

_TABLES: dict[str, dict] = {
    "efficientnet-b0": dict(
        stem_channels=32,
        head_channels=1280,
        train_image_size=224,
        eval_image_size=224,
        dropout=0.2,
        blocks=[
            "r1_k3_s1_e1_i32_o16_se0.25",
            "r2_k3_s2_e6_i16_o24_se0.25",
            "r2_k5_s2_e6_i24_o40_se0.25",
            "r3_k3_s2_e6_i40_o80_se0.25",
            "r3_k5_s1_e6_i80_o112_se0.25",
            "r4_k5_s2_e6_i112_o192_se0.25",
            "r1_k3_s1_e6_i192_o320_se0.25",
        ],
    ),
    "efficientnetv2-b0": dict(
        stem_channels=32,
        head_channels=1280,
        train_image_size=192,
        eval_image_size=224,
        dropout=0.2,
        blocks=[
            "r1_k3_s1_e1_i32_o16_c1",
            "r2_k3_s2_e4_i16_o32_c1",
            "r2_k3_s2_e4_i32_o48_c1",
            "r3_k3_s2_e4_i48_o96_se0.25",
            "r5_k3_s1_e6_i96_o112_se0.25",
            "r8_k3_s2_e6_i112_o192_se0.25",
        ],
    ),
    "efficientnetv2-s": dict(
        stem_channels=24,
        head_channels=1280,
        member="s",  # image sizes and dropout: nas.scaling.MEMBERS
        blocks=[
            "r2_k3_s1_e1_i24_o24_c1",
            "r4_k3_s2_e4_i24_o48_c1",
            "r4_k3_s2_e4_i48_o64_c1",
            "r6_k3_s2_e4_i64_o128_se0.25",
            "r9_k3_s1_e6_i128_o160_se0.25",
            "r15_k3_s2_e6_i160_o256_se0.25",
        ],
    ),
    "efficientnetv2-m": dict(
        stem_channels=24,
        head_channels=1280,
        member="m",  # image sizes and dropout: nas.scaling.MEMBERS
        blocks=[
            "r3_k3_s1_e1_i24_o24_c1",
            "r5_k3_s2_e4_i24_o48_c1",
            "r5_k3_s2_e4_i48_o80_c1",
            "r7_k3_s2_e4_i80_o160_se0.25",
            "r14_k3_s1_e6_i160_o176_se0.25",
            "r18_k3_s2_e6_i176_o304_se0.25",
            "r5_k3_s1_e6_i304_o512_se0.25",
        ],
    ),
    "efficientnetv2-l": dict(
        stem_channels=32,
        head_channels=1280,
        member="l",  # image sizes and dropout: nas.scaling.MEMBERS
        blocks=[
            "r4_k3_s1_e1_i32_o32_c1",
            "r7_k3_s2_e4_i32_o64_c1",
            "r7_k3_s2_e4_i64_o96_c1",
            "r10_k3_s2_e4_i96_o192_se0.25",
            "r19_k3_s1_e6_i192_o224_se0.25",
            "r25_k3_s2_e6_i224_o384_se0.25",
            "r7_k3_s1_e6_i384_o640_se0.25",
        ],
    ),
}

NAMES = tuple(_TABLES)


def get(name: str, num_classes: int = 1000) -> NetworkSpec:
    """The official spec called ``name`` (see :data:`NAMES`), with ``num_classes`` outputs."""
    if name not in _TABLES:
        raise SpecError(f"spec: unknown registry name {name!r}, allowed {', '.join(NAMES)} or a path to a spec JSON")
    table = dict(_TABLES[name])
    blocks = table.pop("blocks")
    if "member" in table:
        table.update(member_settings(table.pop("member")))
    return NetworkSpec.from_block_strings(name, blocks=blocks, num_classes=num_classes, **table)
