"""The adapter cache: 50 switches among a few adapters read each file once; a budget in bytes; changed files."""

import os

import pytest
from adapter_cases import make_case

import lorastack.core.adapter_cache as adapter_cache
from lorastack.core.adapter_cache import AdapterCache, adapter_bytes
from lorastack.core.errors import ConfigError
from lorastack.core.stack import AdapterStack


@pytest.fixture
def counted(monkeypatch):
    """Every file read the cache makes: hashing and parsing, by path."""
    reads: list[tuple[str, str]] = []
    real_read, real_hash = adapter_cache.read_adapter, adapter_cache.file_sha256

    def read(path, **kwargs):
        reads.append(("parse", os.path.basename(path)))
        return real_read(path, **kwargs)

    def digest(path):
        reads.append(("hash", os.path.basename(path)))
        return real_hash(path)

    monkeypatch.setattr(adapter_cache, "read_adapter", read)
    monkeypatch.setattr(adapter_cache, "file_sha256", digest)
    return reads


def test_fifty_switches_read_each_file_once(tiny_sd1_pipe, tmp_path, counted):
    pipe = tiny_sd1_pipe
    files = [make_case(pipe, "kohya", tmp_path / f"a{i}.safetensors", seed=i) for i in range(4)]
    cache = AdapterCache()
    stack = AdapterStack(pipe)
    for i in range(50):  # a server's requests: each loads its adapter, generates, unloads
        path = files[(i * 3 + i // 4) % len(files)]
        stack.load("current", cache.read(path))
        if i % 10 == 0:
            stack.activate({"current": 0.8})
        stack.unload("current")
    assert sorted(counted) == sorted([("hash", f.name) for f in files] + [("parse", f.name) for f in files])
    assert cache.stats.hits == 46 and cache.stats.misses == 4 and len(cache) == 4


def test_budget_evicts_the_least_recently_used(tiny_sd1_pipe, tmp_path, counted):
    files = [make_case(tiny_sd1_pipe, "kohya", tmp_path / f"b{i}.safetensors", seed=i) for i in range(3)]
    size = adapter_bytes(AdapterCache().read(files[0]))
    counted.clear()
    cache = AdapterCache(max_bytes=2 * size)
    a = cache.read(files[0])
    cache.read(files[1])
    assert cache.read(files[0]) is a  # a hit; b1 is now the least recently used
    cache.read(files[2])  # over budget: b1 goes
    assert cache.stats.evicted == 1 and cache.bytes <= 2 * size and len(cache) == 2
    counted.clear()
    cache.read(files[0])
    cache.read(files[1])
    assert counted == [("parse", "b1.safetensors")]  # b0 was kept, b1 is read again (its hash is remembered)


def test_same_bytes_under_two_paths_and_a_changed_file(tiny_sd1_pipe, tmp_path, counted):
    path = make_case(tiny_sd1_pipe, "kohya", tmp_path / "c.safetensors", seed=1)
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(path.read_bytes())
    cache = AdapterCache()
    first = cache.read(path)
    assert cache.read(copy) is first and [k for k, _ in counted] == ["hash", "parse", "hash"]
    make_case(tiny_sd1_pipe, "kohya", path, seed=2)  # rewritten in place: new contents
    os.utime(path, ns=(1, 1))
    assert cache.read(path) is not first and cache.stats.parsed == 2
    known = cache.read(copy, sha256="0" * 64)  # a caller's hash is trusted, the file not hashed
    assert known is not first and counted[-1] == ("parse", "copy.safetensors")


def test_bad_budget_and_hash_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="budget -1 is not a whole number of bytes"):
        AdapterCache(-1)
    with pytest.raises(ConfigError, match="'xyz' is not a sha256"):
        AdapterCache().read(tmp_path / "x.safetensors", sha256="xyz")
