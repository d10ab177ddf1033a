"""The model card (``README.md``) lorastack writes for a pushed adapter version."""

from __future__ import annotations

from .records import Version

DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
CARD_TAGS = ("lora", "text-to-image", "diffusers", "stable-diffusion", "lorastack")
DEFAULT_LICENSES = {"sd1": "creativeml-openrail-m", "sd2": "openrail++", "sdxl": "openrail++"}


def model_card(version: Version, repo_id: str, files: list[str], license: str | None = None) -> str:
    """The README.md: YAML the Hub reads (base_model, instance_prompt, tags, license) and how to use the adapter."""
    from huggingface_hub import ModelCardData

    prompt = ", ".join(version.trigger_words)
    tags = list(CARD_TAGS) + (["stable-diffusion-xl"] if version.family == "sdxl" else [])
    data = ModelCardData(
        base_model=version.base_model,
        license=license or version.metadata.get("modelspec.license") or DEFAULT_LICENSES.get(version.family or ""),
        library_name="diffusers",
        tags=tags,
        instance_prompt=prompt or None,
    )
    weight = DIFFUSERS_FILE if DIFFUSERS_FILE in files else next(f for f in files if f.endswith(".safetensors"))
    base = version.base_model or "BASE_MODEL"
    example = f"{prompt}, " if prompt else ""
    lines = [
        "---",
        data.to_yaml(),
        "---",
        "",
        f"# {version.name}",
        "",
        version.description or f"A LoRA adapter for {version.family or 'Stable Diffusion'}.",
        "",
        f"Trigger words: `{prompt}`." if prompt else "",
        "",
        "## Use it with diffusers",
        "",
        "```python",
        "from diffusers import AutoPipelineForText2Image",
        "",
        f'pipe = AutoPipelineForText2Image.from_pretrained("{base}")',
        f'pipe.load_lora_weights("{repo_id}", weight_name="{weight}")',
        f'image = pipe("{example}a photo").images[0]',
        "```",
        "",
        "## Use it with lorastack",
        "",
        "```bash",
        f"lorastack pull {repo_id}",
        f'lorastack generate "{example}a photo" --base {base} --lora {repo_id}:0.8',
        "```",
        "",
        f"Version {version.number} (Hub tag `v{version.number}`), pushed by lorastack. Files: "
        + ", ".join(f"`{f}`" for f in sorted(files) if f != "README.md")
        + ".",
        "",
    ]
    return "\n".join(lines)
