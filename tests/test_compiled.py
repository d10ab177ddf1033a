"""A compiled denoiser: switching and rescaling adapters (merged and bypassed, UNet and text encoder) recompiles
nothing, and the compiled outputs are the eager ones."""

import pytest
import torch
from adapter_cases import make_case
from bypass_helpers import sd_outputs
from stack_helpers import lycoris_adapter

from lorastack.adapters import LoRALayer, read_adapter
from lorastack.core.bypass import Bypass
from lorastack.core.compiled import compile_counts, compile_denoiser
from lorastack.core.errors import ScaleError
from lorastack.core.stack import AdapterStack
from lorastack.testing.models import load_pipeline


def _switches(names):
    """20 stacks: switches among the adapters, pairs, rescales, and nothing at all."""
    out = []
    for i in range(20):
        a, b = names[i % len(names)], names[(i + 1) % len(names)]
        out.append({a: 0.3 + 0.1 * (i % 7)} if i % 3 else {a: 0.5, b: -0.4 + 0.05 * i})
    out[7] = {}
    return out


@pytest.mark.slow  # dynamo traces the tiny UNet for a minute or two on a CPU
@pytest.mark.parametrize("mode", ["bypass", "merge"])
def test_twenty_switches_and_rescales_recompile_nothing(tiny_sd1_dir, tmp_path, mode):
    torch._dynamo.reset()
    pipe = load_pipeline(tiny_sd1_dir)
    adapters = {
        "peft": read_adapter(make_case(pipe, "peft", tmp_path / "peft.safetensors", seed=1)),
        "locon": read_adapter(make_case(pipe, "kohya-locon", tmp_path / "locon.safetensors", seed=2)),
        "lyco": lycoris_adapter(pipe, seed=3),
    }
    stack = AdapterStack(pipe, mode=mode)
    for name, adapter in adapters.items():
        stack.load(name, adapter)
    stacks = _switches(list(adapters))
    eager = []
    for scales in stacks[:3]:
        stack.activate(scales)
        eager.append(sd_outputs(pipe))
    stack.deactivate()
    result = compile_denoiser(stack, backend="eager", max_rank=16)
    assert (result.reserved if mode == "bypass" else result.merged) and stack.bypass.compiled
    stack.activate(stacks[0])
    first = sd_outputs(pipe)  # the one compilation
    counts = compile_counts()
    assert counts["graphs"] >= 1
    for i, scales in enumerate(stacks):
        stack.activate(scales)
        out = sd_outputs(pipe)
        if i < 3:
            for got, want in zip(out, eager[i], strict=True):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert compile_counts() == counts  # 0 recompilations over 20 switches and rescales
    assert stack.bypass.reshaped == 0
    torch.testing.assert_close(first[1], eager[0][1], rtol=1e-4, atol=1e-4)


def test_bad_compile_settings_are_one_line(tiny_sd1_pipe):
    stack = AdapterStack(tiny_sd1_pipe)
    with pytest.raises(ScaleError, match="backend 'tvm' is not one of inductor, aot_eager, eager"):
        compile_denoiser(stack, backend="tvm")
    with pytest.raises(ScaleError, match="max rank 0 is not a whole number from 1 to 4096"):
        compile_denoiser(stack, max_rank=0)


def test_fixed_buffers_switch_a_compiled_layer_without_recompiling():
    """The mechanism on one compiled layer (fast enough for every run): hook and buffers reserved before compiling,
    then LoRAs of other ranks, two at once, rescaled, removed: values change, the graph does not."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.GELU())
    layer = model[0]
    bypass = Bypass()
    bypass.reserve("unet.l", layer, (24, 16), "cpu", torch.float32, capacity=8, dense=False)
    model.compile(backend="eager")
    x = torch.randn(4, 16, generator=g)
    loras = [LoRALayer(torch.randn(r, 16, generator=g), torch.randn(24, r, generator=g), alpha=2.0) for r in (2, 4, 3)]
    model(x)
    counts = compile_counts()
    for i in range(20):
        terms = [(0.1 * (i % 5), loras[i % 3])] + ([(-0.5, loras[(i + 1) % 3])] if i % 2 else [])
        bypass.write("unet.l", layer, (24, 16), "cpu", torch.float32, terms, lambda layer: layer.delta())
        want = layer.weight + sum(s * lora.delta() for s, lora in terms)
        torch.testing.assert_close(model(x), torch.nn.functional.gelu(x @ want.T + layer.bias), rtol=1e-5, atol=1e-5)
    bypass.write("unet.l", layer, (24, 16), "cpu", torch.float32, [], None)
    torch.testing.assert_close(model(x), torch.nn.functional.gelu(layer(x)))
    assert compile_counts() == counts and bypass.reshaped == 0
