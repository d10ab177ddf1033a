"""What the huggingface_hub client asks of a Hub during lorastack's push and pull, pinned.

If an upgrade of huggingface_hub changes these requests, this test fails: check that the fake Hub in
``lorastack.testing.hub_server`` (and a real Hub) still serve them, then update ``hub_contract.json``.

The opt-in test at the end pushes to and pulls from the real Hub; it runs only with LORASTACK_TEST_HUB_TOKEN and
LORASTACK_TEST_HUB_REPO set, and never in CI.
"""

import json
import os
import re
from pathlib import Path

import pytest

from lorastack.registry import Registry
from lorastack.registry.hub import pull, push
from lorastack.testing.registry import small_adapter

CONTRACT = Path(__file__).with_name("hub_contract.json")


def _calls(hub, start: int) -> list[str]:
    routes = {re.sub(r"alice/fig", "{repo}", f"{c.route} -> {c.status}") for c in hub.log[start:]}
    return sorted(r for r in routes if "agent-harnesses" not in r)  # a client probe the Hub may or may not serve


def test_the_client_calls_the_endpoints_the_fake_hub_serves(hub_server, tmp_path):
    registry = Registry(tmp_path / "a")
    for seed in (1, 2):
        registry.import_file(small_adapter(tmp_path / f"f{seed}.safetensors", seed=seed, trigger="tok"), "me/fig")
    registry.tag("me/fig@1", "best")
    observed = {}
    start = len(hub_server.log)
    push(registry, "me/fig", "alice/fig", all_versions=True)
    observed["push"], start = _calls(hub_server, start), len(hub_server.log)
    push(registry, "me/fig", "alice/fig", all_versions=True)
    observed["push unchanged"], start = _calls(hub_server, start), len(hub_server.log)
    pull(Registry(tmp_path / "b"), "alice/fig", all_versions=True)
    observed["pull all versions"] = _calls(hub_server, start)
    if os.environ.get("LORASTACK_UPDATE_HUB_CONTRACT"):
        CONTRACT.write_text(json.dumps(observed, indent=2) + "\n")
    expected = json.loads(CONTRACT.read_text())
    assert observed == expected, (
        "huggingface_hub now makes other requests; check the fake Hub serves them, then rerun with "
        "LORASTACK_UPDATE_HUB_CONTRACT=1:\n" + json.dumps(observed, indent=2)
    )
    assert all("-> 5" not in call for calls in observed.values() for call in calls)


@pytest.mark.skipif(
    not (os.environ.get("LORASTACK_TEST_HUB_TOKEN") and os.environ.get("LORASTACK_TEST_HUB_REPO")),
    reason="talks to the real Hub: set LORASTACK_TEST_HUB_TOKEN and LORASTACK_TEST_HUB_REPO (owner/name) to run",
)
def test_push_and_pull_on_the_real_hub(tmp_path, monkeypatch):  # pragma: no cover - never in CI
    monkeypatch.setenv("HF_TOKEN", os.environ["LORASTACK_TEST_HUB_TOKEN"])
    repo = os.environ["LORASTACK_TEST_HUB_REPO"]
    registry = Registry(tmp_path / "a")
    registry.import_file(small_adapter(tmp_path / "f.safetensors", seed=7, trigger="tok"), "me/fig")
    push(registry, "me/fig", repo, private=True, endpoint="https://huggingface.co")
    other = Registry(tmp_path / "b")
    imported = pull(other, f"{repo}@v1", endpoint="https://huggingface.co").versions[0][0]
    assert imported.version.files[0].tensor_sha256 == registry.resolve("me/fig").files[0].tensor_sha256
