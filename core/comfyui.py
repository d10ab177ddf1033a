"""Recipes from ComfyUI PNGs: the ``prompt`` chunk (the API graph: ``{id: {"class_type", "inputs"}}``, inputs
linking to other nodes as ``[id, slot]``) or, when it is absent, the ``workflow`` chunk (the UI graph: ``nodes``
with ``widgets_values`` and ``links``).

The sampler (``KSampler``/``KSamplerAdvanced``) is the root: its ``model`` input is followed back through
``LoraLoader``/``LoraLoaderModelOnly`` nodes to the ``CheckpointLoaderSimple``, its ``positive``/``negative`` to
``CLIPTextEncode`` texts, its ``latent_image`` to the size. The graph is untrusted: a node count bound, a walk
bound and a visited set (a cycle ends the walk), and every value's type checked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import RecipeError
from .recipe_import import ImportedAdapter, ImportedRecipe, check_number, check_scale
from .scales import brief

MAX_NODES = 5000
MAX_WALK = 1000
LORA_NODES = ("LoraLoader", "LoraLoaderModelOnly", "LoraLoader|pysssss")
#: Custom nodes that load several LoRAs at once, read from the API graph (``prompt``): rgthree's Power Lora Loader
#: (``lora_N: {"on", "lora", "strength", "strengthTwo"}``) and ComfyUI-Lora-Manager's loader (``loras: {"__value__":
#: [{"name", "strength", "clipStrength", "active"}]}``).
MULTI_LORA_NODES = ("Power Lora Loader (rgthree)", "Lora Loader (LoraManager)")
MAX_LORAS_PER_NODE = 100
SAMPLERS = ("KSampler", "KSamplerAdvanced")
# widgets_values positions in the UI graph (ComfyUI's own node definitions)
_WIDGETS = {
    "KSampler": ("seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise"),
    "KSamplerAdvanced": ("add_noise", "noise_seed", "control_after_generate", "steps", "cfg", "sampler_name",
                         "scheduler", "start_at_step", "end_at_step", "return_with_leftover_noise"),
    "LoraLoader": ("lora_name", "strength_model", "strength_clip"),
    "LoraLoaderModelOnly": ("lora_name", "strength_model"),
    "CheckpointLoaderSimple": ("ckpt_name",),
    "CLIPTextEncode": ("text",),
    "EmptyLatentImage": ("width", "height", "batch_size"),
}  # fmt: skip
#: ComfyUI sampler_name → lorastack scheduler (scheduler "karras" adds _karras where lorastack has it)
_SAMPLERS = {"euler": "euler", "euler_ancestral": "euler_a", "heun": "heun", "ddim": "ddim", "ddpm": "ddpm",
             "dpmpp_2m": "dpm++2m", "uni_pc": "unipc", "uni_pc_bh2": "unipc"}  # fmt: skip


def _loads(text: str, key: str, path) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise RecipeError(f"{path}: its ComfyUI {key} chunk is not valid JSON ({brief(str(e))})") from None


def api_graph(chunks: dict[str, str], path) -> dict[str, dict[str, Any]]:
    """The API graph ``{id: {"class_type", "inputs"}}``, from ``prompt`` or converted from ``workflow``."""
    if "prompt" in chunks:
        graph = _loads(chunks["prompt"], "prompt", path)
        if not isinstance(graph, dict) or len(graph) > MAX_NODES:
            raise RecipeError(f"{path}: its ComfyUI prompt is not an object of at most {MAX_NODES} nodes")
        return {str(k): v for k, v in graph.items() if isinstance(v, dict) and isinstance(v.get("inputs"), dict)}
    workflow = _loads(chunks["workflow"], "workflow", path)
    nodes = workflow.get("nodes") if isinstance(workflow, dict) else None
    links = workflow.get("links") if isinstance(workflow, dict) else None
    if not isinstance(nodes, list) or len(nodes) > MAX_NODES or not isinstance(links, list | type(None)):
        raise RecipeError(f"{path}: its ComfyUI workflow has no list of at most {MAX_NODES} nodes")
    sources = {}  # link id → [from node id, slot]
    for link in (links or [])[: MAX_NODES * 8]:
        if isinstance(link, list) and len(link) >= 4 and all(isinstance(x, int) for x in link[:4]):
            sources[link[0]] = [str(link[1]), link[2]]
    graph = {}
    for node in nodes:
        if not isinstance(node, dict) or not isinstance(node.get("type"), str):
            continue
        inputs: dict[str, Any] = {}
        values = node.get("widgets_values")
        names = _WIDGETS.get(node["type"], ())
        if isinstance(values, list):
            inputs.update(zip(names, values, strict=False))
        for slot in node.get("inputs") or []:
            if isinstance(slot, dict) and isinstance(slot.get("name"), str) and slot.get("link") in sources:
                inputs[slot["name"]] = sources[slot["link"]]
        graph[str(node.get("id"))] = {"class_type": node["type"], "inputs": inputs}
    return graph


def _link(graph, value) -> tuple[str, dict] | None:
    if isinstance(value, list) and len(value) == 2 and str(value[0]) in graph:
        return str(value[0]), graph[str(value[0])]
    return None


def _text(graph, value, path) -> str:
    """A conditioning input's prompt: the CLIPTextEncode it links to (through nodes with one conditioning input)."""
    seen: set[str] = set()
    for _ in range(MAX_WALK):
        found = _link(graph, value)
        if found is None or found[0] in seen:
            return ""
        seen.add(found[0])
        node = found[1]
        text = node["inputs"].get("text")
        if node.get("class_type") == "CLIPTextEncode" and isinstance(text, str):
            return text
        value = next((v for k, v in node["inputs"].items() if k in ("conditioning", "conditioning_1")), None)
    return ""


def from_comfyui(chunks: dict[str, str], path: str | Path) -> ImportedRecipe:
    graph = api_graph(chunks, path)
    sampler = next((n for n in graph.values() if n.get("class_type") in SAMPLERS), None)
    if sampler is None:
        raise RecipeError(f"{path}: its ComfyUI graph has no KSampler node; lorastack reads KSampler workflows")
    inputs = sampler["inputs"]
    advanced = sampler["class_type"] == "KSamplerAdvanced"
    imported = ImportedRecipe("comfyui", _text(graph, inputs.get("positive"), path))
    imported.negative_prompt = _text(graph, inputs.get("negative"), path)
    seed = inputs.get("noise_seed" if advanced else "seed")
    if seed is not None and not isinstance(seed, list):
        imported.seed = check_number(seed, "seed", path, int, 0, 2**63 - 1)
    if inputs.get("steps") is not None and not isinstance(inputs["steps"], list):
        imported.steps = check_number(inputs["steps"], "steps", path, int, 1, 1000)
    if inputs.get("cfg") is not None and not isinstance(inputs["cfg"], list):
        imported.guidance = check_number(inputs["cfg"], "cfg", path, float, 0, 100)
    name, schedule = inputs.get("sampler_name"), inputs.get("scheduler")
    if isinstance(name, str):
        imported.sampler = f"{name} {schedule}" if isinstance(schedule, str) else name
        scheduler = _SAMPLERS.get(name)
        if scheduler == "dpm++2m" and schedule == "karras":
            scheduler = "dpm++2m_karras"
        imported.scheduler = scheduler
        if scheduler is None:
            imported.notes.append(f"sampler {brief(name)} has no lorastack scheduler; the base's own is used")
    latent = _link(graph, inputs.get("latent_image"))
    if latent is not None and latent[1].get("class_type") == "EmptyLatentImage":
        li = latent[1]["inputs"]
        if not isinstance(li.get("width"), list) and li.get("width") is not None:
            imported.width = check_number(li["width"], "width", path, int, 8, 8192)
        if not isinstance(li.get("height"), list) and li.get("height") is not None:
            imported.height = check_number(li["height"], "height", path, int, 8, 8192)
    # the model chain, sampler → LoRAs → checkpoint; a cycle or a chain past MAX_WALK nodes ends the walk
    value, seen, chain = inputs.get("model"), set(), []
    for _ in range(MAX_WALK):
        found = _link(graph, value)
        if found is None or found[0] in seen:
            break
        seen.add(found[0])
        node = found[1]
        kind, node_inputs = node.get("class_type"), node["inputs"]
        if kind in LORA_NODES:
            chain.append(_adapter(node_inputs, kind, path))
        elif kind in MULTI_LORA_NODES:
            chain.extend(reversed(_multi(node_inputs, kind, path)))  # reversed back with the chain below
        elif kind == "CheckpointLoaderSimple" and isinstance(node_inputs.get("ckpt_name"), str):
            imported.model = node_inputs["ckpt_name"][:500]
            break
        value = node_inputs.get("model")
    imported.adapters = [a for a in reversed(chain) if a is not None]  # in the order they were applied
    return imported


def _multi(inputs: dict[str, Any], kind: str, path) -> list[ImportedAdapter | None]:
    """The LoRAs a multi-LoRA node applies that are switched on, in its order."""
    if kind == "Power Lora Loader (rgthree)":
        entries = [
            (v.get("lora"), v.get("strength", 1.0), v.get("strengthTwo"))
            for k, v in sorted(inputs.items(), key=lambda kv: _slot(kv[0]))
            if k.lower().startswith("lora_") and isinstance(v, dict) and v.get("on", True) is True
        ]
    else:
        loras = inputs.get("loras")
        loras = loras.get("__value__") if isinstance(loras, dict) else loras
        entries = [
            (v.get("name"), v.get("strength", 1.0), v.get("clipStrength"))
            for v in (loras if isinstance(loras, list) else [])
            if isinstance(v, dict) and v.get("active", True) is True
        ]
    out = []
    for file, model, clip in entries[:MAX_LORAS_PER_NODE]:
        if isinstance(file, str) and file and not file.lower().endswith((".safetensors", ".ckpt", ".pt")):
            file += ".safetensors"  # the LoRA Manager names a LoRA by its stem
        fields = {"lora_name": file, "strength_model": model}
        if clip is not None:
            fields["strength_clip"] = clip
        out.append(_adapter(fields, "LoraLoader" if clip is not None else "LoraLoaderModelOnly", path, kind))
    return out


def _slot(key: str) -> tuple[int, str]:
    digits = key.rpartition("_")[2]
    return (int(digits), key) if digits.isdigit() and len(digits) < 6 else (10**6, key)


def _adapter(inputs: dict[str, Any], kind: str, path, node: str | None = None) -> ImportedAdapter | None:
    node = node or kind
    file = inputs.get("lora_name")
    if not isinstance(file, str) or not file or len(file) > 1000:
        return None
    model = check_scale(inputs.get("strength_model", 1.0), f"{node} strength_model", path)
    scale: Any = model
    if kind in ("LoraLoader", "LoraLoader|pysssss"):
        clip = check_scale(inputs.get("strength_clip", 1.0), f"{node} strength_clip", path)
        if clip != model:
            scale = {"unet": model, "text_encoder": clip}
    stem = Path(file.replace("\\", "/")).stem or "adapter"
    return ImportedAdapter(stem, scale, file=file)
