"""The local registry: versions, tags, dedupe, latest, export, verify, gc, names, and refusals that change nothing."""

import os
import stat

import pytest
from safetensors.torch import save_file

from lorastack.adapters import NotAnAdapterError, OutputError, read_adapter, tensor_sha256
from lorastack.registry import (
    ConflictError,
    IntegrityError,
    InvalidNameError,
    InvalidValueError,
    NotFoundError,
    ReadOnlyError,
    Registry,
    parse_ref,
)
from lorastack.testing.registry import small_adapter


@pytest.fixture
def files(tmp_path):
    return [small_adapter(tmp_path / f"a{i}.safetensors", seed=i, trigger=f"tok{i}") for i in range(4)]


def blob_count(registry):
    return len(list(registry.blobs.all_blobs()))


def test_import_records_everything(registry, files):
    result = registry.import_file(files[0], "me/style", "v1", base_model="runwayml/stable-diffusion-v1-5")
    v = result.version
    assert result.created and v.ref == "me/style@1" and v.tags == ["latest", "v1"]
    assert (v.format, v.family, v.kind, v.rank, v.alpha) == ("kohya", "sd1", "lora", 2, 2.0)
    assert v.trigger_words == ["tok0"] and v.base_model == "runwayml/stable-diffusion-v1-5"
    assert v.provenance["file"] == str(files[0].resolve()) and v.created_at > 0
    assert v.metadata["modelspec.title"] == "a0"
    (f,) = v.files
    assert (f.path, f.role, f.size) == ("adapter.safetensors", "adapter", files[0].stat().st_size)
    assert f.tensor_sha256 == tensor_sha256(files[0])
    assert registry.resolve("ME/Style:V1").ref == "me/style@1"  # names and tags compare case-insensitively


def test_versions_tags_and_latest(registry, files):
    for f in files[:3]:
        registry.import_file(f, "style")
    assert registry.resolve("style").number == 3 and registry.resolve("style:latest").number == 3
    registry.tag("style@1", "best")
    registry.tag("style@2", "best")  # tags move
    assert registry.resolve("style:best").number == 2 and registry.resolve("style@1").tags == []
    registry.tag("style@1", "latest")  # moving latest pins it
    registry.import_file(files[3], "style")
    assert registry.resolve("style").number == 1
    assert registry.follow_latest("style").number == 4 and registry.resolve("style").number == 4


def test_same_bytes_share_a_blob(registry, files):
    a = registry.import_file(files[0], "one")
    again = registry.import_file(files[0], "one")
    assert not again.created and again.version.number == 1
    other = registry.import_file(files[0], "two")
    described = registry.import_file(files[0], "one", description="now described")
    assert described.created and described.version.number == 2  # new details make a new version
    assert blob_count(registry) == 1
    assert a.version.files[0].sha256 == other.version.files[0].sha256


def test_export_then_reimport_keeps_the_hashes(registry, files, tmp_path):
    original = registry.import_file(files[1], "style").version
    out = registry.export("style", tmp_path / "out.safetensors")
    again = registry.import_file(out, "copy").version
    assert again.files[0].sha256 == original.files[0].sha256
    assert again.files[0].tensor_sha256 == original.files[0].tensor_sha256
    converted = registry.export("style", tmp_path / "d.safetensors", format="diffusers")
    assert read_adapter(converted).source_format == "diffusers"
    back = registry.import_file(converted, "roundtrip").version
    kohya = registry.export("roundtrip", tmp_path / "k.safetensors", format="kohya")
    first, last = read_adapter(files[1]), read_adapter(kohya)
    assert set(first.layers) == set(last.layers) and back.rank == original.rank
    with pytest.raises(OutputError, match="already exists"):
        registry.export("style", tmp_path / "out.safetensors")


def test_remove_tags_versions_and_adapters(registry, files):
    for f in files[:3]:
        registry.import_file(f, "style")
    registry.import_file(files[0], "shared")  # shares version 1's blob
    registry.tag("style@2", "best")
    with pytest.raises(ConflictError, match="say what to remove"):
        registry.remove("style")
    with pytest.raises(ConflictError, match="tagged best; pass --with-tags"):
        registry.remove("style@2")
    registry.remove("style:best")
    assert registry.remove("style@2")["freed"] > 0
    removed = registry.remove("style@3")  # was latest: latest moves to the newest left
    assert removed["tags"] == ["latest"] and registry.resolve("style").number == 1
    assert registry.remove("style@1")["freed"] == 0  # "shared" still uses the blob
    with pytest.raises(NotFoundError):
        registry.resolve("style")  # the last version took the adapter with it
    registry.remove("shared", all_versions=True)
    assert blob_count(registry) == 0 and registry.list() == []


def test_not_found_suggests_close_matches(registry, files):
    registry.import_file(files[0], "watercolor", "v1")
    with pytest.raises(NotFoundError, match="did you mean watercolor"):
        registry.resolve("watercolour")
    with pytest.raises(NotFoundError, match="has no version 7; versions: 1"):
        registry.resolve("watercolor@7")
    with pytest.raises(NotFoundError, match="has no tag 'v2'; tags: latest, v1; did you mean v1"):
        registry.resolve("watercolor:v2")


def test_list_filters(registry, files, tmp_path):
    registry.import_file(files[0], "alpha", description="a soft watercolor style")
    registry.import_file(files[1], "alpha")
    registry.import_file(files[2], "beta/figurine")
    xl = tmp_path / "xl.safetensors"
    save_file(
        {"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": small_tensor(2, 1280),
         "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": small_tensor(1280, 2)},
        str(xl),
    )  # fmt: skip
    registry.import_file(xl, "gamma")
    rows = registry.list()
    assert [(r["name"], r["version"], r["versions"]) for r in rows] == [
        ("alpha", 2, 2), ("beta/figurine", 1, 1), ("gamma", 1, 1)
    ]  # fmt: skip
    assert [r["name"] for r in registry.list(family="sdxl")] == ["gamma"]
    assert [r["ref"] for r in registry.list(search="tok2")] == ["beta/figurine@1"]
    assert [r["ref"] for r in registry.list(search="watercolor", all_versions=True)] == ["alpha@1"]
    assert len(registry.list(all_versions=True)) == 4
    # pages of a sort never overlap and together give the whole listing
    pages = [registry.list(all_versions=True, limit=3, offset=o) for o in (0, 3)]
    assert [r["ref"] for page in pages for r in page] == [r["ref"] for r in registry.list(all_versions=True)]
    assert [r["ref"] for r in registry.list(sort="date", limit=1)] == ["gamma@1"]
    for bad in ({"sort": "size"}, {"limit": -1}, {"offset": "2"}):
        with pytest.raises(InvalidValueError, match="sort 'size' is not one of: name, date|limit -1|offset '2'"):
            registry.list(**bad)


def small_tensor(*shape):
    import torch

    return torch.randn(*shape) * 0.1


def test_verify_and_corruption(registry, files, tmp_path):
    version = registry.import_file(files[0], "style").version
    assert registry.verify().clean and registry.verify("style").checked == 1
    blob = registry.blobs.path(version.files[0].sha256)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the tensor data
    os.chmod(blob, stat.S_IWUSR | stat.S_IRUSR)
    blob.write_bytes(bytes(data))
    report = registry.verify()
    assert report.corrupt == [version.files[0].sha256] and not report.clean
    with pytest.raises(IntegrityError, match="style@1: blob .* does not match its sha256"):
        registry.adapter_path("style")
    blob.unlink()
    assert registry.verify().missing == [version.files[0].sha256]


def test_gc_sweeps_only_what_nothing_uses(registry, files):
    registry.import_file(files[0], "keep")
    registry.import_file(files[1], "drop")
    stray = registry.blobs.path("ab" * 32)
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"orphan")
    (registry.blobs.tmp / "import-dead.part").write_bytes(b"half a file")
    report = registry.verify()
    assert report.extra == ["ab" * 32] and report.temp == ["import-dead.part"]
    assert registry.gc().freed == 0  # inside the grace period
    dry = registry.gc(dry_run=True, grace=0)
    assert dry.blobs == ["ab" * 32] and dry.temp == ["import-dead.part"] and stray.exists()
    done = registry.gc(grace=0)
    assert done.freed == len(b"orphan") + len(b"half a file") and registry.verify().clean
    assert registry.resolve("keep") and registry.resolve("drop")


@pytest.mark.parametrize(
    "name, rule",
    [
        ("", "is empty"),
        ("a/../b", "contains '..'"),
        ("a/b/c", "more than one '/'"),
        ("/style", "empty part"),
        ("sty\x00le", "control character"),
        ("sty\nle", "control character"),
        ("x" * 201, "longer than 200 characters"),
        ("latest", "reserved word"),
        ("me/all", "reserved word"),
        ("sty le", "contains ' '"),
        ("-style", "must start with a letter or a digit"),
        ("stylé", "contains 'é'"),
    ],
)
def test_bad_names_are_refused_before_anything_is_written(registry, files, name, rule):
    with pytest.raises(InvalidNameError, match=rule):
        registry.import_file(files[0], name)
    assert not registry.root.exists()


@pytest.mark.parametrize(
    "tag, rule", [("v/1", "contains '/'"), ("12", "all digits"), ("", "is empty"), ("a:b", "':'")]
)
def test_bad_tags(registry, files, tag, rule):
    with pytest.raises(InvalidNameError, match=rule):
        registry.import_file(files[0], "style", tag)
    assert not registry.root.exists()


def test_bad_refs():
    assert parse_ref("me/style@3").version == 3 and parse_ref("me/style:v2").tag == "v2"
    for ref in ("style@", "style@0", "style@x", "@3"):
        with pytest.raises(InvalidNameError):
            parse_ref(ref)


def test_a_file_that_is_not_an_adapter_changes_nothing(registry, files, tmp_path):
    registry.import_file(files[0], "style")
    before = registry.list(all_versions=True)
    checkpoint = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": small_tensor(4, 4)}, str(checkpoint))
    with pytest.raises(NotAnAdapterError, match="full Stable Diffusion checkpoint"):
        registry.import_file(checkpoint, "style")
    from lorastack.adapters import AdapterFileError

    with pytest.raises(AdapterFileError, match="no such file"):
        registry.import_file(tmp_path / "missing.safetensors", "style")
    assert registry.list(all_versions=True) == before and blob_count(registry) == 1
    assert not list(registry.blobs.temp_files())


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_read_only_registry(tmp_path, files):
    registry = Registry(tmp_path / "reg")
    registry.import_file(files[0], "style")
    registry.close()
    for p in [registry.root, *registry.root.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    try:
        ro = Registry(tmp_path / "reg")
        assert ro.resolve("style").number == 1  # reading still works
        with pytest.raises(ReadOnlyError, match="read-only; nothing was changed"):
            ro.import_file(files[1], "style")
        with pytest.raises(ReadOnlyError):
            ro.tag("style@1", "best")
    finally:
        for p in [registry.root, *registry.root.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)


def test_read_only_check_without_chmod(tmp_path, files, monkeypatch):
    """The same refusal, simulated for root (who can write anywhere): os.access says the folder is read-only."""
    registry = Registry(tmp_path / "reg")
    registry.import_file(files[0], "style")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if mode == os.W_OK else real_access(p, mode, **kw))
    with pytest.raises(ReadOnlyError, match="read-only; nothing was changed"):
        registry.import_file(files[1], "style")
    monkeypatch.undo()
    assert [v.number for v in registry.versions("style")] == [1]


def test_uses_are_counted_when_a_version_is_loaded_and_never_block_it(registry, files, tmp_path):
    from lorastack.core.sources import find_adapter
    from lorastack.registry.uses import record_use, uses

    registry.import_file(files[0], "style")
    registry.import_file(files[1], "style")
    for _ in range(3):
        find_adapter("style@1", registry)
    find_adapter("style", registry)  # latest: style@2
    assert (uses(registry, "style@1"), uses(registry, "style@2")) == (3, 1)
    registry.import_file(files[2], "another")
    find_adapter("another", registry)
    assert [r["name"] for r in registry.list(sort="use")] == ["style", "another"]  # 4 uses over its versions, 1
    assert not record_use(registry, "style")  # only an exact name@N is counted
    record_use(registry, "ghost@1")
    assert uses(registry, "ghost@1") == 0

    def unwritable(write=False):
        raise ReadOnlyError("the registry index cannot be written")

    real = registry._db
    registry._db = unwritable
    assert not record_use(registry, "style@2")  # a registry that cannot count a use does not stop the work
    registry._db = real
    registry.remove("style@1", force=True)
    assert uses(registry, "style@1") == 0  # a removed version's count goes with it


def test_a_use_never_waits_for_another_writer(registry, files):
    """A registry another process is writing (a scan's batch) is not waited for: the use goes uncounted, at once."""
    import sqlite3
    import time

    from lorastack.registry.uses import record_use, uses

    registry.import_file(files[0], "style")
    other = sqlite3.connect(registry.index_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the index
    try:
        started = time.perf_counter()
        assert not record_use(registry, "style@1")
        assert time.perf_counter() - started < 5
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert record_use(registry, "style@1") and uses(registry, "style@1") == 1
    registry.list()  # the registry's own waits are back to normal
