"""The registry's own files and folders give one-line errors and stay readable: damaged indexes and version records,
read-only mounts and registries of another user, a full disk, a home that is a file, odd entries in ``blobs/`` and
``tmp/``, a WAL left by a killed process, outputs inside the registry folder, and a missing or odd index.

One test per way the registry was found to break; each fails without its fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from cli_helpers import run_cli
from registry_helpers import listed_and_loadable
from sandbox import CLI, as_nobody, in_namespace, needs_unshare

from lorastack.registry import ConflictError, Registry
from lorastack.registry.errors import CorruptIndexError
from lorastack.testing.registry import small_adapter


@pytest.fixture
def files(tmp_path):
    return [small_adapter(tmp_path / f"a{i}.safetensors", seed=i, trigger=f"tok{i}") for i in range(4)]


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
    assert code == 1 or column not in ("created_at", "trigger_words")  # what list shows is checked (in its query)
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


@pytest.mark.parametrize(
    "value", ["'[1]'", "'not json'", "'[[\"a\"]]'", '\'{"a": "b"}\'', "x'5b5d'", "'[\"a\", null]'"]
)
def test_list_checks_the_trigger_words_it_shows(registry, files, value):
    """The listing checks its rows in its query: trigger words that are not a JSON list of text are refused."""
    import sqlite3

    registry.import_file(files[0], "style")
    registry.import_file(files[1], "other", trigger_words=["fine", "words"])
    registry.close()
    conn = sqlite3.connect(registry.index_path)
    conn.execute(f"UPDATE versions SET trigger_words = {value} WHERE adapter_id = (SELECT id FROM adapters "
                 "WHERE name = 'style')")  # fmt: skip
    conn.commit()
    conn.close()
    with pytest.raises(CorruptIndexError, match="style@1 is damaged .trigger_words holds something other than text"):
        Registry(registry.root).list()
    assert Registry(registry.root).list(search="fine")[0]["trigger_words"] == ["fine", "words"]
