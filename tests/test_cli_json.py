"""``--json``: every command that reports a result prints one JSON value on stdout and nothing else there."""

from __future__ import annotations

import json

from cli_helpers import run_cli

from lorastack.testing.registry import small_adapter


def _json(*args) -> dict | list:
    code, out, err = run_cli(*args, "--json")
    assert code == 0, err
    return json.loads(out)  # fails on any other text on stdout


def test_registry_commands_report_as_json(lorastack_home, tmp_path):
    first = small_adapter(tmp_path / "a.safetensors", seed=1)
    second = small_adapter(tmp_path / "b.safetensors", seed=2)
    assert _json("import", first, "--name", "me/style")["ref"] == "me/style@1"
    assert _json("import", second, "--name", "me/style")["ref"] == "me/style@2"
    assert _json("tag", "me/style@1", "best") == {"name": "me/style", "tag": "best", "ref": "me/style@1"}
    assert [row["ref"] for row in _json("list", "--all-versions")] == ["me/style@1", "me/style@2"]
    exported = _json("export", "me/style@2", "-o", tmp_path / "out.safetensors", "--format", "diffusers")
    assert exported == {"ref": "me/style@2", "output": str(tmp_path / "out.safetensors"), "format": "diffusers"}
    converted = _json("convert", tmp_path / "out.safetensors", "--format", "kohya", "-o", tmp_path / "k.safetensors")
    assert converted["output"] == str(tmp_path / "k.safetensors") and converted["format"] == "kohya"
    removed = _json("rm", "me/style@1", "--with-tags")
    assert removed["version"] == "me/style@1" and removed["tags"] == ["best"] and removed["freed"] > 0
    assert _json("rm", "me/style", "--all-versions")["adapter"] == "me/style"
    report = _json("gc", "--dry-run")
    assert set(report) == {"blobs", "temp", "freed", "dry_run"} and report["dry_run"] is True
    assert _json("verify")["clean"] is True


def test_push_and_pull_report_as_json(lorastack_home, hub_server, tmp_path):
    run_cli("import", small_adapter(tmp_path / "a.safetensors", seed=1), "--name", "me/fig")
    pushed = _json("push", "me/fig", "--repo", "alice/fig")
    assert pushed["repo_id"] == "alice/fig" and [(p["ref"], p["tag"]) for p in pushed["pushed"]] == [
        ("me/fig@1", "v1")
    ]
    pulled = _json("pull", "alice/fig", "--name", "alice/copy")
    assert [(v["ref"], v["created"], v["commit"]) for v in pulled["versions"]] == [
        ("alice/copy@1", True, pushed["pushed"][0]["commit"])
    ]
