"""The registry never loses or corrupts an adapter, and its own files and odd inputs give one-line errors.

One test per way the registry was found to break; each fails without its fix.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from cli_helpers import run_cli
from sandbox import CLI, as_nobody, in_namespace, needs_unshare

from lorastack.adapters import OutputError
from lorastack.registry import (
    ConflictError,
    InvalidNameError,
    ReadOnlyError,
    Registry,
    RegistryError,
    parse_ref,
)
from lorastack.registry.errors import CorruptIndexError
from lorastack.testing.registry import small_adapter


@pytest.fixture
def files(tmp_path):
    return [small_adapter(tmp_path / f"a{i}.safetensors", seed=i, trigger=f"tok{i}") for i in range(4)]


def listed_and_loadable(registry) -> list[str]:
    refs = [row["ref"] for row in registry.list(all_versions=True)]
    for ref in refs:
        registry.adapter_path(ref)  # raises when a listed version lacks its blob or it is damaged
    return refs


# --- data loss and corruption -----------------------------------------------------------------------------------


def test_rm_deletes_blobs_only_after_its_commit(registry, files, monkeypatch):
    """A crash right after a blob is deleted must not leave the version listed without it."""
    registry.import_file(files[0], "style")
    registry.import_file(files[1], "style")
    blob = registry.adapter_path("style@2")[1]
    real_unlink = Path.unlink

    def unlink_then_die(self, *args, **kwargs):
        real_unlink(self, *args, **kwargs)
        if self == blob:
            raise KeyboardInterrupt  # the process stops right after the unlink (as a kill would)

    monkeypatch.setattr(Path, "unlink", unlink_then_die)
    with pytest.raises(KeyboardInterrupt):
        registry.remove("style@2")
    monkeypatch.undo()
    reopened = Registry(registry.root)
    assert listed_and_loadable(reopened) == ["style@1"] and reopened.verify().clean


def test_a_damaged_stored_blob_is_replaced_not_shared(registry, files, tmp_path):
    first = registry.import_file(files[0], "style").version
    blob = registry.adapter_path(first.ref)[1]
    damaged = bytearray(blob.read_bytes())
    damaged[-3] ^= 0xFF  # same size, other bytes
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(damaged))
    again = registry.import_file(files[0], "copy")  # the good bytes again, under another name
    assert again.version.files[0].sha256 == first.files[0].sha256
    assert registry.adapter_path("copy")[1].read_bytes() == files[0].read_bytes()  # repaired, not reused
    assert registry.verify().clean and registry.adapter_path("style")


def test_a_source_rewritten_during_import_is_stored_as_parsed(registry, files, monkeypatch):
    """What is recorded (rank, trigger words, hashes) describes exactly the bytes stored."""
    import lorastack.adapters as adapters

    source = files[0].with_name("moving.safetensors")
    source.write_bytes(files[0].read_bytes())
    real_read = adapters.read_adapter

    def read_then_rewrite(path, *args, **kwargs):
        adapter = real_read(path, *args, **kwargs)
        source.write_bytes(
            small_adapter(source.with_name("other.safetensors"), seed=9, rank=4, trigger="x").read_bytes()
        )
        return adapter

    monkeypatch.setattr(adapters, "read_adapter", read_then_rewrite)
    version = registry.import_file(source, "moving").version
    monkeypatch.undo()
    blob = registry.adapter_path("moving")[1]
    stored = adapters.read_adapter(blob, tensors=False)
    assert (version.rank, version.trigger_words) == (stored.rank, stored.metadata.trigger_words)
    assert version.files[0].sha256 == adapters.file_sha256(blob)


def test_outputs_replace_only_regular_files(registry, files, tmp_path):
    registry.import_file(files[0], "style")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    to_device = tmp_path / "null-link"
    to_device.symlink_to(os.devnull)
    for target, kind in (
        (fifo, r"a FIFO \(named pipe\)"),
        (to_device, r"a character device \(through a symbolic link\)"),
    ):
        with pytest.raises(OutputError, match=f"is {kind}; lorastack only writes or replaces regular files"):
            registry.export("style", target, overwrite=True)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and os.path.islink(to_device)
    code, _, err = run_cli("convert", files[0], "--to", "diffusers", "-o", fifo, "--force")
    assert code == 1 and "FIFO" in err and "Traceback" not in err
    # a link to a regular file is written through: the link stays, its target gets the bytes
    real = tmp_path / "real.safetensors"
    real.write_bytes(b"old")
    link = tmp_path / "link.safetensors"
    link.symlink_to(real)
    registry.export("style", link, overwrite=True)
    assert link.is_symlink() and real.read_bytes() == files[0].read_bytes()


def test_written_files_get_the_usual_mode(registry, files, tmp_path):
    registry.import_file(files[0], "style")
    umask = os.umask(0o022)
    try:
        fresh = registry.export("style", tmp_path / "new.safetensors")
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o644  # not mkstemp's 0600
        kept = tmp_path / "kept.safetensors"
        kept.write_bytes(b"x")
        kept.chmod(0o640)
        registry.export("style", kept, overwrite=True)
        assert stat.S_IMODE(kept.stat().st_mode) == 0o640  # a replaced file keeps its mode
    finally:
        os.umask(umask)


def test_rm_with_a_reference_and_all_is_refused(registry, files):
    for f in files[:2]:
        registry.import_file(f, "style")
    registry.tag("style@1", "best")
    for ref in ("style:best", "style@1"):
        with pytest.raises(ConflictError, match="--all removes every version of style"):
            registry.remove(ref, all_versions=True)
    assert listed_and_loadable(registry) == ["style@1", "style@2"]
    code, _, err = run_cli("rm", "style:best", "--all")
    assert code == 1 and "write lorastack rm style --all" in err


def test_version_numbers_are_never_reused(registry, files):
    for f in files[:2]:
        registry.import_file(f, "style")
    registry.remove("style@2")
    assert registry.import_file(files[2], "style").version.number == 3  # not @2 with other bytes
    registry.remove("style", all_versions=True)
    assert registry.import_file(files[3], "STYLE").version.number == 4  # the name remembers its numbers
    assert registry.resolve("style").number == 4


def test_gc_never_sweeps_an_import_in_flight(registry, files):
    registry.import_file(files[0], "style")
    staged, release = threading.Event(), threading.Event()
    result = {}

    def importer():
        mine = Registry(registry.root)  # SQLite connections belong to one thread
        real_commit = mine.blobs.commit

        def slow_commit(blob):
            staged.set()  # the import's scratch folder exists, its blob is not stored yet
            release.wait(10)
            return real_commit(blob)

        mine.blobs.commit = slow_commit
        result["import"] = mine.import_file(files[1], "style")

    def sweeper():
        result["gc"] = Registry(registry.root).gc(grace=0)

    threads = [threading.Thread(target=importer), threading.Thread(target=sweeper)]
    threads[0].start()
    assert staged.wait(10)
    threads[1].start()
    time.sleep(0.3)
    assert threads[1].is_alive()  # gc waits for the import instead of deleting its scratch folder
    release.set()
    for thread in threads:
        thread.join(10)
    assert result["import"].version.number == 2 and listed_and_loadable(registry) == ["style@1", "style@2"]
    assert registry.verify().clean and not registry.verify().reclaimable


# --- the registry's own files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["garbage", "truncated", "zeroed page"])
def test_a_damaged_index_gives_one_line_and_verify_says_so(lorastack_home, files, damage):
    registry = Registry()
    for i, f in enumerate(files):
        for j in range(30):  # enough rows for the index to span several pages
            registry.import_file(f, f"style{i}-{j}", description="x" * 200)
    registry.close()
    index = registry.index_path
    data = bytearray(index.read_bytes())
    if damage == "garbage":
        data[:100] = os.urandom(100)
    elif damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[4096 * 2 : 4096 * 3] = bytes(4096)
    index.write_bytes(bytes(data))
    for args in (["list"], ["show", "style0-0"], ["import", files[0], "--name", "new"]):
        code, out, err = run_cli(*args)  # works where the damage is elsewhere, else says so in one line
        assert code == 0 or (code == 1 and "damaged" in err and err.count("\n") == 1), (args, err)
    code, out, err = run_cli("verify")
    assert code == 1 and "Traceback" not in err and "clean" not in out
    assert "index" in out or "damaged" in err


@needs_unshare
def test_a_read_only_registry_can_be_read(tmp_path, files):
    home = tmp_path / "home"
    env = {"LORASTACK_HOME": str(home)}
    registry = Registry(home / "registry")
    registry.import_file(files[0], "style", "v1")
    registry.import_file(files[1], "style")
    registry.close()
    for leftover in (home / "registry").glob("index.sqlite-*"):  # a clean shutdown leaves no -wal / -shm
        leftover.unlink()
    shell = (
        'mount --bind "$H" "$H" && mount -o remount,bind,ro "$H"\n'
        "$CLI list\n$CLI show style:v1\n$CLI verify\n"
        '$CLI import "$F" --name other || echo "import exit $?"\n'
        '$CLI rm style@1 --force || echo "rm exit $?"\n'
    )
    done = in_namespace(shell, {**env, "H": str(home), "F": str(files[2])})
    assert done.returncode == 0, done.stderr
    assert "style  @2/2" in done.stdout and "ref             style@1" in done.stdout and "clean" in done.stdout
    assert "import exit 1" in done.stdout and "rm exit 1" in done.stdout
    assert done.stderr.count("Error:") == 2 and "Traceback" not in done.stderr and "read-only" in done.stderr


def test_a_registry_another_user_cannot_write_can_be_read(files):
    home = Path(tempfile.mkdtemp(prefix="lorastack-shared-"))
    try:
        os.chmod(home, 0o755)
        registry = Registry(home / "registry")
        registry.import_file(files[0], "style")
        registry.close()
        for path in [home, *home.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        env = {"LORASTACK_HOME": str(home), "HOME": "/tmp"}
        listed = as_nobody([*CLI, "list", "--json"], env)
        assert listed.returncode == 0, listed.stderr
        assert [row["ref"] for row in json.loads(listed.stdout)] == ["style@1"]
        refused = as_nobody([*CLI, "tag", "style@1", "best"], env)
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "read-only" in refused.stderr
    finally:
        subprocess.run(["rm", "-rf", str(home)], check=False)


@needs_unshare
def test_a_full_disk(tmp_path, files):
    """An import on a full disk changes nothing and says so; rm and gc still free space."""
    script = tmp_path / "full.py"
    script.write_text(
        f"""
import json, os, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from lorastack.registry import Registry
from lorastack.registry.errors import NoSpaceError
disk = {str(tmp_path / "disk")!r}
files = {[str(f) for f in files]!r}
registry = Registry(disk + "/registry")
for i, f in enumerate(files[:3]):
    registry.import_file(f, f"a{{i}}")
filler = os.open(disk + "/filler", os.O_WRONLY | os.O_CREAT)  # fill the disk to the last byte
for size in (1 << 16, 4096, 1):
    try:
        while True:
            os.write(filler, b"x" * size)
    except OSError:
        pass
os.close(filler)
out = {{}}
try:
    registry.import_file(files[3], "new")
    out["import"] = "imported"
except NoSpaceError as e:
    out["import"] = str(e)
out["tmp"] = sorted(os.listdir(disk + "/registry/tmp"))
out["removed"] = registry.remove("a0", all_versions=True)
out["gc"] = registry.gc(grace=0).freed
out["listed"] = [row["ref"] for row in registry.list()]
out["clean"] = registry.verify().clean
os.unlink(disk + "/filler")
out["after"] = registry.import_file(files[3], "new").version.ref
print(json.dumps(out))
"""
    )
    (tmp_path / "disk").mkdir()
    done = in_namespace(f'mount -t tmpfs -o size=2m tmpfs "{tmp_path / "disk"}"\n"{CLI[0]}" "{script}"')
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert "no space left" in out["import"] and "nothing was changed" in out["import"], out
    assert out["tmp"] == [] and out["clean"] and out["listed"] == ["a1@1", "a2@1"]
    assert out["removed"]["freed"] > 0 and out["after"] == "new@1"


def test_registry_home_that_is_a_file(tmp_path, monkeypatch, files):
    home = tmp_path / "home-file"
    home.write_text("not a folder")
    for where in (home, home / "below"):
        monkeypatch.setenv("LORASTACK_HOME", str(where))
        for args in (["list"], ["import", files[0], "--name", "style"], ["verify"], ["gc"]):
            code, _, err = run_cli(*args)
            assert code == 1 and "not a folder" in err and "Traceback" not in err, (args, err)
            assert err.count("\n") == 1
    assert home.read_text() == "not a folder"


# --- names and numbers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["style@" + "9" * 25, "style@²", "style@" + "7" * 5000, "style@0", "style@-1"])
def test_version_numbers_out_of_range_are_refused(ref, lorastack_home):
    with pytest.raises(InvalidNameError, match="must be a number from 1 to 999999999"):
        parse_ref(ref)
    code, _, err = run_cli("show", ref)
    assert code == 1 and err.count("\n") == 1 and len(err) < 300


@pytest.mark.parametrize("name", ["COM1", "lpt9", "con.txt", "me/nul.safetensors", "Aux", "me/conin$", "style."])
def test_windows_device_names_are_refused(registry, files, name):
    with pytest.raises(InvalidNameError):
        registry.import_file(files[0], name)
    assert not registry.root.exists()


def test_search_is_literal_and_unicode(registry, files):
    registry.import_file(files[0], "cafe", trigger_words=["café au lait"])
    registry.import_file(files[1], "plain", description="100% cotton")
    registry.import_file(files[2], "under_score")

    def found(text):
        return [row["name"] for row in registry.list(search=text)]

    assert found("CAFÉ") == ["cafe"] and found("é au") == ["cafe"]  # non-ASCII, any case
    assert found("_") == ["under_score"] and found("%") == ["plain"]  # no wildcards
    assert found("0% c") == ["plain"] and found("zzz") == []


def test_untrusted_metadata_is_printed_escaped(registry, files, tmp_path, monkeypatch):
    evil = small_adapter(tmp_path / "evil.safetensors", seed=5, trigger="evil\u202etxt.exe",
                         **{"modelspec.description": "bell\x07 and nul\x00 and esc\x1b[2J"})  # fmt: skip
    monkeypatch.setenv("LORASTACK_HOME", str(registry.root.parent))
    run_cli("import", evil, "--name", "evil")
    for args in (["show", "evil"], ["list"], ["inspect", evil]):
        code, out, _ = run_cli(*args)
        assert code == 0
        assert not any(c in out for c in "\u202e\x07\x00\x1b"), (args, out)
    assert "\\u202e" in run_cli("show", "evil")[1] and "\\x1b[2J" in run_cli("inspect", evil)[1]


def test_errors_inside_the_registry_are_one_line(registry, files, monkeypatch):
    """An I/O failure deep inside an import is a RegistryError naming the file, not a traceback."""
    registry.import_file(files[0], "style")
    import errno

    def failing(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error", str(files[1]))

    monkeypatch.setattr(registry.blobs, "stage", failing)
    with pytest.raises(RegistryError, match="a1.safetensors: Input/output error"):
        registry.import_file(files[1], "style")
    monkeypatch.setattr(registry.blobs, "stage", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EROFS, "ro")))
    with pytest.raises(ReadOnlyError):
        registry.import_file(files[1], "style")
    monkeypatch.undo()
    assert listed_and_loadable(registry) == ["style@1"]


def test_a_damaged_version_record_is_a_corrupt_index_error(registry, files):
    import sqlite3

    registry.import_file(files[0], "style")
    registry.close()
    conn = sqlite3.connect(registry.index_path)
    conn.execute("UPDATE versions SET metadata = '{not json'")
    conn.commit()
    conn.close()
    with pytest.raises(CorruptIndexError, match="style@1 is damaged"):
        Registry(registry.root).resolve("style")


def test_registry_adapters_record_their_tensor_hash(registry, tiny_sd1_dir, tiny_sd1_pipe, tmp_path):
    """Blobs have no .safetensors suffix; recipes and A1111's Lora hashes must still get the tensor-data hash."""
    from safetensors.torch import save_file

    from lorastack.core import AdapterStack
    from lorastack.core.recipe import a1111_parameters
    from lorastack.core.sources import resolve_adapter
    from lorastack.testing.adapters import make_kohya_lora

    source = tmp_path / "tiny.safetensors"
    save_file(make_kohya_lora(tiny_sd1_pipe, seed=3), str(source))
    version = registry.import_file(source, "style").version
    path, label = resolve_adapter("style", registry)
    stack = AdapterStack(tiny_sd1_pipe)
    stack.load("style", path, label=label)
    recorded = version.files[0].tensor_sha256
    assert stack.get("style").tensor_sha256 == recorded != version.files[0].sha256
    recipe = {"prompt": "p", "steps": 1, "scheduler": "s", "guidance": 1.0, "seed": 0, "width": 8, "height": 8,
              "base": {"digest": "sha256:" + "0" * 64, "source": "b"},
              "adapters": [{"name": "style", "tensor_sha256": stack.get("style").tensor_sha256}]}  # fmt: skip
    assert f'Lora hashes: "style: {recorded[:12]}"' in a1111_parameters(recipe)


# --- found by trying: odd files, odd registry states, waiting -------------------------------------------------


@pytest.fixture
def alarm():
    """Fail a test that would hang (the bugs below hung for ever) instead of blocking the run."""
    import signal

    def timeout(*_):
        raise TimeoutError("hung")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_only_regular_files_are_read(registry, tmp_path, alarm, monkeypatch):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    monkeypatch.setenv("LORASTACK_HOME", str(registry.root.parent))
    for args, kind in (
        (["import", fifo, "--name", "f"], "is a FIFO (named pipe), not a file"),
        (["import", "/dev/zero", "--name", "z"], "is a character device, not a file"),
        (["inspect", fifo], "is a FIFO (named pipe), not a file"),
    ):
        code, _, err = run_cli(*args)
        assert code == 1 and kind in err, (args, err)
    assert not any(registry.blobs.tmp.glob("*")) if registry.blobs.tmp.exists() else True


def test_a_large_file_that_is_no_adapter_is_refused_before_it_is_copied(registry, tmp_path):
    big = tmp_path / "big.safetensors"
    with open(big, "wb") as f:
        f.truncate(20 << 30)  # 20 GB of (sparse) zeros
    start = time.monotonic()
    with pytest.raises(Exception, match="big.safetensors: header is not valid JSON"):
        registry.import_file(big, "big")
    assert time.monotonic() - start < 10 and not list(registry.blobs.temp_files())


def test_errors_name_the_users_file_not_the_private_copy(registry, tmp_path):
    empty = tmp_path / "e.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(Exception) as caught:
        registry.import_file(empty, "e")
    assert str(caught.value) == f"{empty}: file is empty"


def test_reads_never_wait_for_an_import_in_flight(registry, files):
    registry.import_file(files[0], "style")
    staged, release = threading.Event(), threading.Event()
    result = {}

    def importer():
        mine = Registry(registry.root)
        real_commit = mine.blobs.commit

        def slow_commit(blob):
            staged.set()
            release.wait(20)
            return real_commit(blob)

        mine.blobs.commit = slow_commit
        result["import"] = mine.import_file(files[1], "other")

    def reader():
        mine = Registry(registry.root)
        result["list"] = [row["ref"] for row in mine.list()]
        result["tag"] = mine.tag("style@1", "best").ref

    background = threading.Thread(target=importer)
    background.start()
    assert staged.wait(10)
    reading = threading.Thread(target=reader)
    reading.start()
    reading.join(10)
    finished = not reading.is_alive()
    release.set()
    background.join(10)
    reading.join(10)
    assert finished, "list and tag waited for an import in flight"
    assert result["list"] == ["style@1"] and result["tag"] == "style@1" and result["import"].created


def test_odd_entries_in_blobs_and_tmp_are_repaired_or_swept(registry, files):
    version = registry.import_file(files[0], "style").version
    blob = registry.blobs.path(version.files[0].sha256)
    blob.unlink()
    blob.mkdir()  # a folder where the blob should be
    assert registry.verify().corrupt == [version.files[0].sha256]
    registry.import_file(files[0], "again")  # the good bytes replace it
    assert blob.is_file() and registry.verify().clean
    link = registry.blobs.path("cd" * 32)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(files[1])  # a link in blobs/ is never followed
    (registry.blobs.tmp / "dangling").symlink_to("/nonexistent")
    (registry.blobs.tmp / "to-a-folder").symlink_to(files[0].parent)
    report = registry.gc(grace=0)
    assert sorted(report.temp) == ["dangling", "to-a-folder"] and report.blobs == ["cd" * 32]
    assert files[0].parent.is_dir() and files[1].exists()  # what the links pointed at is untouched
    assert not any(registry.blobs.tmp.iterdir()) and not os.path.lexists(link)
    registry.remove("style", all_versions=True)
    assert listed_and_loadable(registry) == ["again@1"]


@pytest.mark.parametrize(
    "column, value, problem",
    [
        ("created_at", "'x'", "created_at is not a time"),
        ("created_at", "1e300", "created_at is not a time"),
        ("provenance", "'[1]'", "provenance is not a JSON dict"),
        ("alpha", "'abc'", "alpha is not a number"),
        ("trigger_words", "'[1]'", "trigger_words holds something other than text"),
    ],
)
def test_damaged_record_fields_are_one_line_and_verify_finds_them(
    registry, files, monkeypatch, column, value, problem
):
    import sqlite3

    registry.import_file(files[0], "style")
    registry.close()
    conn = sqlite3.connect(registry.index_path)
    conn.execute(f"UPDATE versions SET {column} = {value}")
    conn.commit()
    conn.close()
    monkeypatch.setenv("LORASTACK_HOME", str(registry.root.parent))
    code, _, err = run_cli("show", "style")
    assert code == 1 and problem in err and err.count("\n") == 1, err
    code, _, err = run_cli("list")  # works when the damage is in what it does not show, else says so
    assert code == 0 or (code == 1 and problem in err and err.count("\n") == 1), err
    code, out, _ = run_cli("verify")
    assert code == 1 and problem in out


@needs_unshare
def test_a_read_only_registry_shows_what_its_wal_holds(tmp_path, files):
    """Committed versions still in the WAL (a process killed before its checkpoint) show on a read-only mount."""
    home = tmp_path / "home"
    registry = Registry(home / "registry")
    registry.import_file(files[0], "a")
    registry.close()
    env = {**os.environ, "LORASTACK_HOME": str(home), "LORASTACK_CRASH_AT": "registry.import.after-commit"}
    killed = subprocess.run([*CLI, "import", str(files[1]), "--name", "b"], env=env, capture_output=True)
    assert killed.returncode == -9 and (home / "registry" / "index.sqlite-wal").stat().st_size > 0
    (home / "registry" / "index.sqlite-shm").unlink()
    shell = 'mount --bind "$H" "$H" && mount -o remount,bind,ro "$H"\n$CLI list --json\n'
    done = in_namespace(shell, {"LORASTACK_HOME": str(home), "H": str(home)})
    assert done.returncode == 0, done.stderr
    assert [row["ref"] for row in json.loads(done.stdout)] == ["a@1", "b@1"]


def test_details_are_bounded_and_text(registry, files):
    from lorastack.registry import InvalidValueError

    for kwargs, message in (
        ({"trigger_words": [f"w{i}" for i in range(1001)]}, "at most 1000 are kept"),
        ({"description": "x" * 100_001}, "description must be text of at most 100000"),
        ({"base_model": "m" * 1001}, "base model must be text of at most 1000"),
        ({"description": "a\udcffb"}, "description holds bytes that are not UTF-8"),
    ):
        with pytest.raises(InvalidValueError, match=message):
            registry.import_file(files[0], "style", **kwargs)
    with pytest.raises(InvalidValueError, match="--search text must be UTF-8"):
        registry.list(search="a\udcffb")
    assert registry.list() == []


def test_nothing_is_written_into_the_registry_folder(registry, files, monkeypatch):
    version = registry.import_file(files[0], "style").version
    monkeypatch.setenv("LORASTACK_HOME", str(registry.root.parent))
    blob = registry.blobs.path(version.files[0].sha256)
    link = files[0].parent / "link.safetensors"
    link.symlink_to(blob)
    for output in (registry.index_path, link):
        code, _, err = run_cli("convert", files[1], "--to", "kohya", "-o", output, "--force")
        assert code == 2 and "inside the registry folder" in err, err
        with pytest.raises(ConflictError, match="inside the registry folder"):
            registry.export("style", output, overwrite=True)
    assert registry.verify().clean


def test_gc_refuses_a_grace_that_is_not_a_number(registry, files, monkeypatch):
    monkeypatch.setenv("LORASTACK_HOME", str(registry.root.parent))
    code, _, err = run_cli("gc", "--grace", "nan")
    assert code == 2 and "--grace" in err


def test_an_index_that_is_not_a_file(registry, monkeypatch):
    registry.root.mkdir(parents=True)
    registry.index_path.mkdir()
    monkeypatch.setenv("LORASTACK_HOME", str(registry.root.parent))
    code, _, err = run_cli("list")
    assert code == 1 and "index.sqlite: is not a file" in err


def test_verify_without_an_index_reports_the_blobs_it_cannot_name(registry, files):
    registry.import_file(files[0], "style")
    registry.close()
    registry.index_path.unlink()
    report = Registry(registry.root).verify()
    assert not report.clean and len(report.extra) == 1 and "index.sqlite is missing" in report.index[0]


def test_control_characters_in_error_messages_are_escaped(tmp_path, monkeypatch, lorastack_home):
    odd = tmp_path / "e\nx\x1b[31m.safetensors"
    odd.write_bytes(b"")
    code, _, err = run_cli("inspect", odd)
    assert code == 1 and "\x1b" not in err and err.count("\n") == 1 and "\\x1b[31m" in err
