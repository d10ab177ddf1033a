import os
import tempfile

# huggingface_hub reads these when first imported: keep every test offline and quiet.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# Never touch the user's own lorastack folders or config.
_SESSION_HOME = tempfile.mkdtemp(prefix="lorastack-test-home-")
os.environ["LORASTACK_HOME"] = _SESSION_HOME
os.environ["LORASTACK_CONFIG"] = os.path.join(_SESSION_HOME, "no-config.toml")
# Parallel workers share the cores: each worker (and every process it starts, which inherits the variables) gets its
# share of them, as torch's default of one thread per core in every worker oversubscribes the machine and makes
# compute-heavy tests several times slower.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _THREADS = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ["OMP_NUM_THREADS"] = _THREADS
    os.environ["MKL_NUM_THREADS"] = _THREADS

import pytest  # noqa: E402

#: fixtures shared by several test modules (no_load, stop_at_load; a module's own `data` fixture wins over this one)
pytest_plugins = ["generate_helpers"]

RUN_SLOW = os.environ.get("RUN_SLOW", "") not in ("", "0")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "third_party_plugins: installed third-party lorastack plugins load (by default only the built-ins)"
    )


@pytest.fixture(autouse=True)
def _builtin_plugins_only(request, monkeypatch):
    """Only lorastack's own plugins load, not the installed example plugin or anything else, so a test sees the same
    plugins on every machine. A test opts in with the ``third_party_plugins`` marker, or by setting
    ``LORASTACK_LOAD_PLUGINS`` itself; the plugin manager is loaded afresh around each test."""
    from lorastack.plugins.manager import reset_manager

    if request.node.get_closest_marker("third_party_plugins") is None:
        monkeypatch.setenv("LORASTACK_LOAD_PLUGINS", "")
    reset_manager()
    yield
    reset_manager()


def pytest_collection_modifyitems(config, items):
    if RUN_SLOW:
        return
    skip = pytest.mark.skip(reason="slow: set RUN_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords or "fullsize" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _flush_subnormals():
    """The test models' random weights produce subnormal floats, which slow CPU math by an order of magnitude or
    more; the product never meets them in trained weights, so tests flush them to zero (tests that compare this
    process with a child process, which does not flush, turn it off for themselves)."""
    import torch

    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


@pytest.fixture(autouse=True, scope="session")
def _quiet_libraries():
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
