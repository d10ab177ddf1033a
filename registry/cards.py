"""The model card (``README.md``) lorastack writes for a pushed adapter version.

Every value in a card can come from a downloaded file (adapter metadata, a pulled manifest), so none is pasted in
as it is: the YAML is dumped by huggingface_hub, code snippets get quoted literals (a Python string literal, a shell
word) and only values that are valid Hub ids, prose is escaped for Markdown and HTML.
"""

from __future__ import annotations

import html
import json
import re
import shlex

from .records import Version

DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
CARD_TAGS = ("lora", "text-to-image", "diffusers", "lorastack")
#: The Hub's tags for each family (what its filters and the base model's "adapters" tab go by).
FAMILY_TAGS = {
    "sd1": ("stable-diffusion",),
    "sd2": ("stable-diffusion",),
    "sdxl": ("stable-diffusion", "stable-diffusion-xl"),
    "flux": ("flux", "flux-diffusers"),
    "sd3": ("sd3", "sd3-diffusers", "stable-diffusion"),
}
#: Licenses of the families' base models (an adapter inherits its base's terms unless it says otherwise).
DEFAULT_LICENSES = {"sd1": "creativeml-openrail-m", "sd2": "openrail++", "sdxl": "openrail++"}
#: Bases under their makers' own licenses: the Hub's "other" with the license's name, by ModelSpec architecture
#: (what lorastack's trainer writes and most Flux trainers do); FLUX.1 schnell is Apache 2.0.
ARCHITECTURE_LICENSES = {
    "flux-1-dev": ("other", "flux-1-dev-non-commercial-license"),
    "flux-1-schnell": ("apache-2.0", None),
    "stable-diffusion-v3": ("other", "stabilityai-ai-community"),
}
FAMILY_WORDS = {"sd1": "Stable Diffusion 1.x", "sd2": "Stable Diffusion 2.x", "sdxl": "SDXL", "flux": "FLUX.1",
                "sd3": "Stable Diffusion 3.x"}  # fmt: skip
#: The shape of the Hub's license ids (``openrail++``, ``apache-2.0``, ``cc-by-nc-4.0``, ``other``).
LICENSE_ID = re.compile(r"[a-z0-9][a-z0-9.+-]{0,63}")
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~>-])")


def hub_id(value: str | None) -> str | None:
    """``value`` if it is a valid Hub repo id (what ``base_model`` must be), else ``None``."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(value, str) or value.count("/") > 1 or len(value) > 96:
        return None
    try:
        validate_repo_id(value)
    except HFValidationError:
        return None
    return value


def prose(text: str) -> str:
    """Untrusted text as inert Markdown: HTML escaped, Markdown syntax escaped, on one line."""
    flat = " ".join(str(text).split())
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(flat, quote=False))


def model_card(version: Version, repo_id: str, files: list[str], license: str | None = None, scores=None) -> str:
    """The README.md: YAML the Hub reads (base_model, instance_prompt, tags, license) and how to use the adapter;
    with ``scores`` (``registry.scores.StoredScores``) an evaluation section."""
    from huggingface_hub import ModelCardData

    prompt = ", ".join(version.trigger_words)
    base = hub_id(version.base_model)
    tags = [*CARD_TAGS, *FAMILY_TAGS.get(version.family or "", ("stable-diffusion",))]
    license_name = None
    chosen = license or version.metadata.get("modelspec.license") or DEFAULT_LICENSES.get(version.family or "")
    if not chosen:
        architecture = str(version.metadata.get("modelspec.architecture", ""))
        for prefix, (known, name) in ARCHITECTURE_LICENSES.items():
            if architecture.startswith(prefix):
                chosen, license_name = known, name
                break
    data = ModelCardData(
        base_model=base,
        license=chosen if chosen and LICENSE_ID.fullmatch(chosen) else ("other" if chosen else None),
        **({"license_name": license_name} if license_name else {}),
        library_name="diffusers",
        tags=tags,
        instance_prompt=prompt or None,
    )
    weight = DIFFUSERS_FILE if DIFFUSERS_FILE in files else next(f for f in files if f.endswith(".safetensors"))
    example = f"{prompt}, a photo" if prompt else "a photo"
    base_word = base or "BASE_MODEL"
    lines = [
        "---",
        data.to_yaml(),
        "---",
        "",
        f"# {version.name}",
        "",
        prose(version.description)
        if version.description
        else f"A LoRA adapter for {FAMILY_WORDS.get(version.family or '', 'Stable Diffusion')}.",
        "",
        f"Trigger words: {prose(prompt)}" if prompt else "",
        "",
        "## Use it with diffusers",
        "",
        "```python",
        "from diffusers import AutoPipelineForText2Image",
        "",
        f"pipe = AutoPipelineForText2Image.from_pretrained({json.dumps(base_word)})",
        f"pipe.load_lora_weights({json.dumps(repo_id)}, weight_name={json.dumps(weight)})",
        f"image = pipe({json.dumps(example)}).images[0]",
        "```",
        "",
        "## Use it with lorastack",
        "",
        "```bash",
        f"lorastack pull {shlex.quote(repo_id)}",
        f"lorastack generate {shlex.quote(example)} --base {shlex.quote(base_word)} "
        f"--lora {shlex.quote(repo_id + ':0.8')}",
        "```",
        "",
        f"Version {version.number} (Hub tag `v{version.number}`), pushed by lorastack. Files: "
        + ", ".join(f"`{f}`" for f in sorted(files) if f != "README.md")
        + ".",
        "",
    ]
    if scores is not None and scores.rows:
        lines[lines.index("## Use it with diffusers") : lines.index("## Use it with diffusers")] = score_lines(scores)
    if version.base_model and not base:
        lines.insert(lines.index("## Use it with diffusers"), f"Base model (as recorded): {prose(version.base_model)}")
        lines.insert(lines.index("## Use it with diffusers"), "")
    return "\n".join(lines)


def score_lines(scores) -> list[str]:
    """The card's evaluation section: a table of each metric at each weight (0 is the base), the recommended
    weight, and how the scores were measured."""
    weights = sorted({r["weight"] for r in scores.rows})
    metrics = sorted({(r["evaluator"], r["metric"], r["higher_is_better"]) for r in scores.rows})
    cell = {(r["evaluator"], r["metric"], r["weight"]): r for r in scores.rows}
    head = "| Metric | " + " | ".join("base" if w == 0 else f"weight {w:g}" for w in weights) + " |"
    out = ["## Evaluation", "", head, "|---|" + "---|" * len(weights)]
    for evaluator, metric, up in metrics:
        row = [cell.get((evaluator, metric, w)) for w in weights]
        values = " | ".join(f"{r['mean']:.3f} ± {r['std']:.3f}" if r else "" for r in row)
        out.append(f"| {evaluator}.{metric} ({'higher' if up else 'lower'} is better) | {values} |")
    protocol = scores.protocol
    prompts = protocol.get("prompts") or []
    how = f"{len(prompts)} prompts x {len(protocol.get('seeds') or [])} seeds" if prompts else "see lorastack show"
    weight = "none" if scores.recommended_weight is None else f"{scores.recommended_weight:g}"
    out += ["", f"Recommended weight: {weight}. Measured by lorastack ({prose(scores.source)}, {prose(how)}).", ""]
    return out
