"""GGUF single files from a pipeline's denoiser, the way city96's Flux files are made (Q8_0 where a row splits
into 32-value blocks, F32 elsewhere), for tests and dry runs on tiny models."""

from __future__ import annotations

from pathlib import Path

import torch


def save_gguf(state: dict[str, torch.Tensor], path: str | Path, arch: str = "flux") -> tuple[Path, int]:
    """Write ``state`` as a GGUF file; matrices whose rows split into 32-value blocks are stored as Q8_0.
    Returns the path and how many tensors were quantized."""
    import gguf

    path = Path(path)
    writer = gguf.GGUFWriter(str(path), arch)
    quantized = 0
    for key, value in state.items():
        array = value.detach().float().cpu().numpy()
        if value.ndim == 2 and value.shape[1] % 32 == 0:
            q = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(key, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            quantized += 1
        else:
            writer.add_tensor(key, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, quantized
