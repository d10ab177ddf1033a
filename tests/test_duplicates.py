"""``lorastack duplicates``: identical files, the same tensors under another header, near-duplicates (another dtype,
a resized copy, another format), and no false positive on different adapters made for one base."""

import pytest
import torch
from cli_helpers import run_cli
from safetensors.torch import save_file

from lorastack.adapters import read_adapter, write_adapter
from lorastack.core.modules import ModuleIndex
from lorastack.registry.duplicates import find_duplicates
from lorastack.testing.models import load_pipeline

TARGETS = ("attn1.to_q", "attn1.to_k", "attn2.to_v", "attn2.to_out.0")


def kohya_lora(pipe, seed: int, rank: int = 8, decay: float = 0.3) -> dict[str, torch.Tensor]:
    """A LoRA whose singular values fall off as trained ones do (1, 0.3, 0.09, …), in kohya keys."""
    from lorastack.adapters.naming import canonical_to_kohya

    g = torch.Generator().manual_seed(seed)
    index = ModuleIndex(pipe)
    state = {}
    for name in index.names():
        if not name.startswith("unet.") or not name.endswith(TARGETS):
            continue
        weight = index.get(name).weight
        out_f, in_f = weight.shape[0], weight[0].numel()
        u, _ = torch.linalg.qr(torch.randn(out_f, rank, generator=g))
        v, _ = torch.linalg.qr(torch.randn(in_f, rank, generator=g))
        s = torch.tensor([decay**i for i in range(rank)])
        key = canonical_to_kohya(name)
        state[f"{key}.lora_up.weight"] = (u * s).contiguous()
        state[f"{key}.lora_down.weight"] = v.T.contiguous().reshape(rank, *weight.shape[1:])
        state[f"{key}.alpha"] = torch.tensor(float(rank))
    return state


def resized(state: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """Keep the ``rank`` strongest directions (what a LoRA resize script does), alpha scaled to keep the strength."""
    out = {}
    for key, value in state.items():
        if key.endswith(".lora_up.weight"):
            base = key[: -len(".lora_up.weight")]
            old = state[f"{base}.alpha"].item() / value.shape[1]
            out[key] = value[:, :rank].contiguous()
            down = state[f"{base}.lora_down.weight"]
            out[f"{base}.lora_down.weight"] = down[:rank].contiguous()
            out[f"{base}.alpha"] = torch.tensor(old * rank)
    return out


@pytest.fixture
def library(tiny_sd1_dir, tmp_path, registry):
    pipe = load_pipeline(tiny_sd1_dir)
    files = {}
    style = kohya_lora(pipe, seed=1)
    save_file(style, str(tmp_path / "style.safetensors"), metadata={"ss_output_name": "style"})
    files["style"] = tmp_path / "style.safetensors"
    files["copy"] = tmp_path / "copy.safetensors"
    files["copy"].write_bytes(files["style"].read_bytes())
    save_file(style, str(tmp_path / "retitled.safetensors"), metadata={"ss_output_name": "renamed by a tool"})
    files["retitled"] = tmp_path / "retitled.safetensors"
    save_file({k: v.half() for k, v in style.items()}, str(tmp_path / "fp16.safetensors"))
    files["fp16"] = tmp_path / "fp16.safetensors"
    save_file(resized(style, 4), str(tmp_path / "small.safetensors"))
    files["small"] = tmp_path / "small.safetensors"
    files["diffusers"] = write_adapter(read_adapter(files["style"]), tmp_path / "style-diffusers.safetensors",
                                       "diffusers")  # fmt: skip
    # two other adapters for the same base and the same modules: unrelated, never duplicates
    save_file(kohya_lora(pipe, seed=2), str(tmp_path / "other.safetensors"))
    files["other"] = tmp_path / "other.safetensors"
    save_file(kohya_lora(pipe, seed=3), str(tmp_path / "third.safetensors"))
    files["third"] = tmp_path / "third.safetensors"
    for name, path in files.items():
        registry.import_file(path, f"lib/{name}")
    return registry, files


def test_each_kind_is_found_with_its_reason(library):
    registry, _ = library
    report = find_duplicates(registry)
    kinds = {}
    for group in report.groups:
        kinds.setdefault(group.kind, []).append(set(group.refs))
    assert kinds["identical"] == [{"lib/style@1", "lib/copy@1"}]
    assert kinds["same-tensors"] == [{"lib/style@1", "lib/retitled@1"}]
    # the fp16 copy, the rank-4 resize and the diffusers-format copy hold the same deltas as the original
    assert kinds["near"] == [{"lib/style@1", "lib/fp16@1", "lib/small@1", "lib/diffusers@1"}]
    near = next(g for g in report.groups if g.kind == "near")
    assert 0.98 <= near.similarity < 1.0 and "threshold 0.98" in near.reason
    everything = {ref for g in report.groups for ref in g.refs}
    assert not everything & {"lib/other@1", "lib/third@1"}  # the same base and modules, other deltas


def test_a_higher_threshold_drops_the_resized_copy_and_exact_reads_no_file(library, monkeypatch):
    registry, _ = library
    strict = find_duplicates(registry, threshold=0.99999)
    near = [set(g.refs) for g in strict.groups if g.kind == "near"]
    assert near and all("lib/small@1" not in refs for refs in near)
    import lorastack.adapters

    monkeypatch.setattr(lorastack.adapters, "read_adapter", lambda *a, **k: pytest.fail("--exact reads no adapter"))
    exact = find_duplicates(registry, near=False)
    assert {g.kind for g in exact.groups} == {"identical", "same-tensors"}


def test_the_command_reports_and_its_remove_line_removes_the_extras(library, lorastack_home):
    code, out, err = run_cli("duplicates", "--json")
    assert code == 0, err
    import json

    data = json.loads(out)
    assert data["threshold"] == 0.98 and {g["kind"] for g in data["groups"]} == {"identical", "same-tensors", "near"}
    code, out, _ = run_cli("duplicates")
    assert "identical: keep lib/style@1; extra lib/copy@1" in out and "remove: lorastack rm lib/copy@1" in out
    for group in data["groups"]:
        for command in group["remove"].split(" && "):
            code, _, err = run_cli(*command.split()[1:])
            assert code == 0 or "not found" in err.lower() or "no version" in err.lower(), err
    code, out, _ = run_cli("duplicates")
    assert out.strip().startswith("no duplicates")
    code, _, err = run_cli("duplicates", "--threshold", "1.5")
    assert code == 2 and "1.5" in err
