"""Adapter files in every format diffusers can load, made on a tiny pipeline the way real tools make them."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from lorastack.testing.adapters import make_kohya_lora, make_peft_lora, save_diffusers_lora

#: Formats diffusers loads itself, so it can serve as the oracle.
DIFFUSERS_LOADABLE = ("peft", "peft-nometa", "diffusers", "diffusers-old", "peft-dora", "kohya", "kohya-locon")


def components(pipe) -> tuple[str, ...]:
    return ("unet", "text_encoder") + (("text_encoder_2",) if hasattr(pipe, "text_encoder_2") else ())


def make_case(pipe, case: str, path: Path, seed: int = 1) -> Path:
    comps = components(pipe)
    if case in ("peft", "peft-nometa", "diffusers", "peft-dora"):
        # diffusers mis-keys text-encoder DoRA magnitudes in files it saves itself, so the oracle case is UNet-only
        comps = ("unet",) if case == "peft-dora" else comps
        parts = make_peft_lora(pipe, comps, rank=4, alpha=8.0, seed=seed, use_dora=case == "peft-dora")
        style = "diffusers" if case == "diffusers" else "peft"
        return save_diffusers_lora(pipe, path, parts, with_metadata=case != "peft-nometa", style=style)
    if case == "diffusers-old":
        # diffusers < 0.21 attention-processor keys: "<attn>.processor.to_q_lora.down.weight" (no alpha)
        _, state = make_peft_lora(pipe, ("unet",), rank=4, alpha=4.0, seed=seed)["unet"]
        old = {}
        for key, value in state.items():
            module, ab = key.rsplit(".lora_", 1)
            attn, proj = (
                (module[: -len(".to_out.0")], "to_out") if module.endswith("to_out.0") else module.rsplit(".", 1)
            )
            old[f"unet.{attn}.processor.{proj}_lora.{'down' if ab.startswith('A') else 'up'}.weight"] = value
        save_file(old, str(path))
        return path
    if case in ("kohya", "kohya-locon"):
        save_file(make_kohya_lora(pipe, comps, rank=4, alpha=2.0, seed=seed, conv=case == "kohya-locon"), str(path))
        return path
    raise ValueError(case)
