"""The registry commands as a user runs them, and registry references in the runtime."""

import json

import pytest
from adapter_cases import make_case
from cli_helpers import run_cli

from lorastack.core.recipe import read_recipe
from lorastack.registry import Registry
from lorastack.testing.models import load_pipeline
from lorastack.testing.registry import small_adapter


@pytest.fixture
def files(tmp_path, lorastack_home):
    return [small_adapter(tmp_path / f"a{i}.safetensors", seed=i, trigger=f"tok{i}") for i in range(3)]


def test_import_list_show_tag_export(files, tmp_path):
    code, out, err = run_cli("import", files[0], "--name", "me/style:v1", "--trigger", "aawxbc, style")
    assert code == 0 and out.strip() == "imported me/style@1 (tags: latest, v1)", err
    assert run_cli("import", files[1], "--name", "me/style")[1].strip() == "imported me/style@2 (tags: latest)"
    assert run_cli("import", files[1], "--name", "me/style")[1].startswith("already stored as me/style@2")
    code, out, _ = run_cli("list")
    assert code == 0 and out.splitlines()[0].split() == ["NAME", "VERSION", "TAGS", "FAMILY", "KIND", "RANK", "SIZE",
                                                         "CREATED"]  # fmt: skip
    assert out.splitlines()[1].split()[:4] == ["me/style", "@2/2", "latest", "sd1"]
    rows = json.loads(run_cli("list", "--json", "-a")[1])
    assert [r["ref"] for r in rows] == ["me/style@1", "me/style@2"]
    shown = json.loads(run_cli("show", "me/style:v1", "--json")[1])
    assert shown["trigger_words"] == ["aawxbc", "style"] and shown["files"][0]["path"] == "adapter.safetensors"
    assert "trigger words   aawxbc, style" in run_cli("show", "me/style:v1")[1]
    assert run_cli("tag", "me/style@1", "best")[1].strip() == "me/style:best -> me/style@1"
    code, out, _ = run_cli("export", "me/style:best", "-o", tmp_path / "out.safetensors")
    assert code == 0 and (tmp_path / "out.safetensors").read_bytes() == files[0].read_bytes()


def test_rm_verify_gc(files):
    for f in files[:2]:
        run_cli("import", f, "--name", "style")
    run_cli("tag", "style@1", "keep")
    code, _, err = run_cli("rm", "style@1")
    assert code == 1 and "tagged keep; pass --with-tags" in err
    code, out, _ = run_cli("rm", "style@1", "--with-tags")
    assert code == 0 and out.startswith("removed style@1, freed")
    code, out, _ = run_cli("verify")
    assert code == 0 and out.strip().endswith("clean")
    blob = next(Registry().blobs.all_blobs())
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x00")
    code, out, _ = run_cli("verify", "--json")
    assert code == 1 and json.loads(out)["corrupt"] == [blob.name]
    code, out, _ = run_cli("gc", "--dry-run", "--grace", "0")
    assert code == 0 and out.startswith("would free 0 B")  # corrupt is not unreferenced: gc keeps it


@pytest.mark.parametrize(
    "args, message",
    [
        (["import", "{f}", "--name", "../evil"], "contains '..'"),
        (["import", "{f}", "--name", "a:b:c"], "contains ':'"),
        (["import", "{f}", "--name", "ok@3"], "not a version"),
        (["show", "nothing"], "no adapter named 'nothing' in the registry (the registry is empty)"),
        (["rm", "style"], "say what to remove"),
        (["tag", "style", "12"], "all digits"),
        (["export", "style", "-o", "/no/such/dir/x.safetensors"], "the folder /no/such/dir does not exist"),
    ],
)
def test_bad_input_gives_one_line_errors(files, args, message):
    if args[0] in ("rm", "export"):
        run_cli("import", files[0], "--name", "style")
    code, _, err = run_cli(*[a.replace("{f}", str(files[0])) for a in args])
    assert code != 0 and message in err and "Traceback" not in err and err.count("\n") == 1, err


def test_registry_references_in_the_runtime(tiny_sd1_dir, tmp_path, lorastack_home):
    pipe = load_pipeline(tiny_sd1_dir)
    run_cli("import", make_case(pipe, "peft", tmp_path / "s.safetensors", seed=1), "--name", "me/style:v1")
    run_cli("import", make_case(pipe, "kohya", tmp_path / "k.safetensors", seed=2), "--name", "subject")
    out_dir = tmp_path / "out"
    code, out, err = run_cli(
        "generate", "a cat <lora:subject:0.5>", "--base", tiny_sd1_dir, "--lora", "me/style:v1:0.8",
        "--seed", "4", "--steps", "2", "-o", out_dir,
    )  # fmt: skip
    assert code == 0, err
    image = out.split()[0]
    recipe = read_recipe(image)
    assert {a["name"]: (a["source"], a["scale"]) for a in recipe["adapters"]} == {
        "me/style:v1": ("me/style@1", 0.8), "subject": ("subject@1", 0.5)
    }  # fmt: skip
    # a newer version under the same tag does not change what the image reproduces with
    run_cli("import", make_case(pipe, "peft", tmp_path / "s2.safetensors", seed=9), "--name", "me/style:v1")
    code, out, err = run_cli("reproduce", image, "--check")
    assert code == 0 and out.strip().endswith("identical"), err
    code, _, err = run_cli("generate", "a cat", "--base", tiny_sd1_dir, "--lora", "me/styel:0.8", "-o", out_dir)
    assert code == 1 and "did you mean me/style" in err
