"""The Hub error translator: transport and HTTP failures become one line; anything else keeps what it is."""

from __future__ import annotations

import httpx2 as httpx
import pytest
from huggingface_hub import CommitOperationAdd, HfApi

from lorastack.registry import Registry
from lorastack.registry.hub import HubError, pull
from lorastack.registry.hub_client import raise_hub_error
from lorastack.testing.registry import small_adapter


def _raised(error: Exception) -> BaseException:
    try:
        try:
            raise error
        except Exception as e:
            raise_hub_error(e, "alice/fig", "http://127.0.0.1:9", "main")
    except BaseException as out:
        return out
    raise AssertionError("raise_hub_error returned")


def test_transport_and_http_failures_become_one_line():
    refused = _raised(httpx.ConnectError("[Errno 111] Connection refused"))
    assert isinstance(refused, HubError) and str(refused).startswith("cannot reach the Hub at http://127.0.0.1:9")
    timeout = _raised(httpx.ReadTimeout("timed out"))
    assert isinstance(timeout, HubError) and "did not answer within" in str(timeout)


def test_a_bug_keeps_its_type_and_its_cause():
    try:
        raise KeyError("adapter")
    except KeyError as inner:
        bug = TypeError("a bug in lorastack")
        bug.__cause__ = inner
    out = _raised(bug)
    assert out is bug and isinstance(out.__cause__, KeyError) and not isinstance(out, HubError)


def test_a_local_file_error_is_not_blamed_on_the_hub_or_its_cache(tmp_path):
    denied = PermissionError(13, "Permission denied", str(tmp_path / "registry" / "index.sqlite"))
    out = _raised(denied)
    assert out is denied  # neither "cannot reach the Hub" nor "the Hugging Face cache cannot be used"


def test_pull_of_a_bug_is_not_a_network_error(hub_server, tmp_path, monkeypatch):
    def broken(self, *args, **kwargs):
        raise AttributeError("'NoneType' object has no attribute 'sha'") from KeyError("sha")

    monkeypatch.setattr(HfApi, "model_info", broken)
    with pytest.raises(AttributeError, match="no attribute 'sha'") as caught:
        pull(Registry(tmp_path / "r"), "alice/fig")
    assert isinstance(caught.value.__cause__, KeyError)  # the traceback still leads to where it went wrong


def test_a_malformed_manifest_is_reported_as_such(hub_server, tmp_path):
    api = HfApi(endpoint=hub_server.url)
    api.create_repo("eve/bad", exist_ok=True)
    adapter = small_adapter(tmp_path / "a.safetensors", seed=1).read_bytes()
    files = {"a.safetensors": adapter, "lorastack.json": b'{"adapter": 3}'}
    api.create_commit("eve/bad", [CommitOperationAdd(p, d) for p, d in files.items()], commit_message="x")
    with pytest.raises(HubError) as caught:
        pull(Registry(tmp_path / "r"), "eve/bad")
    message = str(caught.value)
    assert "lorastack.json is malformed: adapter must be an object" in message
    assert "cannot reach" not in message and "network" not in message
