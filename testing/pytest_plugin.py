"""pytest plugin: offline Stable Diffusion fixtures for lorastack and for plugin authors.

Installed with lorastack (entry point ``pytest11``), so any test suite in the same environment can use:

* ``tiny_sd1_dir`` / ``tiny_sdxl_dir`` — session-scoped folders holding tiny pipelines saved with
  ``save_pretrained`` (built once per session, deterministic);
* ``tiny_sd1_pipe`` / ``tiny_sdxl_pipe`` — a fresh pipeline loaded from that folder with ``from_pretrained`` for each
  test, so a test may patch it freely;
* ``tiny_pipe_dir`` — a factory ``tiny_pipe_dir("sd1" | "sdxl" | "flux" | "flux-schnell" | "sd3" | "sd3.5")``;
* ``tiny_flux_dir`` / ``tiny_sd3_dir`` and ``tiny_flux_pipe`` / ``tiny_sd3_pipe`` — the same for FLUX.1 dev and
  SD3.5 Medium style pipelines;
* ``civitai_server`` — a fake Civitai API on 127.0.0.1 that ``LORASTACK_CIVITAI_ENDPOINT`` points at, for testing
  metadata sources.

Heavy imports happen inside the fixtures, so merely having lorastack installed costs other test suites nothing.
"""

from __future__ import annotations

import os

import pytest


def pytest_configure(config):
    # Tests never reach the network; huggingface_hub reads this when first imported.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def tiny_pipe_dir(tmp_path_factory):
    """Factory: the saved folder of the tiny pipeline of a family (one of ``models.TINY_FAMILIES``),
    built once."""
    built: dict[str, object] = {}

    def get(family: str = "sd1"):
        if family not in built:
            from lorastack.testing.models import save_tiny_pipeline

            built[family] = save_tiny_pipeline(tmp_path_factory.mktemp(f"tiny-{family}"), family)
        return built[family]

    return get


@pytest.fixture(scope="session")
def tiny_sd1_dir(tiny_pipe_dir):
    return tiny_pipe_dir("sd1")


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tiny_pipe_dir):
    return tiny_pipe_dir("sdxl")


@pytest.fixture(scope="session")
def tiny_flux_dir(tiny_pipe_dir):
    return tiny_pipe_dir("flux")


@pytest.fixture(scope="session")
def tiny_sd3_dir(tiny_pipe_dir):
    return tiny_pipe_dir("sd3.5")


def _load(folder):
    from lorastack.testing.models import load_pipeline

    pipe = load_pipeline(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def tiny_sd1_pipe(tiny_sd1_dir):
    return _load(tiny_sd1_dir)


@pytest.fixture
def tiny_sdxl_pipe(tiny_sdxl_dir):
    return _load(tiny_sdxl_dir)


@pytest.fixture
def tiny_flux_pipe(tiny_flux_dir):
    return _load(tiny_flux_dir)


@pytest.fixture
def tiny_sd3_pipe(tiny_sd3_dir):
    return _load(tiny_sd3_dir)


@pytest.fixture
def lorastack_home(tmp_path, monkeypatch):
    """A fresh ``LORASTACK_HOME`` (registry and caches) for one test."""
    home = tmp_path / "lorastack-home"
    monkeypatch.setenv("LORASTACK_HOME", str(home))
    return home


@pytest.fixture
def registry(lorastack_home):
    """An empty :class:`lorastack.registry.Registry` in a fresh ``LORASTACK_HOME``."""
    from lorastack.registry import Registry

    reg = Registry()
    yield reg
    reg.close()


@pytest.fixture
def hub_server_factory(tmp_path, monkeypatch):
    """Factory: ``hub_server_factory(token=..., read_only_token=...)`` starts a :class:`FakeHub` on 127.0.0.1 and
    points the real ``huggingface_hub`` client at it (endpoint, Xet off, a temporary ``HF_HOME``)."""
    from lorastack.testing.hub_server import FakeHub, point_client_at

    started = []

    def make(**kwargs):
        hub = FakeHub(**kwargs).start()
        point_client_at(hub.url, tmp_path / "hf-home", monkeypatch)
        started.append(hub)
        return hub

    yield make
    for hub in started:
        hub.stop()


@pytest.fixture
def hub_server(hub_server_factory):
    """A Hub-API server on 127.0.0.1 with the real ``huggingface_hub`` client pointed at it (no token needed)."""
    return hub_server_factory()


@pytest.fixture
def plugin_manager():
    """A freshly loaded plugin manager that lorastack's own lookups use for this test.

    ``plugin_manager.register(obj, "name")`` adds a plugin object (a module or a class instance with ``@hookimpl``
    methods) for this test only; installed plugins load as usual.
    """
    from lorastack.plugins.manager import get_manager, reset_manager

    reset_manager()
    try:
        yield get_manager()
    finally:
        reset_manager()


@pytest.fixture(scope="session")
def tiny_blip_dir(tmp_path_factory):
    """A tiny random-weight BLIP captioning checkpoint (model and processor) saved with ``save_pretrained``."""
    from lorastack.testing.blip import make_tiny_blip

    return make_tiny_blip(tmp_path_factory.mktemp("tiny-blip"))


@pytest.fixture
def civitai_server(monkeypatch):
    """A fake Civitai API on 127.0.0.1 (:class:`lorastack.testing.civitai_server.FakeCivitai`), with
    ``LORASTACK_CIVITAI_ENDPOINT`` pointed at it, ``CIVITAI_API_TOKEN`` unset and a short time budget."""
    from lorastack.testing.civitai_server import FakeCivitai

    server = FakeCivitai().start()
    monkeypatch.setenv("LORASTACK_CIVITAI_ENDPOINT", server.url)
    monkeypatch.delenv("CIVITAI_API_TOKEN", raising=False)
    monkeypatch.setenv("LORASTACK_CIVITAI_TIMEOUT", "10")
    yield server
    server.stop()
