"""Named stacks: saved as immutable versions, listed, shown, removed, used by ``generate --stack``; a kill before
the commit leaves the old stack; hostile input refused in one line."""

from __future__ import annotations

import json

import pytest
from cli_helpers import run_cli
from generate_helpers import one_line_error

from lorastack.core.recipe import read_recipe
from lorastack.registry import Registry
from lorastack.registry.stacks import get_stack, list_stacks, save_stack
from lorastack.testing.registry import small_adapter


def _json(*args):
    code, out, err = run_cli(*args, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def two(lorastack_home, tmp_path):
    for name, seed in (("me/style", 1), ("me/style", 2), ("detail", 3)):
        code, _, err = run_cli("import", small_adapter(tmp_path / f"{seed}.safetensors", seed=seed), "--name", name)
        assert code == 0, err
    run_cli("tag", "me/style@1", "good")
    return tmp_path


def test_save_list_show_rm(two):
    saved = _json("stack", "save", "portrait", "--lora", "me/style:good:0.8", "--lora", "detail:0.5",
                  "--prompt", "soft light")  # fmt: skip
    assert [(a["name"], a["ref"], a["tag"], a["scale"]) for a in saved["adapters"]] == [
        ("me/style:good", "me/style@1", "good", 0.8), ("detail", "detail@1", "latest", 0.5)
    ]  # fmt: skip
    run_cli("tag", "me/style@2", "good")  # the tag moves; the stack keeps the version it was saved with
    assert _json("stack", "show", "portrait")["adapters"][0]["ref"] == "me/style@1"
    assert [s["name"] for s in _json("stack", "list")] == ["portrait"]
    code, out, _ = run_cli("stack", "show", "portrait")
    assert code == 0 and "me/style@1 at 0.8, saved from me/style:good" in out and "prompt: soft light" in out
    code, _, err = run_cli("stack", "save", "portrait", "--lora", "detail")
    one_line_error(code, err, "exists", "--force")
    assert _json("stack", "save", "portrait", "--lora", "detail", "--force")["adapters"][0]["scale"] == 1.0
    assert _json("stack", "rm", "portrait")["name"] == "portrait"
    assert _json("stack", "list") == []
    code, _, err = run_cli("stack", "show", "portrait")
    one_line_error(code, err, "no stack named 'portrait'")


def test_bad_input_is_one_line(two):
    for args, needle in (
        (["--lora", "ghost:0.5"], "ghost"),
        (["--lora", "detail:1e9"], "out of range"),
        ([], "at least one --lora"),
    ):
        code, _, err = run_cli("stack", "save", "s", *args)
        one_line_error(code, err, needle)
    with pytest.raises(Exception, match="given twice"):
        save_stack(Registry(), "s", [("d", "detail", 1.0), ("D", "detail", 0.5)])
    code, _, err = run_cli("stack", "save", "bad name!", "--lora", "detail")
    one_line_error(code, err, "bad name!")
    code, _, err = run_cli("stack", "save", "s", "--lora", str(two / "1.safetensors"))
    one_line_error(code, err)  # a file is no registry reference: import it first


def test_a_kill_before_commit_keeps_the_old_stack(two, registry, monkeypatch):
    from lorastack import faults

    save_stack(registry, "s", [("detail", "detail", 0.5)])

    def crash(name):
        if name == "registry.stack.before-commit":
            raise KeyboardInterrupt

    monkeypatch.setattr("lorastack.registry.stacks.crash_point", crash)
    with pytest.raises(KeyboardInterrupt):
        save_stack(registry, "s", [("detail", "detail", 0.9), ("x", "me/style", 1.0)], overwrite=True)
    assert [(a.ref, a.scale) for a in get_stack(registry, "s").adapters] == [("detail@1", 0.5)]
    assert len(list_stacks(registry)) == 1
    assert faults  # the fault module is the one production code calls


def test_removed_version_is_named_when_the_stack_is_used(two, tiny_sd1_dir, no_load, tmp_path):
    run_cli("stack", "save", "s", "--lora", "me/style@1:0.7")
    run_cli("stack", "save", "other", "--lora", "detail")
    code, _, err = run_cli("rm", "me/style@1", "--with-tags")  # rm says which saved stacks it leaves dangling
    assert code == 0 and err.strip() == (
        "note: stack s uses me/style@1, which is no longer in the registry; lorastack stack save s --force … "
        "updates it"
    )  # fmt: skip
    assert _json("rm", "detail", "--all-versions")["stacks_affected"] == [{"stack": "other", "ref": "detail@1"}]
    code, _, err = run_cli("generate", "a cat", "--base", tiny_sd1_dir, "--stack", "s", "-o", tmp_path / "o")
    one_line_error(code, err, "me/style", "no version 1")  # said before any model loads


def test_generate_with_a_stack(lorastack_home, tiny_sd1_dir, tmp_path):
    from adapter_cases import make_case

    from lorastack.testing.models import load_pipeline

    style = make_case(load_pipeline(tiny_sd1_dir), "kohya", tmp_path / "style.safetensors", seed=1)
    run_cli("import", style, "--name", "me/style")
    assert run_cli("stack", "save", "look", "--lora", "me/style:0.6", "--prompt", "watercolor")[0] == 0
    run = _json("generate", "a cat", "--base", tiny_sd1_dir, "--stack", "look", "--steps", "1", "--seed", "2",
                "-o", tmp_path / "out")  # fmt: skip
    recipe = read_recipe(run["images"][0]["path"])
    assert recipe["prompt"] == "a cat, watercolor"
    assert [(a["source"], a["scale"]) for a in recipe["adapters"]] == [("me/style@1", 0.6)]
    code, _, err = run_cli("generate", "a cat", "--base", tiny_sd1_dir, "--stack", "nope", "-o", tmp_path / "o")
    one_line_error(code, err, "no stack named 'nope'", "look")
