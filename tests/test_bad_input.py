"""Bad files get a typed error with a one-line message naming the file; the CLI exits non-zero, no traceback."""

import json
import os
import struct
import subprocess
import sys

import pytest
import torch
from cli_helpers import run_cli
from safetensors.torch import save_file

from lorastack.adapters import (
    AdapterFileError,
    InvalidAdapterError,
    NotAnAdapterError,
    UnsupportedAdapterError,
    read_adapter,
)

LORA = {
    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(2, 8),
    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.randn(8, 2),
    "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(1.0),
}


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _valid(path):
    save_file(LORA, str(path))
    return path


def _rewrite_header(path, edit):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    new = json.dumps(edit(header)).encode()
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])
    return path


def _first_tensor(h):
    return next(k for k in h if k != "__metadata__")


CASES = {
    "empty": (lambda p: _write(p, b""), AdapterFileError, "empty"),
    "seven bytes": (lambda p: _write(p, b"\x01" * 7), AdapterFileError, "truncated"),
    "truncated data": (
        lambda p: _write(p, _valid(p).read_bytes()[:-20]),
        AdapterFileError,
        "data section|truncated",
    ),
    "header past end": (
        lambda p: _write(p, struct.pack("<Q", 10_000) + b"{}"),
        AdapterFileError,
        "past the end",
    ),
    "header not json": (
        lambda p: _write(p, struct.pack("<Q", 12) + b"not json at!"),
        AdapterFileError,
        "not valid JSON",
    ),
    "header not an object": (
        lambda p: _write(p, struct.pack("<Q", 2) + b"[]"),
        AdapterFileError,
        "not a JSON object",
    ),
    "unknown dtype": (
        lambda p: _rewrite_header(
            _valid(p), lambda h: {**h, _first_tensor(h): {**h[_first_tensor(h)], "dtype": "Q7"}}
        ),
        AdapterFileError,
        "unknown dtype",
    ),
    "shape disagrees with bytes": (
        lambda p: _rewrite_header(
            _valid(p), lambda h: {**h, _first_tensor(h): {**h[_first_tensor(h)], "shape": [3, 3]}}
        ),
        AdapterFileError,
        "needs .* bytes",
    ),
    "integer weights": (
        lambda p: save_file({k: v.to(torch.int32) if v.ndim else v for k, v in LORA.items()}, str(p)) or p,
        InvalidAdapterError,
        "floating point",
    ),
    "rank mismatch": (
        lambda p: save_file({**LORA, next(iter(LORA)): torch.randn(3, 8)}, str(p)) or p,
        InvalidAdapterError,
        "rank mismatch",
    ),
    "half a LoRA": (
        lambda p: save_file({k: v for k, v in LORA.items() if "lora_up" not in k}, str(p)) or p,
        InvalidAdapterError,
        "no lora_up",
    ),
    "full LDM checkpoint": (
        lambda p: save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2)}, str(p)) or p,
        NotAnAdapterError,
        "full Stable Diffusion checkpoint",
    ),
    "full diffusers weights": (
        lambda p: save_file({"down_blocks.0.resnets.0.conv1.weight": torch.zeros(2, 2, 3, 3)}, str(p)) or p,
        NotAnAdapterError,
        "full model weights",
    ),
    "embedding": (
        lambda p: save_file({"emb_params": torch.zeros(2, 768)}, str(p)) or p,
        NotAnAdapterError,
        "textual-inversion",
    ),
    "no tensors": (lambda p: save_file({}, str(p)) or p, NotAnAdapterError, "no tensors"),
    "deeply nested header": (
        lambda p: _write(p, struct.pack("<Q", 200_017) + b'{"__metadata__":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        AdapterFileError,
        "nests",
    ),
    "dtype that is a list": (
        lambda p: _rewrite_header(
            _valid(p), lambda h: {**h, _first_tensor(h): {**h[_first_tensor(h)], "dtype": ["F32"]}}
        ),
        AdapterFileError,
        "unknown dtype",
    ),
    "empty tensor of absurd shape": (
        lambda p: _rewrite_header(
            _valid(p), lambda h: {**h, "junk": {"dtype": "F32", "shape": [0, 2**62, 2**62], "data_offsets": [0, 0]}}
        ),
        AdapterFileError,
        "absurd shape",
    ),
    "peft alpha of the wrong type": (
        lambda p: (
            save_file(
                {
                    "unet.mid_block.attentions.0.proj_in.lora_A.weight": torch.randn(2, 8),
                    "unet.mid_block.attentions.0.proj_in.lora_B.weight": torch.randn(8, 2),
                },
                str(p),
                metadata={"lora_adapter_metadata": '{"unet.lora_alpha": [8]}'},
            )
            or p
        ),
        InvalidAdapterError,
        r"unet\.lora_alpha is \[8\]; it must be a finite number",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_file_gives_typed_one_line_error(case, tmp_path):
    make, error, pattern = CASES[case]
    path = make(tmp_path / "bad.safetensors")
    with pytest.raises(error, match=pattern) as info:
        read_adapter(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message

    code, out, err = run_cli("inspect", path)
    assert code != 0 and out == ""
    assert err.strip().startswith(f"Error: {path}") and err.count("\n") == 1 and "Traceback" not in err


def test_directory_and_missing_file(tmp_path):
    with pytest.raises(AdapterFileError, match="is a directory"):
        read_adapter(tmp_path)
    with pytest.raises(AdapterFileError, match="no such file"):
        read_adapter(tmp_path / "nope.safetensors")
    code, _, err = run_cli("convert", tmp_path, "--format", "kohya", "-o", tmp_path / "out.safetensors")
    assert code != 0 and "is a directory" in err and not (tmp_path / "out.safetensors").exists()


def test_pickle_is_refused_unless_allowed_and_then_loads_weights_only(tmp_path):
    path = tmp_path / "lora.pt"
    torch.save(LORA, path)
    with pytest.raises(UnsupportedAdapterError, match="--allow-pickle"):
        read_adapter(path)
    code, _, err = run_cli("inspect", path)
    assert code != 0 and "pickle" in err and "Traceback" not in err
    adapter = read_adapter(path, allow_pickle=True)
    assert adapter.kinds() == {"lora": 1}  # a 2-D (linear) layer
    code, out, _ = run_cli("inspect", path, "--allow-pickle", "--json")
    assert code == 0 and json.loads(out)["layers"] == 1


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_with_code_is_refused_even_when_allowed(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": _Exploit()}, path)
    with pytest.raises(AdapterFileError, match="weights_only"):
        read_adapter(path, allow_pickle=True)
    assert not (tmp_path / "pwned").exists() and not os.path.exists("pwned")


def test_console_script_shows_no_traceback(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage!" * 4)
    result = subprocess.run(
        [sys.executable, "-m", "lorastack.cli.main", "inspect", str(bad)], capture_output=True, text=True
    )
    assert result.returncode == 1 and result.stderr.startswith("Error: ") and "Traceback" not in result.stderr
