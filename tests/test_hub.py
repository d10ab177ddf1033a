"""Push and pull through the real huggingface_hub client, against a Hub-API server on 127.0.0.1."""

import json
import os
import sqlite3
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard
from safetensors.torch import save_file

from lorastack.adapters import NotAnAdapterError
from lorastack.registry import IntegrityError, Registry
from lorastack.registry.hub import HubConflictError, HubError, pull, push
from lorastack.testing.registry import small_adapter


@pytest.fixture
def local(tmp_path):
    """A registry with two versions of me/fig (kohya files), the first also tagged 'best'."""
    registry = Registry(tmp_path / "local")
    for seed in (1, 2):
        f = small_adapter(tmp_path / f"fig{seed}.safetensors", seed=seed, trigger="aawxbc figurine")
        registry.import_file(f, "me/fig", base_model="runwayml/stable-diffusion-v1-5", description="a figurine")
    registry.tag("me/fig@1", "best")
    return registry


def fresh(tmp_path, name="other"):
    return Registry(tmp_path / name)


def test_push_then_pull_into_an_empty_registry(local, hub_server, tmp_path):
    result = push(local, "me/fig", "alice/fig", all_versions=True)
    assert [(ref, tag) for ref, _, tag in result.pushed] == [("me/fig@1", "v1"), ("me/fig@2", "v2")]
    api = HfApi(endpoint=hub_server.url)
    refs = {t.name: t.target_commit for t in api.list_repo_refs("alice/fig").tags}
    assert set(refs) == {"v1", "v2", "best"} and refs["best"] == refs["v1"]
    hub = local.resolve("me/fig@2").provenance["hub"]
    assert (hub["repo"], hub["commit"], hub["tag"]) == ("alice/fig", refs["v2"], "v2")

    other = fresh(tmp_path)
    pulled = pull(other, "alice/fig", all_versions=True)
    assert [imported.version.number for imported, _ in pulled.versions] == [1, 2]
    for number in (1, 2):
        mine, theirs = local.resolve(f"me/fig@{number}"), other.resolve(f"alice/fig@{number}")
        assert theirs.files[0].tensor_sha256 == mine.files[0].tensor_sha256
        assert theirs.files[0].sha256 == mine.files[0].sha256
        assert theirs.metadata == mine.metadata and theirs.trigger_words == ["aawxbc figurine"]
        assert (theirs.base_model, theirs.description, theirs.family) == (mine.base_model, mine.description, "sd1")
        assert (
            theirs.provenance["hub"]["repo"] == "alice/fig"
            and theirs.provenance["hub"]["commit"] == refs[f"v{number}"]
        )
    assert other.resolve("alice/fig:best").number == 1 and other.resolve("alice/fig").number == 2


def test_the_model_card(local, hub_server):
    push(local, "me/fig@2", "alice/fig", kohya=True)
    api = HfApi(endpoint=hub_server.url)
    files = {f.rfilename for f in api.model_info("alice/fig").siblings}
    assert files == {
        ".gitattributes",
        "README.md",
        "lorastack.json",
        "fig.safetensors",
        "pytorch_lora_weights.safetensors",
    }
    card = ModelCard(Path(api.hf_hub_download("alice/fig", "README.md")).read_text(encoding="utf-8"))
    data = card.data.to_dict()
    assert data["base_model"] == "runwayml/stable-diffusion-v1-5" and data["instance_prompt"] == "aawxbc figurine"
    assert set(data["tags"]) >= {"lora", "text-to-image", "diffusers", "stable-diffusion", "lorastack"}
    assert data["license"] == "creativeml-openrail-m" and data["library_name"] == "diffusers"
    assert 'pipe.load_lora_weights("alice/fig", weight_name="pytorch_lora_weights.safetensors")' in card.text
    assert "lorastack pull alice/fig" in card.text


def test_a_second_push_of_unchanged_versions_uploads_nothing(local, hub_server):
    push(local, "me/fig", "alice/fig", all_versions=True)
    before_bytes, before_log = hub_server.uploaded_bytes(), len(hub_server.log)
    head = HfApi(endpoint=hub_server.url).model_info("alice/fig").sha
    again = push(local, "me/fig", "alice/fig", all_versions=True)
    new_calls = hub_server.log[before_log:]
    assert hub_server.uploaded_bytes() == before_bytes
    assert not [c for c in new_calls if c.method in ("PUT", "DELETE") or "/commit/" in c.route]
    assert HfApi(endpoint=hub_server.url).model_info("alice/fig").sha == head
    assert [ref for ref, _, _ in again.pushed] == ["me/fig@1", "me/fig@2"]


def test_identical_bytes_already_on_the_hub_are_not_uploaded(local, hub_server, tmp_path):
    push(local, "me/fig@1", "alice/fig")
    before = hub_server.uploaded_bytes()
    copy = Registry(tmp_path / "copy")  # the same file under another name, into another repo of the same Hub
    copy.import_file(local.adapter_path("me/fig@1")[1], "fig-copy", base_model="runwayml/stable-diffusion-v1-5")
    push(copy, "fig-copy", "alice/fig-copy")
    # the stored file and its (deterministic) diffusers conversion are both on the Hub already: nothing travels
    assert hub_server.uploaded_bytes() == before and len(hub_server.calls("PUT")) == 2
    assert {f.rfilename for f in HfApi(endpoint=hub_server.url).model_info("alice/fig-copy").siblings} >= {
        "fig-copy.safetensors", "pytorch_lora_weights.safetensors"
    }  # fmt: skip


def test_a_moved_hub_branch_gives_a_clear_conflict_and_changes_nothing(local, hub_server, tmp_path):
    push(local, "me/fig@1", "alice/fig")
    hub_server.commit_outside("alice/fig", "notes.md", b"someone else's work")
    local.import_file(small_adapter(tmp_path / "fig3.safetensors", seed=3), "me/fig")
    before = [v.as_dict() for v in local.versions("me/fig")]
    with pytest.raises(HubConflictError, match="the Hub branch moved since lorastack last synced it"):
        push(local, "me/fig@3", "alice/fig")
    assert [v.as_dict() for v in local.versions("me/fig")] == before
    files = {f.rfilename for f in HfApi(endpoint=hub_server.url).model_info("alice/fig").siblings}
    assert "notes.md" in files  # nothing overwritten


def test_pulling_the_same_revision_again_is_a_no_op(local, hub_server, tmp_path):
    push(local, "me/fig@1", "alice/fig")
    other = fresh(tmp_path)
    first = pull(other, "alice/fig@v1").versions[0][0]
    again = pull(other, "alice/fig@v1").versions[0][0]
    assert first.created and not again.created and again.version.ref == first.version.ref
    assert len(other.list(all_versions=True)) == 1


def test_a_cached_revision_pulls_offline(local, hub_server, tmp_path, monkeypatch):
    push(local, "me/fig@2", "alice/fig")
    pull(fresh(tmp_path, "first"), "alice/fig@v2")
    hub_server.stop()  # the Hub is gone, and offline mode is on
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    imported = pull(fresh(tmp_path, "second"), "alice/fig@v2").versions[0][0]
    assert imported.created and imported.version.files[0].sha256 == local.resolve("me/fig@2").files[0].sha256
    with pytest.raises(HubError, match="not in the local Hugging Face cache"):
        pull(fresh(tmp_path, "third"), "alice/fig@v9")


def test_an_interrupted_pull_leaves_nothing_and_the_next_pull_completes(local, hub_server, tmp_path):
    push(local, "me/fig@1", "alice/fig")
    other = fresh(tmp_path)
    hub_server.inject(r"GET /alice/fig/resolve/.*/fig\.safetensors", "drop", times=20)
    with pytest.raises(HubError, match="cannot reach the Hub"):
        pull(other, "alice/fig")
    assert other.list(all_versions=True) == [] and not list(other.blobs.temp_files())
    hub_server.faults.clear()
    imported = pull(other, "alice/fig").versions[0][0]
    assert imported.created and other.verify().clean


def test_picking_the_weight_file(hub_server, tmp_path):
    api = HfApi(endpoint=hub_server.url)
    api.create_repo("bob/many")
    for name in ("style.safetensors", "style-extra.safetensors"):
        api.upload_file(path_or_fileobj=small_adapter(tmp_path / name, seed=len(name)), path_in_repo=name,
                        repo_id="bob/many")  # fmt: skip
    registry = fresh(tmp_path)
    with pytest.raises(HubError, match=r"several weight files \(style-extra.safetensors, style.safetensors\); "
                                       r"pass --file"):  # fmt: skip
        pull(registry, "bob/many")
    with pytest.raises(HubError, match="has no file 'nope.safetensors'"):
        pull(registry, "bob/many", file="nope.safetensors")
    imported = pull(registry, "bob/many", file="style.safetensors", name="bob-style").versions[0][0]
    assert imported.version.ref == "bob-style@1" and imported.version.provenance["hub"]["file"] == "style.safetensors"
    api.create_repo("bob/empty")
    with pytest.raises(HubError, match="has no adapter file"):
        pull(registry, "bob/empty")


def test_a_file_that_is_not_an_adapter(hub_server, tmp_path):
    api = HfApi(endpoint=hub_server.url)
    api.create_repo("bob/model")
    checkpoint = tmp_path / "model.safetensors"
    import torch

    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2)}, str(checkpoint))
    api.upload_file(path_or_fileobj=checkpoint, path_in_repo="model.safetensors", repo_id="bob/model")
    registry = fresh(tmp_path)
    with pytest.raises(NotAnAdapterError, match="full Stable Diffusion checkpoint"):
        pull(registry, "bob/model")
    assert registry.list() == []


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no-slash", "not a Hub repo id: write OWNER/NAME"),
        ("a/b/c", "not a Hub repo id"),
        ("bad name/x", "not a valid Hub repo id"),
        ("alice/missing", "alice/missing was not found on the Hub; check the name"),
        ("alice/fig@nope", "alice/fig has no revision 'nope'"),
    ],
)
def test_bad_pull_input(local, hub_server, tmp_path, spec, message):
    push(local, "me/fig@1", "alice/fig")
    registry = fresh(tmp_path)
    with pytest.raises(HubError, match=message):
        pull(registry, spec)
    assert registry.list() == []


def test_network_errors_and_refusals(local, hub_server_factory, tmp_path, monkeypatch):
    hub = hub_server_factory(token="writer-token", read_only_token="reader-token")
    with pytest.raises(HubError, match="not logged in; run `hf auth login` or set HF_TOKEN"):
        push(local, "me/fig@1", "alice/fig")
    monkeypatch.setenv("HF_TOKEN", "reader-token")
    with pytest.raises(HubError, match="may not write to alice/fig; log in with a token that has write access"):
        push(local, "me/fig@1", "alice/fig")
    monkeypatch.setenv("HF_TOKEN", "writer-token")
    push(local, "me/fig@1", "alice/fig")
    hub.inject("GET /api/models/alice/fig/revision/", "503", times=20)
    with pytest.raises(HubError, match="the Hub answered 503"):
        pull(fresh(tmp_path), "alice/fig")
    hub.faults.clear()
    hub.stop()
    with pytest.raises(HubError, match=f"cannot reach the Hub at {hub.url}"):
        pull(fresh(tmp_path, "x"), "alice/fig")
    assert "hub" not in local.resolve("me/fig@2").provenance


def test_private_repos_and_the_token_never_leaks(local, hub_server_factory, tmp_path, monkeypatch, capsys, caplog):
    secret = "hf_SECRETtokenVALUE1234567890"
    hub = hub_server_factory(token=secret)
    monkeypatch.setenv("HF_TOKEN", secret)
    from cli_helpers import run_cli

    monkeypatch.setenv("LORASTACK_HOME", str(tmp_path / "home"))
    code, out, err = run_cli("import", small_adapter(tmp_path / "p.safetensors", seed=9, trigger="tok"), "--name", "p")
    assert code == 0, err
    code, out_push, err_push = run_cli("push", "p", "--repo", "alice/private-fig", "--private")
    assert code == 0, err_push
    monkeypatch.setenv("LORASTACK_HOME", str(tmp_path / "home2"))
    code, out_pull, err_pull = run_cli("pull", "alice/private-fig")
    assert code == 0 and "pulled alice/private-fig@1" in out_pull, err_pull
    monkeypatch.delenv("HF_TOKEN")
    code, _, err_denied = run_cli("pull", "alice/private-fig", "--name", "again")
    assert code == 1 and "was not found on the Hub; check the name, or log in" in err_denied
    repo = hub.repos["alice/private-fig"]
    assert repo.private
    head = repo.commits[repo.branches["main"]]
    hub_text = b"".join(entry.content or b"" for entry in head.files.values())  # card, manifest, attributes
    everything = [out, err, out_push, err_push, out_pull, err_pull, err_denied, caplog.text, capsys.readouterr().out]
    for folder in (tmp_path / "home", tmp_path / "home2"):
        for path in folder.rglob("*"):
            if path.is_file():
                everything.append(path.read_bytes().decode("latin-1"))
    assert all(secret not in text for text in everything) and secret.encode() not in hub_text
    rows = sqlite3.connect(tmp_path / "home2" / "registry" / "index.sqlite").execute("SELECT provenance FROM versions")
    assert "private-fig" in json.dumps([r[0] for r in rows])


def test_a_corrupt_local_blob_is_not_pushed(local, hub_server):
    blob = local.adapter_path("me/fig@1")[1]
    data = bytearray(blob.read_bytes())
    data[-5] ^= 1
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="me/fig@1"):
        push(local, "me/fig", "alice/fig", all_versions=True)
    assert "alice/fig" not in hub_server.repos
