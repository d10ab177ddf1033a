"""The built-in `civitai` metadata source against the fake Civitai over real HTTP on 127.0.0.1: bulk and single
lookups, 429 then success, 5xx, malformed JSON, unknown hashes, a hanging source, and the token kept secret."""

from __future__ import annotations

import io
import json
import logging
import time

import pytest
from cli_helpers import run_cli
from PIL import Image

from lorastack.core.enrich import enrich
from lorastack.registry.metadata import get_metadata, set_metadata
from lorastack.registry.previews import list_previews
from lorastack.testing.registry import small_adapter

TOKEN = "tok-SECRET-4242"
BULK = r"^POST /api/v1/model-versions/by-hash$"


def _png(colour=(20, 40, 220)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def three(registry, tmp_path, plugin_manager):
    """Three imported versions: refs and their file sha256."""
    out = {}
    for i, name in enumerate(("me/a", "me/b", "me/c")):
        version = registry.import_file(small_adapter(tmp_path / f"{i}.safetensors", seed=i), name).version
        out[version.ref] = version.adapter_file.sha256
    return out


def test_bulk_lookup_fills_values_and_previews_with_their_source(registry, three, civitai_server):
    (a, sha_a), (b, sha_b), (c, _) = three.items()
    civitai_server.add(sha_a, trained_words=["zxc, red hair", "zxc armour"], base_model="Pony", tags=["character"],
                       images=[_png()])  # fmt: skip
    civitai_server.add(sha_b, base_model="Flux.1 D", name="Flux Thing")
    progress = []
    report = enrich(registry, sources=["civitai"], on_progress=lambda *p: progress.append(p))
    (summary,) = report.sources
    assert (summary.asked, summary.found, summary.unknown, summary.failed) == (3, 2, 1, 0)
    assert progress[-1] == ("civitai", len(progress), len(progress)) and len(progress) >= 2  # one step per answer
    assert [c.route for c in civitai_server.log if "by-hash" in c.route] == ["POST /api/v1/model-versions/by-hash"]
    values = get_metadata(registry, a)
    assert values["trigger_groups"].value == [["zxc", "red hair"], ["zxc armour"]]
    assert {values[f].source for f in ("trigger_groups", "lineage", "air", "civitai_version_id")} == {"civitai"}
    assert values["lineage"].value == "Pony" and values["air"].value.startswith("urn:air:sdxl:lora:civitai:")
    assert get_metadata(registry, b)["lineage"].value == "FLUX.1-dev"
    (preview,) = list_previews(registry, a)
    assert preview.source == "civitai" and preview.url.startswith(civitai_server.url + "/images/")
    assert registry.blobs.path(preview.sha256).read_bytes() == _png()
    assert "civitai_version_id" not in get_metadata(registry, c)
    # a second run asks only about the version Civitai did not know
    again = enrich(registry, sources=["civitai"])
    assert again.sources[0].asked == 1 and again.sources[0].unknown == 1


def test_a_single_file_is_looked_up_by_get(registry, three, civitai_server):
    ref, sha = next(iter(three.items()))
    civitai_server.add(sha, trained_words=["one"])
    report = enrich(registry, [ref], sources=["civitai"])
    assert report.sources[0].found == 1
    assert [c.route for c in civitai_server.log] == ["GET /api/v1/model-versions/by-hash/{oid}"]


def test_a_rate_limit_then_success_is_retried(registry, three, civitai_server):
    ref, sha = next(iter(three.items()))
    civitai_server.add(sha, trained_words=["after wait"])
    civitai_server.fail(BULK, status=429, times=2, retry_after=0)
    report = enrich(registry, sources=["civitai"])
    assert report.sources[0].found == 1 and report.sources[0].errors == []
    assert [c.status for c in civitai_server.calls("POST")] == [429, 429, 200]
    assert get_metadata(registry, ref)["trigger_groups"].value == [["after wait"]]


def test_server_errors_until_the_budget_runs_out_fail_the_items_with_a_summary(registry, three, civitai_server,
                                                                                monkeypatch):  # fmt: skip
    monkeypatch.setenv("LORASTACK_CIVITAI_TIMEOUT", "2")
    civitai_server.fail(BULK, status=503, times=1000)
    started = time.monotonic()
    report = enrich(registry, sources=["civitai"])
    assert time.monotonic() - started < 6  # bounded in time, not in tries
    summary = report.sources[0]
    assert summary.failed == 3 and len(civitai_server.calls("POST")) >= 2
    assert all("kept failing" in e and "HTTP 503" in e for e in summary.errors)
    assert registry.list()  # local use goes on


def test_malformed_json_fails_without_retrying(registry, three, civitai_server):
    civitai_server.fail(BULK, status=200, body=b"<html>maintenance</html>")
    summary = enrich(registry, sources=["civitai"]).sources[0]
    assert summary.failed == 3 and all("not JSON" in e for e in summary.errors)
    assert len(civitai_server.calls("POST")) == 1


def test_a_wrong_shaped_answer_and_wrong_values_are_reported(registry, three, civitai_server):
    ref, sha = next(iter(three.items()))
    record = civitai_server.add(sha, trained_words=["fine"])
    record["baseModel"] = "x" * 5000  # too long: that value is skipped, the others kept
    summary = enrich(registry, [ref], sources=["civitai"]).sources[0]
    assert summary.found == 1 and any("wrong value" in e and "base model" in e for e in summary.errors)
    assert get_metadata(registry, ref)["trigger_groups"].value == [["fine"]]
    civitai_server.fail(BULK, status=200, body=json.dumps({"not": "a list"}).encode())
    summary = enrich(registry, list(three), sources=["civitai"]).sources[0]
    assert summary.failed == 3 and "not a list" in summary.errors[0]


def test_a_user_value_is_kept_unless_asked(registry, three, civitai_server):
    ref, sha = next(iter(three.items()))
    civitai_server.add(sha, trained_words=["theirs"])
    set_metadata(registry, ref, {"trigger_groups": [["mine"]]}, "user")
    assert enrich(registry, [ref], sources=["civitai"]).sources[0].kept == 1
    assert get_metadata(registry, ref)["trigger_groups"].value == [["mine"]]
    enrich(registry, [ref], sources=["civitai"], overwrite=True)
    assert get_metadata(registry, ref)["trigger_groups"].value == [["theirs"]]


def test_the_token_is_sent_to_civitai_only_and_never_kept_logged_or_printed(
    registry, three, civitai_server, monkeypatch, caplog, lorastack_home
):
    civitai_server.token = TOKEN
    monkeypatch.setenv("CIVITAI_API_TOKEN", TOKEN)
    monkeypatch.setenv("LORASTACK_CIVITAI_TIMEOUT", "2")
    (a, sha_a), *_ = three.items()
    civitai_server.add(sha_a, trained_words=["zxc"], images=[_png()])
    caplog.set_level(logging.DEBUG)
    code, out, err = run_cli("enrich", "--source", "civitai", "--json")
    assert code == 0, err
    assert json.loads(out)["sources"][0]["found"] == 1
    assert {auth for _, auth in civitai_server.authorizations} == {f"Bearer {TOKEN}"}
    # a refused token: the message says so without the token
    civitai_server.token = "another"
    code, out, err = run_cli("enrich", a, "--source", "civitai")
    assert code == 0 and "refused" in out and TOKEN not in out + err
    registry.close()
    stored = b"".join(p.read_bytes() for p in lorastack_home.rglob("*") if p.is_file())
    assert TOKEN.encode() not in stored and TOKEN not in caplog.text and TOKEN not in out + err


def test_the_token_is_not_sent_to_an_image_host(registry, three, civitai_server, monkeypatch):
    from lorastack.testing.civitai_server import FakeCivitai

    images = FakeCivitai().start()
    try:
        monkeypatch.setenv("CIVITAI_API_TOKEN", TOKEN)
        ref, sha = next(iter(three.items()))
        record = civitai_server.add(sha)
        images.images["x.png"] = _png()
        record["images"] = [{"url": f"{images.url}/images/x.png", "type": "image"}]
        assert enrich(registry, [ref], sources=["civitai"]).sources[0].previews == 1
        assert [auth for _, auth in images.authorizations] == [None]
    finally:
        images.stop()


def test_a_source_that_hangs_is_left_behind(registry, three, civitai_server, plugin_manager):
    from lorastack.plugins.api import hookimpl

    class Hangs:
        name, description, options = "hangs", "Never answers.", ()

        def lookup(self, items, options):
            time.sleep(30)
            yield from ()

        def fetch_preview(self, url, limit):
            raise AssertionError

    class Plugin:
        @hookimpl
        def register_metadata_sources(self, register):
            register(Hangs())

    plugin_manager.register(Plugin(), "hanging-plugin")
    started = time.monotonic()
    report = enrich(registry, sources=["hangs"], deadline=0.5)
    assert time.monotonic() - started < 3 and report.sources[0].timed_out
    assert "no answer within 0.5 s" in report.sources[0].errors[0]
    set_metadata(registry, next(iter(three)), {"notes": "the registry is not held"}, "user")


def test_an_unreachable_endpoint_and_a_bad_endpoint_are_one_line(registry, three, civitai_server, monkeypatch):
    monkeypatch.setenv("LORASTACK_CIVITAI_TIMEOUT", "1")
    monkeypatch.setenv("LORASTACK_CIVITAI_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    summary = enrich(registry, sources=["civitai"]).sources[0]
    assert summary.failed == 3 and "until the time allowed ran out" in summary.errors[0]
    monkeypatch.setenv("LORASTACK_CIVITAI_ENDPOINT", "ftp://example")
    summary = enrich(registry, sources=["civitai"]).sources[0]
    assert "LORASTACK_CIVITAI_ENDPOINT='ftp://example' is not an http(s) address" in summary.errors[0]
