"""What a GGUF single file holds (city96's ``flux1-dev-Q8_0.gguf``, ``sd3.5_large-Q4_0.gguf``), from its header.

A GGUF base is a FLUX.1 or SD3 transformer alone, quantized block by block; its text encoders and VAE come as
component files (``--text-encoder``, ``--text-encoder-2``, ``--vae``), exactly as for a transformer-only
``.safetensors`` file. :func:`read_gguf_parts` turns the header into the same :class:`~.checkpoint_parts.Part` record
the safetensors reader makes (logical shapes, no weight read), so the same checks run before anything loads; the
transformer itself is then built by diffusers' GGUF loader (:func:`~.quantized.load_gguf_denoiser`), which keeps the
quantized tensors quantized.
"""

from __future__ import annotations

from pathlib import Path

from .checkpoint_parts import BUNDLE_PREFIXES, KIND_NAMES, Part, classify
from .errors import BaseModelError

GGUF_SUFFIX = ".gguf"
#: GGML types stored as plain torch tensors (everything else must be a type diffusers dequantizes)
_PLAIN_TYPES = ("F32", "F16", "BF16")
_MAX_TENSORS = 100_000  # a transformer has a few thousand; a header claiming more is not one


def is_gguf(path: str | Path) -> bool:
    return Path(path).suffix.lower() == GGUF_SUFFIX


def read_gguf_parts(path: str | Path) -> list[Part]:
    """The transformer part of a GGUF file: its keys (a ``model.diffusion_model.`` prefix removed), their logical
    shapes (GGUF stores dimensions innermost first) and their GGML types."""
    import importlib.util

    path = Path(path)
    if importlib.util.find_spec("gguf") is None:
        raise BaseModelError(f"{path}: a .gguf base needs the 'gguf' package; pip install 'lorastack[quantized]'")
    from diffusers.quantizers.gguf.utils import SUPPORTED_GGUF_QUANT_TYPES
    from gguf import GGUFReader

    try:  # the reader memory-maps the file and checks every offset against its size
        reader = GGUFReader(str(path))
        tensors = list(reader.tensors)
    except Exception as e:  # gguf raises ValueError, struct.error, IndexError … for a damaged file
        raise BaseModelError(f"{path}: not a readable GGUF file ({type(e).__name__}: {str(e)[:120]})") from None
    if not tensors or len(tensors) > _MAX_TENSORS:
        raise BaseModelError(f"{path}: a GGUF file with {len(tensors)} tensors is not a diffusion transformer")
    supported = {t.name for t in SUPPORTED_GGUF_QUANT_TYPES} | set(_PLAIN_TYPES)
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    prefix = next((p for p, kind in BUNDLE_PREFIXES if kind == "denoiser"), "")
    for tensor in tensors:
        kind = tensor.tensor_type.name
        if kind not in supported:
            raise BaseModelError(
                f"{path}: {tensor.name} is stored as {kind}, which diffusers cannot dequantize; supported: "
                f"{', '.join(sorted(supported))}"
            )
        name = tensor.name.removeprefix(prefix)
        shapes[name] = tuple(int(n) for n in reversed(tensor.shape.tolist()))
        dtypes[name] = kind
    kind, layout = classify(shapes)
    if kind not in ("flux", "sd3"):
        raise BaseModelError(
            f"{path}: a GGUF file of {KIND_NAMES.get(kind, 'weights lorastack does not recognise')}; lorastack loads "
            "FLUX.1 and SD3 transformers from .gguf files"
        )
    return [Part(path, kind, "", shapes, dtypes, layout)]
