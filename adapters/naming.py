"""Module naming: canonical diffusers module paths and the flattened names kohya/A1111/ComfyUI use.

Canonical names are ``<component>.<diffusers module path>``, component one of :data:`COMPONENTS`. Text-encoder
paths always keep the ``text_model.`` level (``text_encoder.text_model.encoder.layers.0.self_attn.q_proj``): every
file in the wild spells them that way, and transformers 5 dropped the level only from ``CLIPTextModel``, so the
runtime resolves it against whichever model it holds.

kohya flattens module paths by replacing dots with underscores (``lora_unet_down_blocks_0_attentions_0_…``), and
for SDXL it uses the original Stability ("SGM") block names (``lora_unet_input_blocks_4_1_…``). Flattening loses
the word boundaries, so :func:`split_flat` restores them from a vocabulary of every path segment used by the SD
UNets and CLIP text encoders (a test checks the vocabulary against the full-size models).
"""

from __future__ import annotations

from collections.abc import Container
from functools import lru_cache

from .families import ALL_COMPONENTS

COMPONENTS = ALL_COMPONENTS

#: kohya name prefix → component, longest first.
KOHYA_PREFIXES = (
    ("lora_unet_", "unet"),
    ("lora_te1_", "text_encoder"),
    ("lora_te2_", "text_encoder_2"),
    ("lora_te_", "text_encoder"),
)

UNET_WORDS = frozenset(
    "down_blocks up_blocks mid_block attentions resnets transformer_blocks downsamplers upsamplers attn1 attn2 "
    "to_q to_k to_v to_out ff net proj proj_in proj_out norm norm1 norm2 norm3 conv conv1 conv2 conv_shortcut "
    "time_emb_proj conv_in conv_out conv_norm_out time_embedding linear_1 linear_2 add_embedding "
    "class_embedding add_k_proj add_v_proj time_proj add_time_proj act conv_act nonlinearity dropout".split()
)
CLIP_WORDS = frozenset(
    "text_model embeddings token_embedding position_embedding encoder layers self_attn q_proj k_proj v_proj "
    "out_proj mlp fc1 fc2 layer_norm1 layer_norm2 final_layer_norm text_projection activation_fn".split()
)
SGM_WORDS = frozenset(
    "input_blocks middle_block output_blocks in_layers out_layers emb_layers skip_connection op time_embed "
    "label_emb out".split()
)
VOCABULARY = UNET_WORDS | CLIP_WORDS | SGM_WORDS
_MAX_WORD_PARTS = max(w.count("_") + 1 for w in VOCABULARY)

SGM_TOPS = frozenset({"input_blocks", "middle_block", "output_blocks", "time_embed", "label_emb", "out"})
_SGM_RESNET = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_DIFFUSERS_RESNET = {v: k for k, v in _SGM_RESNET.items()}
_SGM_TOP = {
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "label_emb.0.0": "add_embedding.linear_1",
    "label_emb.0.2": "add_embedding.linear_2",
    "out.0": "conv_norm_out",
    "out.2": "conv_out",
    "input_blocks.0.0": "conv_in",
}
_DIFFUSERS_TOP = {v: k for k, v in _SGM_TOP.items()}

#: SD UNets (1.x, 2.x, XL) all use two resnets per down block; the SGM block index arithmetic depends on it.
DEFAULT_LAYERS_PER_BLOCK = 2


#: Longest flattened module path considered (the longest real one is under 100 characters).
MAX_FLAT_LENGTH = 512


@lru_cache(maxsize=65536)
def split_flat(flat: str) -> tuple[str, ...] | None:
    """Split an underscore-flattened module path into its segments, or ``None`` if it is not one.

    >>> split_flat("down_blocks_0_attentions_1_transformer_blocks_0_attn1_to_out_0")
    ('down_blocks', '0', 'attentions', '1', 'transformer_blocks', '0', 'attn1', 'to_out', '0')

    Words are tried longest first, and a split that leaves an unparsable rest is undone. The parse of each rest
    is computed once, from the end (names come from files: a name that splits many ways costs linear time, and a
    long one no recursion).
    """
    if len(flat) > MAX_FLAT_LENGTH:
        return None
    parts = flat.split("_")
    n = len(parts)
    # rest[i]: the segments of parts[i:] as a linked list (word, rest index), or None when they do not parse
    rest: list[tuple[str, int] | None] = [None] * (n + 1)
    ok = [False] * (n + 1)
    ok[n] = True
    for i in range(n - 1, -1, -1):
        if parts[i].isdigit():
            if ok[i + 1]:
                rest[i], ok[i] = (parts[i], i + 1), True
            continue
        for j in range(min(n, i + _MAX_WORD_PARTS), i, -1):  # longest word first
            if ok[j]:
                word = "_".join(parts[i:j])
                if word in VOCABULARY:
                    rest[i], ok[i] = (word, j), True
                    break
    if not ok[0]:
        return None
    segments, i = [], 0
    while i < n:
        word, i = rest[i]
        segments.append(word)
    return tuple(segments)


def normalize_text_encoder_path(path: str) -> str:
    """Put the ``text_model.`` level back on CLIP paths written without it (transformers 5 ``CLIPTextModel``).

    T5 paths (``encoder.block.0.layer.0.SelfAttention.q``) have no such level and stay as they are."""
    if path.startswith(("encoder.layers.", "embeddings.", "final_layer_norm")):
        return "text_model." + path
    return path


def sgm_to_diffusers(path: str, layers_per_block: int = DEFAULT_LAYERS_PER_BLOCK) -> str | None:
    """Map an SGM/LDM UNet module path (``input_blocks.4.1.proj_in``) to its diffusers path, or ``None``."""
    for sgm, diffusers in _SGM_TOP.items():
        if path == sgm or path.startswith(sgm + "."):
            return diffusers + path[len(sgm) :]
    parts = path.split(".")
    try:
        top, nums = parts[0], parts[1:3]
        if top == "middle_block":
            sub, rest = int(parts[1]), ".".join(parts[2:])
            if sub == 1:
                return _join("mid_block.attentions.0", rest)
            if sub in (0, 2):
                return _resnet(f"mid_block.resnets.{sub // 2}", rest)
            return None
        k, sub, rest = int(nums[0]), int(nums[1]), ".".join(parts[3:])
    except (IndexError, ValueError):
        return None
    n = layers_per_block + 1
    if top == "input_blocks" and k > 0:
        i, j = divmod(k - 1, n)
        if j == layers_per_block:
            return f"down_blocks.{i}.downsamplers.0.conv" if (sub, rest) == (0, "op") else None
        if sub == 0:
            return _resnet(f"down_blocks.{i}.resnets.{j}", rest)
        return _join(f"down_blocks.{i}.attentions.{j}", rest) if sub == 1 else None
    if top == "output_blocks":
        i, j = divmod(k, n)
        if sub == 0:
            return _resnet(f"up_blocks.{i}.resnets.{j}", rest)
        if rest == "conv" and (sub == 2 or (sub == 1 and j == layers_per_block)):
            return f"up_blocks.{i}.upsamplers.0.conv"
        return _join(f"up_blocks.{i}.attentions.{j}", rest) if sub == 1 else None
    return None


def diffusers_to_sgm(
    path: str, layers_per_block: int = DEFAULT_LAYERS_PER_BLOCK, up_blocks_with_attention: Container[int] | None = None
) -> str | None:
    """Inverse of :func:`sgm_to_diffusers`.

    ``up_blocks_with_attention``: indices of the up blocks that have attention, which moves their upsampler from
    sub-index 1 to 2 (SD1.x: ``{1, 2, 3}``). ``None`` means all of them, true of every SDXL up block that upsamples.
    """
    for diffusers, sgm in _DIFFUSERS_TOP.items():
        if path == diffusers or path.startswith(diffusers + "."):
            return sgm + path[len(diffusers) :]
    parts = path.split(".")
    n = layers_per_block + 1
    try:
        if parts[0] == "mid_block":
            kind, idx, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            if kind == "attentions" and idx == 0:
                return _join("middle_block.1", rest)
            if kind == "resnets" and idx in (0, 1):
                return _join(f"middle_block.{idx * 2}", _DIFFUSERS_RESNET.get(rest, rest))
            return None
        block, i, kind, j, rest = parts[0], int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
    except (IndexError, ValueError):
        return None
    if block == "down_blocks":
        if kind == "downsamplers" and rest == "conv":
            return f"input_blocks.{n * (i + 1)}.0.op"
        k = n * i + j + 1
    elif block == "up_blocks":
        if kind == "upsamplers" and rest == "conv":
            attention = up_blocks_with_attention is None or i in up_blocks_with_attention
            return f"output_blocks.{n * i + layers_per_block}.{2 if attention else 1}.conv"
        k = n * i + j
    else:
        return None
    prefix = "input_blocks" if block == "down_blocks" else "output_blocks"
    if kind == "resnets":
        return _join(f"{prefix}.{k}.0", _DIFFUSERS_RESNET.get(rest, rest))
    if kind == "attentions":
        return _join(f"{prefix}.{k}.1", rest)
    return None


def _join(prefix: str, rest: str) -> str:
    return f"{prefix}.{rest}" if rest else prefix


def _resnet(prefix: str, rest: str) -> str | None:
    if rest not in _SGM_RESNET:
        return None
    return f"{prefix}.{_SGM_RESNET[rest]}"


def kohya_to_canonical(lora_name: str, layers_per_block: int = DEFAULT_LAYERS_PER_BLOCK) -> str | None:
    """``lora_unet_input_blocks_4_1_proj_in`` → ``unet.down_blocks.1.attentions.0.proj_in``; ``None`` if unknown."""
    for prefix, component in KOHYA_PREFIXES:  # noqa: B007 (component is used after the loop)
        if lora_name.startswith(prefix):
            break
    else:
        return None
    segments = split_flat(lora_name[len(prefix) :])
    if not segments:
        return None
    path: str | None = ".".join(segments)
    if component == "unet":
        if segments[0] in SGM_TOPS:
            path = sgm_to_diffusers(path, layers_per_block)
        elif not UNET_WORDS.issuperset(s for s in segments if not s.isdigit()):
            return None
    else:
        if not CLIP_WORDS.issuperset(s for s in segments if not s.isdigit()):
            return None
        path = normalize_text_encoder_path(path)
    return f"{component}.{path}" if path else None


def canonical_to_kohya(
    name: str, sgm: bool = False, te_numbered: bool = False, layers_per_block: int = DEFAULT_LAYERS_PER_BLOCK
) -> str:
    """Canonical module name → kohya layer name (without the ``.lora_down.weight`` suffix).

    ``sgm``: spell UNet paths with SGM block names, as kohya's SDXL trainer does. ``te_numbered``: use
    ``lora_te1_``/``lora_te2_`` (SDXL) instead of ``lora_te_``.
    """
    component, _, path = name.partition(".")
    if component == "unet":
        if sgm:
            mapped = diffusers_to_sgm(path, layers_per_block)
            if mapped is not None:
                path = mapped
        return "lora_unet_" + path.replace(".", "_")
    if component not in ("text_encoder", "text_encoder_2"):
        raise ValueError(f"Unknown component {component!r} in {name!r}; expected one of {', '.join(COMPONENTS)}")
    path = normalize_text_encoder_path(path)
    if component == "text_encoder_2":
        return "lora_te2_" + path.replace(".", "_")
    return ("lora_te1_" if te_numbered else "lora_te_") + path.replace(".", "_")


def split_component(name: str) -> tuple[str, str]:
    """``unet.down_blocks.0…`` → ``("unet", "down_blocks.0…")``."""
    component, _, path = name.partition(".")
    return component, path
