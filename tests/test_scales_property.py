"""The scale parser against diffusers: for generated ``set_adapters``-shaped specifications, every LoRA module gets
the strength diffusers gives it, where diffusers defines one.

diffusers is the oracle: the reference pipeline loads the adapter with ``load_lora_weights`` and takes each spec
through ``set_adapters``; peft then holds each module's strength in ``scaling`` (strength x alpha / rank). Two places
where lorastack's documented rule goes further (``core/scales.py``) are left out of the comparison: a block's
down/up sampler (diffusers gives it the first layer's value, lorastack the last one, the layer the sampler follows),
blocks without attention layers and the mid block's resnets (diffusers leaves them at 1.0, lorastack applies the
block's number).
"""

from __future__ import annotations

import re

import pytest
from adapter_cases import make_case
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorastack.core.scales import compile_scale
from lorastack.testing.models import load_pipeline

ADAPTER = "subject"
value = st.floats(-2, 2, allow_nan=False, allow_subnormal=False, width=32)  # tests flush subnormals


@pytest.fixture(scope="module")
def reference(tiny_pipe_dir, tmp_path_factory):
    folder = tiny_pipe_dir("sd1")
    pipe = load_pipeline(folder)
    path = make_case(pipe, "kohya-locon", tmp_path_factory.mktemp("scales") / "subject.safetensors")
    pipe.load_lora_weights(str(path), adapter_name=ADAPTER)  # resnets and samplers too (LoCon)
    return pipe


def layout(unet) -> dict[str, list[int]]:
    return {
        "down": [i for i, block in enumerate(unet.down_blocks) if hasattr(block, "attentions")],
        "up": [i for i, block in enumerate(unet.up_blocks) if hasattr(block, "attentions")],
    }


@st.composite
def specs(draw, blocks: dict[str, list[int]], per_block: dict[str, int]):
    """The specifications diffusers accepts: a number, or down/mid/up by block with a number or one per layer."""
    unet = draw(st.one_of(value, st.fixed_dictionaries({}, optional={
        "mid": value,
        **{part: st.one_of(value, st.fixed_dictionaries({}, optional={
            f"block_{i}": st.one_of(value, st.lists(value, min_size=per_block[part], max_size=per_block[part]))
            for i in blocks[part]
        })) for part in ("down", "up")},
    })))  # fmt: skip
    spec = {"unet": unet}
    if draw(st.booleans()):
        spec["text_encoder"] = draw(value)
    return spec


def strengths(component) -> dict[str, float]:
    """Each LoRA module's strength as peft holds it."""
    found = {}
    for name, module in component.named_modules():
        if hasattr(module, "scaling") and ADAPTER in getattr(module, "scaling", {}):
            found[name] = module.scaling[ADAPTER] / (module.lora_alpha[ADAPTER] / module.r[ADAPTER])
    return found


def compared(name: str, with_attention: dict[str, list[int]]) -> bool:
    if name.startswith("mid_block."):
        return ".attentions." in name
    m = re.match(r"(down|up)_blocks\.(\d+)\.(\w+)\.", name)
    if m is None:
        return True  # what lies outside every block
    return m.group(3) not in ("downsamplers", "upsamplers") and int(m.group(2)) in with_attention[m.group(1)]


def test_block_scales_equal_diffusers_set_adapters(reference):
    unet = reference.unet
    blocks = layout(unet)
    per_block = {"down": unet.config.layers_per_block, "up": unet.config.layers_per_block + 1}
    seen = {"compared": 0}

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(specs(blocks, per_block))
    def check(spec):
        reference.set_adapters([ADAPTER], adapter_weights=[spec])
        ours = compile_scale(spec, "sd1")
        for component in ("unet", "text_encoder"):
            for name, theirs in strengths(getattr(reference, component)).items():
                if component == "unet" and not compared(name, blocks):
                    continue
                assert ours(f"{component}.{name}") == pytest.approx(theirs, rel=1e-6, abs=1e-7), (spec, name)
                seen["compared"] += 1

    check()
    assert seen["compared"] > 1000  # resnets, attention layers, the mid block and the text encoder were all reached
