"""The Hub-API server in lorastack.testing answers the real huggingface_hub client the way the Hub does."""

from pathlib import Path

import httpx2
import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError


def test_the_client_against_the_fake_hub(hub_server, tmp_path):
    api = HfApi(endpoint=hub_server.url)
    assert api.whoami(token="any-token")["name"] == "tester"  # this fake accepts any token
    url = api.create_repo("alice/demo")
    assert str(api.create_repo("alice/demo", exist_ok=True)) == str(url)  # 409 carries the url
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "w.safetensors").write_bytes(b"x" * 1000)
    api.upload_file(path_or_fileobj=tmp_path / "a.txt", path_in_repo="docs/a.txt", repo_id="alice/demo")
    api.upload_file(path_or_fileobj=tmp_path / "w.safetensors", path_in_repo="w.safetensors", repo_id="alice/demo")
    api.create_branch("alice/demo", branch="dev")
    api.create_tag("alice/demo", tag="v1")
    refs = api.list_repo_refs("alice/demo")
    assert {b.name for b in refs.branches} == {"main", "dev"} and [t.name for t in refs.tags] == ["v1"]
    tree = {e.path for e in api.list_repo_tree("alice/demo", recursive=False)}
    assert tree == {".gitattributes", "w.safetensors", "docs"}
    assert [c.title for c in api.list_repo_commits("alice/demo")][-1] == "initial commit"
    (info,) = api.get_paths_info("alice/demo", ["w.safetensors"])
    assert info.lfs.size == 1000 and info.size == 1000
    assert api.file_exists("alice/demo", "docs/a.txt") and not api.file_exists("alice/demo", "nope.txt")
    path = hf_hub_download("alice/demo", "w.safetensors", revision="v1", endpoint=hub_server.url)
    assert Path(path).read_bytes() == b"x" * 1000
    ranged = httpx2.get(f"{hub_server.url}/alice/demo/resolve/main/w.safetensors", headers={"Range": "bytes=10-19"})
    assert ranged.status_code == 206 and ranged.content == b"x" * 10 and ranged.headers["X-Repo-Commit"]
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("alice/missing")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("alice/demo", revision="nope")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("alice/demo", "nope.bin", endpoint=hub_server.url)
    assert hub_server.calls("PUT") and all(c.status < 500 for c in hub_server.log)
