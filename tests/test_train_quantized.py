"""QLoRA-style training: the frozen denoiser quantized (``--quantize-base``), LoRA weights in fp32 beside it.

torchao's int8 weight-only layers run on the CPU, so SDXL and FLUX.1 train on them here; bitsandbytes' NF4/int8
need a GPU in diffusers, so those runs are checked where one is present and refused in one line elsewhere.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from lorastack.adapters import read_adapter
from lorastack.core.training.api import train

pytest.importorskip("torchao")


def _data(root):
    root.mkdir()
    for i, colour in enumerate([(220, 40, 40), (40, 200, 60)]):
        Image.new("RGB", (48, 48), colour).save(root / f"img{i}.png")
        (root / f"img{i}.txt").write_text(f"a square, colour {i}")
    return root


def _quantized_layers(model) -> dict[str, bytes]:
    from lorastack.core.quantized import quantized_kind, weight_bytes

    # peft leaves its (emptied) wrappers after training: the base layer's name is the wrapper's
    return {n.removesuffix(".base_layer"): weight_bytes(m) for n, m in model.named_modules()
            if quantized_kind(m) is not None}  # fmt: skip


@pytest.mark.parametrize("family", [pytest.param("sdxl", marks=pytest.mark.slow), "flux"])
def test_lora_trains_on_an_int8_base_and_leaves_its_weights_untouched(family, tiny_pipe_dir, tmp_path, lorastack_home):
    from lorastack.core import load_base
    from lorastack.core.quantized import load_quantized_denoiser

    base = tiny_pipe_dir(family)
    pipe = load_base(base)
    options = {"steps": 2, "resolution": 64 if family == "flux" else 32, "quantize_base": "torchao-int8",
               "learning_rate": 1e-3, "seed": 1}  # fmt: skip
    result = train("lora", base, _data(tmp_path / "data"), output=tmp_path / "run", options=options, progress=False,
                   pipe=pipe)  # fmt: skip
    slot = "transformer" if family == "flux" else "unet"
    denoiser = getattr(pipe, slot)
    after = _quantized_layers(denoiser)
    assert getattr(denoiser, "is_quantized", False) and len(after) >= 4  # the run trained on the quantized model
    fresh = load_quantized_denoiser(base, "torchao-int8", torch.float32, slot)
    assert after == _quantized_layers(fresh)  # the frozen int8 weights are byte for byte what loading gives
    adapter = read_adapter(result.adapter_path)
    assert adapter.layers and all(torch.isfinite(torch.tensor(result.losses)))
    assert max(float(layer.up.abs().max()) for layer in adapter.layers.values()) > 0  # B left its zero init
    assert adapter.metadata.raw["lorastack.recipe"].count('quantize_base = "torchao-int8"') == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: bitsandbytes runs there")
def test_bitsandbytes_bases_need_a_gpu_and_say_so_in_one_line(tiny_sdxl_dir, tmp_path, lorastack_home):
    from lorastack.errors import LorastackError

    with pytest.raises(LorastackError) as caught:
        train("lora", tiny_sdxl_dir, _data(tmp_path / "data"), output=tmp_path / "run", progress=False,
              options={"steps": 1, "resolution": 32, "quantize_base": "bnb-nf4"})  # fmt: skip
    message = str(caught.value)
    assert "bnb-nf4" in message and "GPU" in message and "\n" not in message


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bitsandbytes' NF4 layers load in diffusers on a GPU only")
def test_lora_trains_on_an_nf4_base_on_a_gpu(tiny_sdxl_dir, tmp_path, lorastack_home):
    pytest.importorskip("bitsandbytes")
    result = train("lora", tiny_sdxl_dir, _data(tmp_path / "data"), output=tmp_path / "run", progress=False,
                   options={"steps": 2, "resolution": 32, "quantize_base": "bnb-nf4", "mixed_precision": "bf16",
                            "device": "cuda"})  # fmt: skip
    assert max(float(layer.up.abs().max()) for layer in read_adapter(result.adapter_path).layers.values()) > 0
