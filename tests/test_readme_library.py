"""The README's library block, line by line, on a small A1111-style folder with sidecars and a fake Civitai."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from cli_helpers import run_cli
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from lorastack.adapters.files import file_and_tensor_sha256
from lorastack.testing.registry import small_adapter

ROOT = Path(__file__).resolve().parents[1]


def readme_lines() -> list[str]:
    block = re.search(r"<!-- readme-test: library -->\n```console\n(.+?)\n```", (ROOT / "README.md").read_text(),
                      re.S)  # fmt: skip
    assert block, "README has no library block"
    return block.group(1).splitlines()


def test_the_readme_library_block_runs(tmp_path, monkeypatch, civitai_server):
    home = tmp_path / "user"
    models = home / "stable-diffusion-webui" / "models"
    lora = models / "Lora" / "styles"
    lora.mkdir(parents=True)
    style = small_adapter(lora / "ink style.safetensors", seed=1)
    (lora / "ink style.civitai.info").write_text(json.dumps({"baseModel": "Pony", "trainedWords": ["inkwash"]}))
    small_adapter(lora / "detail.safetensors", seed=2)
    (lora / "copy of detail.safetensors").write_bytes((lora / "detail.safetensors").read_bytes())
    civitai_server.add(file_and_tensor_sha256(lora / "detail.safetensors")[0], trained_words=["sharp"],
                       base_model="SD 1.5")  # fmt: skip
    info = PngInfo()
    info.add_text("parameters", f'a cat <lora:ink style:0.7>\nSteps: 4, Seed: 1, Size: 64x64, Lora hashes: "ink '
                                f'style: {file_and_tensor_sha256(style)[0][:10]}"')  # fmt: skip
    Image.new("RGB", (8, 8)).save(models / "image.png", pnginfo=info)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("LORASTACK_HOME", str(tmp_path / "lorastack-home"))
    outputs = {}
    for line in readme_lines():
        argv = [str(Path(a).expanduser()) if a.startswith("~") else a for a in shlex.split(line)]
        if argv[0] == "cd":
            monkeypatch.chdir(argv[1])
            continue
        code, out, err = run_cli(*argv[1:])
        assert code == 0, f"{line}: {err}"
        assert "Traceback" not in err, err
        outputs[argv[1]] = out
    assert "styles/ink-style" in outputs["list"] and "styles/detail" not in outputs["list"]  # the sidecar's lineage
    # the file and its copy share a hash: Civitai knows both, not the ink style
    assert "asked about 3, found 2, unknown 1" in outputs["enrich"]
    assert "styles/detail@1: trigger_groups" in outputs["enrich"]
    assert "detail" in outputs["duplicates"] and "copy-of-detail" in outputs["duplicates"]
    assert "styles/ink-style" in outputs["recipe"]  # found by its AutoV2 hash
    linked = home / "ComfyUI" / "models" / "loras" / "lorastack"
    assert any(p.is_symlink() for p in linked.rglob("*.safetensors"))
