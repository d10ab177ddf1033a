"""Odd inputs to the registry give one-line errors or the right answer: version numbers out of range, Windows
device names, literal and Unicode search, untrusted metadata printed escaped, I/O failures inside an import, tensor
hashes of stored blobs, FIFOs, devices and large non-adapter files, unbounded details, and control characters.

One test per way the registry was found to break; each fails without its fix.
"""

from __future__ import annotations

import os
import time

import pytest
from cli_helpers import run_cli
from registry_helpers import listed_and_loadable

from lorastack.registry import InvalidNameError, ReadOnlyError, RegistryError, parse_ref
from lorastack.testing.registry import small_adapter


@pytest.fixture
def files(tmp_path):
    return [small_adapter(tmp_path / f"a{i}.safetensors", seed=i, trigger=f"tok{i}") for i in range(4)]


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


# --- odd input files, odd values --------------------------------------------------------------------------------


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


def test_gc_refuses_a_grace_that_is_not_a_number(registry, files, monkeypatch):
    monkeypatch.setenv("LORASTACK_HOME", str(registry.root.parent))
    code, _, err = run_cli("gc", "--grace", "nan")
    assert code == 2 and "--grace" in err


def test_control_characters_in_error_messages_are_escaped(tmp_path, monkeypatch, lorastack_home):
    odd = tmp_path / "e\nx\x1b[31m.safetensors"
    odd.write_bytes(b"")
    code, _, err = run_cli("inspect", odd)
    assert code == 1 and "\x1b" not in err and err.count("\n") == 1 and "\\x1b[31m" in err
