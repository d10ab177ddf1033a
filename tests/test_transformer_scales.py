"""Transformer block scales (Flux ``double``/``single``, SD3 ``joint``) for any specification a user or a recipe can
hold: every module gets the strength the documented rule gives it, and anything else is one ScaleError."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from lorastack.core.errors import ScaleError
from lorastack.core.scales import compile_scale

COUNTS = {"flux": {"double": 2, "single": 3}, "sd3": {"joint": 3}}
PATHS = {
    "flux": ["transformer_blocks.0.attn.to_q", "transformer_blocks.1.ff.net.2", "single_transformer_blocks.2.proj_mlp",
             "single_transformer_blocks.0.attn.to_k", "x_embedder", "norm_out.linear"],
    "sd3": ["transformer_blocks.0.attn.to_q", "transformer_blocks.2.attn.add_q_proj", "pos_embed.proj", "proj_out"],
}  # fmt: skip
number = st.floats(-3, 3, allow_nan=False, allow_subnormal=False)
anything = st.one_of(
    number, st.none(), st.booleans(), st.text(max_size=5), st.floats(allow_subnormal=False),
    st.lists(number, max_size=4), st.integers(-(10**30), 10**30),
)  # fmt: skip
keys = st.one_of(
    st.sampled_from(["scale", "double", "single", "joint", "double.0", "double.1", "double.2", "single.2", "single.9",
                     "joint.1", "joint.3", "down", "double.x"]),
    st.text(max_size=8),
)  # fmt: skip


def expected(spec: dict, family: str, path: str) -> float:
    """The documented rule, written out: ``scale`` times the block's own value, else its group's, else 1."""
    block = None
    for group, prefix in (("double", "transformer_blocks."), ("single", "single_transformer_blocks."),
                          ("joint", "transformer_blocks.")):  # fmt: skip
        if group in COUNTS[family] and path.startswith(prefix):
            block = (group, int(path[len(prefix) :].split(".")[0]))
    factor = spec.get("scale", 1.0)
    if block is None:
        return factor
    group, index = block
    if f"{group}.{index}" in spec:
        return factor * spec[f"{group}.{index}"]
    value = spec.get(group, 1.0)
    return factor * (value[index] if isinstance(value, list) else value)


def valid_blocks(family: str):
    """Specifications the rule applies: the family's groups (a number or one value per block), its blocks, scale."""
    entries = {"scale": number}
    for group, count in COUNTS[family].items():
        entries[group] = st.one_of(number, st.lists(number, min_size=count, max_size=count))
        entries.update({f"{group}.{i}": number for i in range(count)})
    return st.fixed_dictionaries({}, optional=entries)


specs = st.sampled_from(["flux", "sd3"]).flatmap(
    lambda family: st.tuples(
        st.just(family), st.one_of(valid_blocks(family), st.dictionaries(keys, anything, max_size=5))
    )
)


@settings(max_examples=300, deadline=None)
@given(specs, number)
def test_any_block_spec_is_applied_by_the_rule_or_refused_in_one_line(family_and_blocks, te):
    family, blocks = family_and_blocks
    spec = {"transformer": blocks, "text_encoder": te}
    try:
        scale_of = compile_scale(spec, family, COUNTS[family])
    except ScaleError as e:
        assert "\n" not in str(e)
        return
    for path in PATHS[family]:
        got = scale_of(f"transformer.{path}")
        assert math.isfinite(got) and math.isclose(got, expected(blocks, family, path), rel_tol=1e-12, abs_tol=1e-12)
    assert scale_of("text_encoder.text_model.encoder.layers.0.self_attn.q_proj") == te
