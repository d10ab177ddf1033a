"""Bypass mode: the same outputs as merging, for every layer kind, with the base weights never touched."""

import pytest
import torch
from adapter_cases import make_case
from bypass_helpers import flux_output, sd_outputs, tucker_locon
from stack_helpers import lycoris_adapter

from lorastack.adapters import parse_state_dict, read_adapter
from lorastack.adapters.slices import RowSliceLayer
from lorastack.core.errors import ScaleError
from lorastack.core.stack import AdapterStack
from lorastack.testing.models import load_pipeline
from lorastack.testing.transformer_adapters import make_original_lora, original_state_dict


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def sd1(tiny_pipe_dir, tmp_path_factory):
    pipe = load_pipeline(tiny_pipe_dir("sd1"))
    folder = tmp_path_factory.mktemp("bypass-adapters")
    adapters = {
        "lyco": lycoris_adapter(pipe, seed=3, every=2),  # LoHa, LoKr, DoRA, full, LoRA on UNet and text encoder
        "locon": read_adapter(make_case(pipe, "kohya-locon", folder / "locon.safetensors", seed=4)),
        "tucker": tucker_locon(pipe, seed=5),
    }
    return pipe, adapters


def test_bypass_equals_merge_for_every_layer_kind(sd1):
    pipe, adapters = sd1
    kinds = {layer.kind_label for a in adapters.values() for layer in a.layers.values()}
    assert {"lora", "locon", "loha", "lokr", "full", "lora+dora"} <= kinds
    assert any(getattr(layer, "mid", None) is not None for layer in adapters["tucker"].layers.values())
    base_te, base_unet = _weights(pipe.text_encoder), _weights(pipe.unet)
    scales = {"lyco": 0.7, "locon": -0.6, "tucker": 1.3}
    merge = AdapterStack(pipe, mode="merge")
    for name, adapter in adapters.items():
        merge.load(name, adapter)
    merge.activate(scales)
    merged = sd_outputs(pipe)
    merge.set_scale("locon", 0.4)
    merged_rescaled = sd_outputs(pipe)
    merge.deactivate()
    plain = sd_outputs(pipe)
    assert _same(_weights(pipe.unet), base_unet)

    bypass = AdapterStack(pipe, mode="bypass")
    for name, adapter in adapters.items():
        bypass.load(name, adapter)
    bypass.activate(scales)
    # every weight stays the base's, bit for bit, while the outputs are the merged ones
    assert _same(_weights(pipe.text_encoder), base_te) and _same(_weights(pipe.unet), base_unet)
    out = sd_outputs(pipe)
    for got, want, base in zip(out, merged, plain, strict=True):
        assert (want - base).abs().max() > 1e-2  # the adapters do change the outputs
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    bypass.set_scale("locon", 0.4)  # a rescale rewrites only that adapter's modules' factors
    assert bypass.last_changed == len(adapters["locon"].layers.keys() | set())
    for got, want in zip(sd_outputs(pipe), merged_rescaled, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    report = bypass.apply_report()
    assert report["mode"] == "bypass" and report["merge"] == 0 and report["bypass"] == len(report["layers"])
    bypass.deactivate()
    assert not bypass.bypass.active() and not any(m._forward_hooks for m in pipe.unet.modules())
    for got, want in zip(sd_outputs(pipe), plain, strict=True):
        assert torch.equal(got, want)


def test_one_fused_low_rank_path_per_layer(sd1):
    pipe, adapters = sd1
    stack = AdapterStack(pipe, mode="bypass")
    stack.load("locon", adapters["locon"])
    stack.load("again", adapters["locon"])
    stack.activate({"locon": 0.5, "again": 0.25})
    name = next(iter(adapters["locon"].layers))
    path = stack.bypass.paths[name]
    rank = adapters["locon"].layers[name].rank
    # two adapters on a module: one path of rank 2r (not two paths), no dense fallback for plain LoRA
    assert path.down.shape[0] == 2 * rank and path.dense is None
    assert sum(len(m._forward_hooks) for m in pipe.unet.modules()) == len(
        [m for m in adapters["locon"].layers if m.startswith("unet.")]
    )
    stack.deactivate()


def test_fused_qkv_slices_on_flux_bypass_equals_merge(tiny_flux_dir):
    pipe = load_pipeline(tiny_flux_dir)
    lora = parse_state_dict(original_state_dict(make_original_lora(pipe, "flux", rank=4, seed=1, std=0.05)))
    lokr = parse_state_dict(original_state_dict(make_original_lora(pipe, "flux", kind="lokr", seed=2, std=0.05)))
    assert any(isinstance(layer, RowSliceLayer) for layer in lokr.layers.values())  # LoKr on qkv / linear1
    base = flux_output(pipe)
    outputs = {}
    for mode in ("merge", "bypass"):
        stack = AdapterStack(pipe, mode=mode)
        stack.load("lora", lora)
        stack.load("lokr", lokr)
        stack.activate({"lora": 0.8, "lokr": 0.6})
        outputs[mode] = flux_output(pipe)
        stack.deactivate()
    assert (outputs["merge"] - base).abs().max() > 1e-2
    torch.testing.assert_close(outputs["bypass"], outputs["merge"], rtol=1e-4, atol=1e-4)
    assert torch.equal(flux_output(pipe), base)


def test_auto_merges_plain_layers_and_a_bad_mode_is_refused(sd1):
    pipe, adapters = sd1
    stack = AdapterStack(pipe)  # auto
    stack.load("locon", adapters["locon"])
    report = stack.apply_report()
    assert report["mode"] == "auto" and report["bypass"] == 0 and report["merge"] == len(adapters["locon"].layers)
    assert {v["why"] for v in report["layers"].values()} == {"a plain weight"}
    with pytest.raises(ScaleError, match="'fast' is not one of auto, merge, bypass"):
        AdapterStack(pipe, mode="fast")
