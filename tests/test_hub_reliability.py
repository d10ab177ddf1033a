"""The Hub is untrusted and unreliable: its answers are validated, its silences time out, its errors are named
right, and nothing it sends can leave a half-made version or poison later pulls. One test per broken case."""

from __future__ import annotations

import ast
import json
import socket
import threading
import time
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard

from lorastack.registry import IntegrityError, Registry
from lorastack.registry.hub import HubError, pull, push, redact
from lorastack.testing.registry import small_adapter


@pytest.fixture
def local(tmp_path):
    registry = Registry(tmp_path / "local")
    for seed in (1, 2):
        f = small_adapter(tmp_path / f"fig{seed}.safetensors", seed=seed, trigger="aawxbc figurine")
        registry.import_file(f, "me/fig", base_model="runwayml/stable-diffusion-v1-5")
    return registry


def fresh(tmp_path, name="other") -> Registry:
    return Registry(tmp_path / name)


def upload(hub_server, repo: str, files: dict[str, bytes]) -> str:
    """Commit ``files`` to ``repo`` on the fake Hub directly (as someone else's tool would); the commit id."""
    from huggingface_hub import CommitOperationAdd

    api = HfApi(endpoint=hub_server.url)
    api.create_repo(repo, exist_ok=True)
    info = api.create_commit(repo, [CommitOperationAdd(p, data) for p, data in files.items()], commit_message="x")
    return info.oid


def manifest_for(weights: Path, **changes) -> bytes:
    import hashlib

    manifest = {
        "lorastack": 1, "name": "x", "version": 1, "tags": [],
        "adapter": {"path": "a.safetensors", "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
                    "tensor_sha256": None},
        "trigger_words": ["tok"], "base_model": None, "description": None,
    }  # fmt: skip
    manifest.update(changes)
    return json.dumps(manifest).encode()


def test_a_pull_that_fails_validation_leaves_nothing(hub_server, tmp_path):
    adapter = small_adapter(tmp_path / "a.safetensors", seed=3)
    manifest = manifest_for(adapter, tags=["ok", "../../x"])
    upload(hub_server, "eve/bad", {"a.safetensors": adapter.read_bytes(), "lorastack.json": manifest})
    registry = fresh(tmp_path)
    with pytest.raises(HubError, match=r"lorastack.json is malformed: tags holds an invalid one"):
        pull(registry, "eve/bad")
    assert registry.list(all_versions=True) == []


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"tags": "best"}, "tags must be a list"),
        ({"version": "3"}, "version must be a number"),
        ({"version": True}, "version must be a number"),
        ({"version": 10**30}, "version must be a number"),
        ({"adapter": ["a.safetensors"]}, "adapter must be an object"),
        ({"adapter": {"path": "../a.safetensors", "sha256": "0" * 64}}, "adapter.path must be a relative"),
        ({"adapter": {"path": "a.safetensors", "sha256": 5}}, "adapter.sha256 must be 64"),
        ({"trigger_words": "tok"}, "trigger_words must be a list"),
        ({"trigger_words": [1, 2]}, "trigger_words must be a list"),
        ({"base_model": {"id": "x"}}, "base_model must be text"),
        ({"description": ["a"]}, "description must be text"),
    ],
)
def test_manifests_of_the_wrong_types_are_named(hub_server, tmp_path, changes, field):
    adapter = small_adapter(tmp_path / "a.safetensors", seed=3)
    manifest = manifest_for(adapter, **changes)
    upload(hub_server, "eve/types", {"a.safetensors": adapter.read_bytes(), "lorastack.json": manifest})
    registry = fresh(tmp_path)
    with pytest.raises(HubError, match=f"eve/types@main: its lorastack.json is malformed: {field}"):
        pull(registry, "eve/types")
    assert registry.list(all_versions=True) == []
    # the weight file can still be pulled on its own
    assert pull(registry, "eve/types", file="a.safetensors").versions[0][0].created


def test_a_manifest_that_is_not_json_is_not_a_network_error(hub_server, tmp_path):
    adapter = small_adapter(tmp_path / "a.safetensors", seed=3)
    upload(hub_server, "eve/json", {"a.safetensors": adapter.read_bytes(), "lorastack.json": b"{not json"})
    with pytest.raises(HubError, match="lorastack.json is malformed: the file is not JSON") as caught:
        pull(fresh(tmp_path), "eve/json")
    assert "network" not in str(caught.value)


def test_an_internal_error_is_not_reported_as_a_network_error(local, hub_server, tmp_path, monkeypatch):
    push(local, "me/fig@1", "alice/fig")
    import lorastack.registry.hub as hub

    def broken(*args, **kwargs):
        raise KeyError("a bug in lorastack")

    monkeypatch.setattr(hub, "_choose_file", broken)
    with pytest.raises(KeyError, match="a bug in lorastack"):  # a bug keeps its traceback
        pull(fresh(tmp_path), "alice/fig")


def test_a_corrupt_download_is_evicted_from_the_cache(local, hub_server, tmp_path):
    push(local, "me/fig@1", "alice/fig")
    hub_server.inject(r"GET /alice/fig/resolve/main/fig\.safetensors", "corrupt", times=2)
    registry = fresh(tmp_path)
    with pytest.raises(IntegrityError, match="does not match its sha256 on the Hub.*removed from the Hugging Face"):
        pull(registry, "alice/fig")  # corrupt twice: the retry fails too
    assert registry.list(all_versions=True) == []
    pulled = pull(registry, "alice/fig")  # not poisoned: the next pull downloads good bytes
    assert pulled.versions[0][0].created and registry.verify().clean
    hub_server.inject(r"GET /alice/fig/resolve/main/fig\.safetensors", "corrupt", times=1)
    pulled = pull(fresh(tmp_path, "third"), "alice/fig")  # one bad answer: evicted and fetched again
    assert pulled.versions[0][0].created


@pytest.fixture
def silent_hub():
    """A server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


@pytest.fixture
def online(monkeypatch):
    """huggingface_hub allowed to use the network (the test plugin sets it offline)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_a_hub_that_never_answers_times_out(local, silent_hub, tmp_path, monkeypatch, online):
    monkeypatch.setenv("LORASTACK_HUB_TIMEOUT", "1")
    for call in (
        lambda: pull(fresh(tmp_path), "alice/fig", endpoint=silent_hub),
        lambda: push(local, "me/fig", "alice/fig", endpoint=silent_hub),
    ):
        start = time.monotonic()
        with pytest.raises(HubError, match=f"the Hub at {silent_hub} did not answer within 1 s"):
            call()
        assert time.monotonic() - start < 30


def test_a_wrong_token_is_not_reported_as_not_logged_in(local, hub_server_factory, monkeypatch):
    hub_server_factory(token="the-right-token")
    monkeypatch.setenv("HF_TOKEN", "a-wrong-token")
    with pytest.raises(HubError, match=r"refused your token for alice/fig \(401\): it is wrong, expired or revoked"):
        push(local, "me/fig", "alice/fig")
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubError, match="not logged in"):
        push(local, "me/fig", "alice/fig")


def test_credentials_in_the_endpoint_never_show(local, tmp_path, online):
    endpoint = "http://user:s3cret-pw@127.0.0.1:9"  # nothing listens on port 9
    with pytest.raises(HubError) as caught:
        pull(fresh(tmp_path), "alice/fig", endpoint=endpoint)
    assert "s3cret-pw" not in str(caught.value) and "http://***@127.0.0.1:9" in str(caught.value)
    assert redact("https://hf.co/x") == "https://hf.co/x" and redact("http://a:b@h:1/p") == "http://***@h:1/p"


def test_model_cards_escape_untrusted_values(tmp_path, hub_server):
    registry = Registry(tmp_path / "local")
    evil = small_adapter(tmp_path / "evil.safetensors", seed=4, trigger='aawxbc"); import os; os.system("x')
    registry.import_file(evil, "me/evil", base_model='x"); print("pwned', description="<script>alert(1)</script> `x`")
    push(registry, "me/evil", "alice/evil")
    api = HfApi(endpoint=hub_server.url)
    card = ModelCard(Path(api.hf_hub_download("alice/evil", "README.md")).read_text(encoding="utf-8"))
    assert "base_model" not in card.data.to_dict()  # not a Hub id: kept out of the YAML the Hub validates
    python = card.text.split("```python\n")[1].split("```")[0]
    calls = [node.func for node in ast.walk(ast.parse(python)) if isinstance(node, ast.Call)]
    names = {getattr(f, "attr", getattr(f, "id", None)) for f in calls}
    assert names == {"from_pretrained", "pipe", "load_lora_weights"}  # no print, no os.system
    assert "<script>" not in card.text and "&lt;script&gt;" in card.text
    bash = card.text.split("```bash\n")[1].split("```")[0]
    import shlex

    words = shlex.split(bash.splitlines()[1])
    assert words[:2] == ["lorastack", "generate"] and words[2].startswith('aawxbc"); import os')  # one word


def test_push_all_versions_leaves_main_on_the_newest(tmp_path, hub_server):
    """A kohya copy changes older versions' files; the newest (already pushed) must still end up on main."""
    registry = Registry(tmp_path / "local")
    from lorastack.adapters import read_adapter, write_adapter

    diffusers = write_adapter(read_adapter(small_adapter(tmp_path / "k1.safetensors", seed=1)),
                              tmp_path / "d1.safetensors", "diffusers")  # fmt: skip
    registry.import_file(diffusers, "me/mix")  # @1: a diffusers file (--kohya adds a converted copy)
    registry.import_file(small_adapter(tmp_path / "k2.safetensors", seed=2), "me/mix")  # @2: kohya
    push(registry, "me/mix", "alice/mix", all_versions=True)
    push(registry, "me/mix", "alice/mix", all_versions=True, kohya=True)
    api = HfApi(endpoint=hub_server.url)
    manifest = json.loads(Path(api.hf_hub_download("alice/mix", "lorastack.json", revision="main")).read_text())
    assert manifest["version"] == 2
    repo = hub_server.repos["alice/mix"]
    assert repo.branches["main"] == registry.resolve("me/mix@2").provenance["hub"]["commit"] == repo.tags["v2"]


def test_pull_then_pull_all_versions_numbers_like_the_hub(local, hub_server, tmp_path):
    push(local, "me/fig", "alice/fig", all_versions=True)
    registry = fresh(tmp_path)
    first = pull(registry, "alice/fig").versions[0][0].version  # main is v2
    assert first.number == 2
    pulled = pull(registry, "alice/fig", all_versions=True)
    assert [(imported.version.number, imported.created) for imported, _ in pulled.versions] == [(1, True), (2, False)]
    for number in (1, 2):  # local @N holds Hub vN's bytes
        theirs, mine = registry.resolve(f"alice/fig@{number}"), local.resolve(f"me/fig@{number}")
        assert theirs.files[0].sha256 == mine.files[0].sha256
    assert registry.resolve("alice/fig").number == 2  # latest did not move backwards


def test_a_hub_without_manifests_numbers_from_its_tags(tmp_path, hub_server):
    api = HfApi(endpoint=hub_server.url)
    commits = []
    for seed in (1, 2):
        data = small_adapter(tmp_path / f"p{seed}.safetensors", seed=seed).read_bytes()
        commits.append(upload(hub_server, "bob/plain", {"style.safetensors": data}))
        api.create_tag("bob/plain", tag=f"v{seed}", revision=commits[-1])
    registry = fresh(tmp_path)
    assert pull(registry, "bob/plain").versions[0][0].version.number == 2  # main is the commit tagged v2
    assert pull(registry, "bob/plain@v1").versions[0][0].version.number == 1
    assert registry.resolve("bob/plain").number == 2


# --- found by trying ----------------------------------------------------------------------------------------------


def test_the_kohya_file_never_takes_the_diffusers_files_name(tmp_path, hub_server):
    registry = Registry(tmp_path / "local")
    stored = registry.import_file(small_adapter(tmp_path / "k.safetensors", seed=1), "me/pytorch_lora_weights").version
    push(registry, "me/pytorch_lora_weights", "alice/plw")
    files = {f.rfilename for f in HfApi(endpoint=hub_server.url).model_info("alice/plw").siblings}
    assert {"pytorch_lora_weights.safetensors", "pytorch_lora_weights-kohya.safetensors"} <= files
    pulled = pull(fresh(tmp_path), "alice/plw").versions[0][0].version
    assert pulled.files[0].sha256 == stored.files[0].sha256  # the stored bytes came back


def test_a_manifest_naming_latest_does_not_pin_it(hub_server, tmp_path):
    api = HfApi(endpoint=hub_server.url)
    for seed in (1, 2):
        adapter = small_adapter(tmp_path / f"a{seed}.safetensors", seed=seed)
        manifest = manifest_for(adapter, version=seed, tags=["latest", "keep"] if seed == 1 else [])
        commit = upload(hub_server, "eve/pin", {"a.safetensors": adapter.read_bytes(), "lorastack.json": manifest})
        api.create_tag("eve/pin", tag=f"v{seed}", revision=commit)
    registry = fresh(tmp_path)
    pull(registry, "eve/pin", all_versions=True)
    assert registry.resolve("eve/pin").number == 2 and registry.resolve("eve/pin:keep").number == 1


def test_tags_that_look_alike_do_not_crash_a_pull(hub_server, tmp_path):
    api = HfApi(endpoint=hub_server.url)
    adapter = small_adapter(tmp_path / "a.safetensors", seed=1)
    commit = upload(hub_server, "eve/dup", {"a.safetensors": adapter.read_bytes()})
    for tag in ("v1", "v01", "v0"):
        api.create_tag("eve/dup", tag=tag, revision=commit)
    registry = fresh(tmp_path)
    pulled = pull(registry, "eve/dup", all_versions=True)
    assert [imported.version.number for imported, _ in pulled.versions] == [1]
    assert registry.resolve("eve/dup@1").tags == ["latest", "v0", "v01"]  # v01 and v0 are ordinary tags


def test_a_broken_hugging_face_cache_is_not_a_network_error(local, hub_server, tmp_path, monkeypatch):
    push(local, "me/fig@1", "alice/fig")
    from huggingface_hub import constants

    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("x")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(not_a_folder / "hub"))
    with pytest.raises(HubError, match="the Hugging Face cache cannot be used") as caught:
        pull(fresh(tmp_path), "alice/fig")
    assert "network" not in str(caught.value)


def test_the_local_name_is_checked_before_anything_is_downloaded(local, hub_server, tmp_path):
    push(local, "me/fig@1", "alice/fig")
    before = len(hub_server.log)
    from lorastack.registry import InvalidNameError

    for name in ("o/x@3", "o/x:best", "latest"):
        with pytest.raises(InvalidNameError):
            pull(fresh(tmp_path), "alice/fig", name=name)
    with pytest.raises(InvalidNameError, match="choose a local name with --name"):
        pull(fresh(tmp_path), "alice/latest")
    assert len(hub_server.log) == before


def test_a_license_that_is_not_a_hub_id_is_refused(local, hub_server):
    with pytest.raises(HubError, match="--license 'MIT License' is not a Hub license id"):
        push(local, "me/fig", "alice/fig", license="MIT License")
    assert "alice/fig" not in hub_server.repos


def test_details_lorastack_pushes_pull_back(tmp_path, hub_server):
    registry = Registry(tmp_path / "local")
    words = [f"w{i}" for i in range(1000)]
    registry.import_file(small_adapter(tmp_path / "m.safetensors", seed=1), "me/many", trigger_words=words,
                         description="d" * 100_000, base_model="b" * 1000)  # fmt: skip
    push(registry, "me/many", "alice/many")
    back = pull(fresh(tmp_path), "alice/many").versions[0][0].version
    assert back.trigger_words == words and len(back.description) == 100_000


def test_pulling_every_version_offline_says_what_to_do(local, tmp_path):
    with pytest.raises(HubError, match="lists alice/fig's tags on the Hub, which is offline"):
        pull(fresh(tmp_path), "alice/fig", all_versions=True)
