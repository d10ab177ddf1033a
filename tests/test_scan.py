"""lorastack scan: adapters found in place, rescans that read only what changed, moves found by hash, missing files
kept and said, names tidied without clashes, every bad file reported and counted, and in-place files never deleted."""

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from lorastack.adapters import file_sha256
from lorastack.adapters.files import file_and_tensor_sha256
from lorastack.registry import IntegrityError, InvalidNameError, Registry
from lorastack.registry import scan as scan_module
from lorastack.registry.scan import scan
from lorastack.testing.registry import small_adapter
from tests.cli_helpers import run_cli
from tests.registry_helpers import listed_and_loadable


@pytest.fixture
def library(tmp_path):
    """A small A1111-style folder: two adapters at the top, one in a subfolder, sidecars and other files."""
    root = tmp_path / "Lora"
    (root / "chars").mkdir(parents=True)
    small_adapter(root / "Style One.safetensors", seed=1, trigger="tok1")
    small_adapter(root / "detail.safetensors", seed=2)
    small_adapter(root / "chars" / "anime girl (v2).safetensors", seed=3)
    (root / "chars" / "anime girl (v2).civitai.info").write_text("{}")
    (root / "chars" / "anime girl (v2).preview.png").write_bytes(b"\x89PNG")
    (root / "detail.json").write_text("{}")
    (root / "notes.txt").write_text("not an adapter")
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4)}, root / "checkpoint.safetensors")
    save_file({"emb_params": torch.zeros(2, 768)}, root / "embedding.safetensors")
    (root / "old.pt").write_bytes(b"not read")
    return root


@pytest.mark.parametrize("chunk", [None, 64, 4096])
def test_one_read_gives_both_hashes_on_one_thread_or_two(tmp_path, monkeypatch, chunk):
    """Large files hash their two digests on two threads over reused buffers: the same hashes as two plain reads,
    whatever the chunk size (small chunks make the buffers turn over many times)."""
    from lorastack.registry import inplace

    path = small_adapter(tmp_path / "a.safetensors", seed=4, rank=8)
    if chunk is not None:
        monkeypatch.setattr(inplace, "PARALLEL_HASH_BYTES", 0)
        monkeypatch.setattr(inplace, "HASH_CHUNK", chunk)
        monkeypatch.setattr(inplace, "HEAD_BYTES", chunk)
    read = inplace.read_once(path)
    assert (read.sha256, read.tensor_sha256) == file_and_tensor_sha256(path)
    assert read.stat.size == path.stat().st_size


def by_path(report) -> dict:
    return {os.path.basename(r["path"]): r for r in report.skipped}


def test_first_scan_records_files_in_place(registry, library):
    report = scan(registry, [library])
    assert sorted(r["ref"] for r in report.added) == ["Style-One@1", "chars/anime-girl-v2@1", "detail@1"]
    assert report.hashed == 3 and report.sidecars == 3 and not report.errors
    skipped = by_path(report)
    assert set(skipped) == {"notes.txt", "checkpoint.safetensors", "embedding.safetensors", "old.pt"}
    assert "full Stable Diffusion checkpoint" in skipped["checkpoint.safetensors"]["reason"]  # the reader's reason
    assert "embedding" in skipped["embedding.safetensors"]["reason"] and "pickle" in skipped["old.pt"]["reason"]
    version = registry.resolve("Style-One")
    (record,) = version.files
    path = library / "Style One.safetensors"
    assert record.location == "inplace" and record.location_path == str(path) and not record.missing
    assert (record.sha256, record.tensor_sha256) == file_and_tensor_sha256(path)  # one read, both identities
    assert version.trigger_words == ["tok1"] and version.family == "sd1" and version.format == "kohya"
    assert not list(registry.blobs.all_blobs())  # nothing copied
    assert registry.adapter_path("Style-One") == (version, path)
    assert listed_and_loadable(registry) and registry.verify().clean


def test_rescan_reads_only_changed_files_and_finds_moves_by_hash(registry, library):
    scan(registry, [library])
    again = scan(registry, [library])
    assert again.hashed == 0 and again.unchanged == 3 and not again.added
    (library / "Style One.safetensors").rename(library / "chars" / "renamed.safetensors")  # moved and renamed
    small_adapter(library / "detail.safetensors", seed=9)  # changed in place
    deleted = (library / "chars" / "anime girl (v2).safetensors").read_bytes()
    (library / "chars" / "anime girl (v2).safetensors").unlink()
    report = scan(registry, [library])
    assert report.hashed == 2  # the moved file and the changed one; nothing else is read
    assert report.moved == [
        {"ref": "Style-One@1", "from": str(library / "Style One.safetensors"),
         "to": str(library / "chars" / "renamed.safetensors")}
    ]  # fmt: skip
    assert registry.adapter_path("Style-One")[1] == library / "chars" / "renamed.safetensors"
    assert report.updated == [{"ref": "detail@2", "path": str(library / "detail.safetensors")}]
    assert [m["ref"] for m in report.missing] == ["chars/anime-girl-v2@1"]
    missing = {r["ref"] for r in registry.list(all_versions=True, missing=True)}
    assert missing == {"chars/anime-girl-v2@1", "detail@1"}  # the deleted file, and detail's overwritten bytes
    assert registry.resolve("detail").number == 2 and registry.resolve("chars/anime-girl-v2").files[0].missing
    with pytest.raises(IntegrityError, match="missing"):
        registry.adapter_path("chars/anime-girl-v2")
    report = registry.verify()
    assert not report.clean and len(report.missing) == 2
    # the deleted file comes back elsewhere: found again, same version, no longer missing
    (library / "restored.safetensors").write_bytes(deleted)
    back = scan(registry, [library])
    assert [m["ref"] for m in back.moved] == ["chars/anime-girl-v2@1"] and not back.added
    assert not registry.resolve("chars/anime-girl-v2").files[0].missing


def test_in_place_files_are_never_deleted_and_verify_rehashes_them(registry, library, tmp_path):
    scan(registry, [library])
    path = library / "detail.safetensors"
    out = registry.export("detail", tmp_path / "out.safetensors")
    assert out.read_bytes() == path.read_bytes()
    registry.remove("detail", all_versions=True)
    registry.gc(grace=0)
    assert path.exists() and (library / "Style One.safetensors").exists()
    data = bytearray((library / "Style One.safetensors").read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes (mtime may even be unchanged)
    (library / "Style One.safetensors").write_bytes(bytes(data))
    assert registry.verify().corrupt == [registry.resolve("Style-One").files[0].sha256]
    with pytest.raises(IntegrityError, match="changed since it was scanned"):
        registry.adapter_path("Style-One")


def test_names_get_a_suffix_never_another_adapters_versions(registry, library, tmp_path):
    registry.import_file(small_adapter(tmp_path / "x.safetensors", seed=7), "detail")
    other = tmp_path / "other"
    other.mkdir()
    small_adapter(other / "a b.safetensors", seed=4)
    small_adapter(other / "a-b.safetensors", seed=5)
    small_adapter(other / "con.safetensors", seed=6)
    small_adapter(other / "日本.safetensors", seed=8)
    report = scan(registry, [library, other])
    refs = sorted(r["ref"] for r in report.added)
    assert "detail-2@1" in refs and registry.resolve("detail").number == 1  # the imported one is untouched
    assert {"a-b@1", "a-b-2@1", "con-lora@1"} <= set(refs)
    assert any(r.startswith("adapter-") for r in refs)  # a stem with no ASCII left is named by its hash
    (tmp_path / "third").mkdir()
    small_adapter(tmp_path / "third" / "x.safetensors", seed=11)
    assert [r["ref"] for r in scan(registry, [tmp_path / "third"], namespace="me").added] == ["me/x@1"]
    with pytest.raises(InvalidNameError, match="namespace"):
        scan(registry, [library], namespace="a/b")


def test_bad_files_are_reported_per_file_and_counted(registry, library, monkeypatch):
    (library / "loop").symlink_to(library)
    (library / "broken.safetensors").symlink_to(library / "nowhere.safetensors")
    (library / "empty.safetensors").write_bytes(b"")
    (library / "truncated.safetensors").write_bytes((library / "detail.safetensors").read_bytes()[:100])
    locked = library / "locked"
    locked.mkdir()
    small_adapter(locked / "hidden.safetensors", seed=12)
    real_scandir, real_read = os.scandir, scan_module.read_once

    def scandir(path):
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    def read_once(path):
        if path.name == "detail.safetensors":
            raise PermissionError(13, "Permission denied", str(path))
        return real_read(path)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(scan_module, "read_once", read_once)
    report = scan(registry, [library])
    errors = {os.path.basename(e["path"]): e["error"] for e in report.errors}
    assert errors == {
        "loop": "is a symbolic link to a folder already scanned (a loop); not followed again",
        "broken.safetensors": "is a broken symbolic link",
        "locked": "permission denied",
        "detail.safetensors": "permission denied",
    }
    skipped = by_path(report)
    assert "truncated" in skipped["empty.safetensors"]["reason"]
    assert "runs past the end" in skipped["truncated.safetensors"]["reason"]
    assert sorted(r["ref"] for r in report.added) == ["Style-One@1", "chars/anime-girl-v2@1"]


def test_copy_stores_blobs_and_rescans_skip_unchanged_sources(registry, library):
    report = scan(registry, [library], copy=True)
    assert len(report.added) == 3 and len(list(registry.blobs.all_blobs())) == 3
    version, path = registry.adapter_path("detail")
    assert version.files[0].location == "blob" and path.is_relative_to(registry.root)
    assert scan(registry, [library], copy=True).hashed == 0
    (library / "detail.safetensors").unlink()
    assert not scan(registry, [library], copy=True).missing  # the copy is the registry's own
    assert registry.adapter_path("detail")[1].exists()
    small_adapter(library / "Style One.safetensors", seed=20)
    assert [r["ref"] for r in scan(registry, [library], copy=True).updated] == ["Style-One@2"]


def test_cli_scan_json_and_summary(lorastack_home, library):
    code, out, err = run_cli("scan", library, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["counts"]["added"] == 3 and data["counts"]["skipped"] == 4
    code, out, err = run_cli("scan", library)
    assert code == 0 and "0 added" in out and "3 unchanged" in out and "skipped" in out
    code, out, err = run_cli("scan", library, "--namespace", "a/b")
    assert code == 1 and err.startswith("Error: --namespace") and len(err.strip().splitlines()) == 1
    assert file_sha256(library / "detail.safetensors") == Registry().resolve("detail").files[0].sha256


def test_sidecars_beside_a_new_file_are_recorded(registry, library):
    pytest.importorskip("lorastack.registry.sidecars")
    from lorastack.registry.metadata import get_metadata

    (library / "detail.json").write_text(json.dumps({"activation text": "dtl, sharp", "preferred weight": 0.7}))
    (library / "Style One.json").write_bytes(b"\xff\xfe not utf-8")
    report = scan(registry, [library])
    values = get_metadata(registry, "detail")
    assert values["weight"].value == 0.7 and values["weight"].source == "sidecar"
    problems = sorted(p["path"] for p in report.sidecar_problems)  # reported and skipped, the scan goes on
    assert problems == [str(library / "Style One.json"), str(library / "chars" / "anime girl (v2).preview.png")]


def test_a_scanned_files_header_gives_its_lineage_and_training_tags(registry, tmp_path):
    """What the header says is read from the scan's one read of the file: the lineage label of its base model and
    the training tags (never trigger words), each recorded as coming from the header."""
    from lorastack.registry.metadata import get_metadata

    root = tmp_path / "Lora"
    root.mkdir()
    small_adapter(root / "pony style.safetensors", seed=5, ss_sd_model_name="ponyDiffusionV6XL_v6.safetensors",
                  ss_tag_frequency=json.dumps({"1_zxc": {"zxc": 9, "red hair": 3}}))  # fmt: skip
    scan(registry, [root])
    values = get_metadata(registry, "pony-style")
    assert values["lineage"].value == "Pony" and values["lineage"].source == "header"
    assert values["training_tags"].value == ["zxc", "red hair"] and "trigger_groups" not in values


def test_a_file_moved_in_from_a_folder_not_scanned_again_is_found(registry, tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    path = small_adapter(tmp_path / "old" / "style.safetensors", seed=30)
    scan(registry, [tmp_path / "old"])
    path.rename(tmp_path / "new" / "style.safetensors")
    report = scan(registry, [tmp_path / "new"])  # only the new folder
    assert [m["ref"] for m in report.moved] == ["style@1"] and not report.added
    assert registry.adapter_path("style")[1] == tmp_path / "new" / "style.safetensors"


def test_list_and_show_say_a_scanned_file_is_missing(lorastack_home, library):
    assert run_cli("scan", library)[0] == 0
    (library / "detail.safetensors").unlink()
    assert run_cli("scan", library)[0] == 0
    code, out, _ = run_cli("list", "--missing")
    assert code == 0 and out.splitlines()[1].split()[:2] == ["detail", "@1/1"] and " missing" in out
    assert len(out.splitlines()) == 2  # the header and the one missing adapter
    code, out, _ = run_cli("show", "detail")
    assert str(library / "detail.safetensors") in out and "MISSING since" in out
    code, out, _ = run_cli("list", "--missing", "--json")
    assert [row["name"] for row in json.loads(out)] == ["detail"]


def test_two_scans_of_one_registry_never_run_at_once(registry, library, monkeypatch):
    """A second scan while one runs is refused in one line (each would add the same new files); the first one's
    result is whole, and a scan after it has nothing to add."""
    from lorastack.registry import BusyError

    refused = []
    real = scan_module._scan

    def scan_with_a_second_inside(*args, **kwargs):
        try:
            scan(registry, [library])
        except BusyError as e:
            refused.append(str(e))
        return real(*args, **kwargs)

    monkeypatch.setattr(scan_module, "_scan", scan_with_a_second_inside)
    first = scan(registry, [library])
    monkeypatch.undo()
    assert len(refused) == 1 and "another lorastack scan is running" in refused[0] and "\n" not in refused[0]
    assert len(first.added) == 3 and not scan(registry, [library]).added
