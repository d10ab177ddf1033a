"""Generation, compare, sweep and training jobs through the API on the toy base; job records across restarts and
kills."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient
from web_helpers import HEADERS, wait

from lorastack.web.app import create_app
from lorastack.web.jobs import JobStore


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    app = create_app(root / "registry", default_base="toy", folders=[tmp_path_factory.getbasetemp()])
    with TestClient(app) as c:
        yield c, app.state.server


def error(response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    return response.json()["error"]


def recipe(client, url: str) -> dict:
    from PIL import Image

    response = client.get(url)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    return json.loads(image.text["lorastack"])


def generate(client, **body) -> dict:
    response = client.post("/api/generate", json={"prompt": "a red circle on a white background", "steps": 2,
                                                  "seed": 5, **body}, headers=HEADERS)  # fmt: skip
    assert response.status_code == 200, response.text
    done = wait(client, response.json())
    assert done["state"] == "done", done
    return done


def test_a_slider_change_rewrites_only_what_changed_and_keeps_the_base_loaded(served):
    client, server = served
    first = generate(client, adapters=[{"ref": "toy-style", "scale": 0.8}])
    second = generate(client, adapters=[{"ref": "toy-style", "scale": 0.4}])
    same = generate(client, adapters=[{"ref": "toy-style", "scale": 0.4}])
    assert server.studio.loads == 1  # one base load for all three
    assert first["result"]["modules_changed"] > 0
    assert second["result"]["modules_changed"] == first["result"]["modules_changed"]  # that adapter's modules
    assert same["result"]["modules_changed"] == 0
    (image,) = second["result"]["images"]
    kept = recipe(client, image["url"])
    assert kept == image["recipe"] and kept["adapters"][0]["scale"] == 0.4 and kept["seed"] == 5
    assert client.get(first["result"]["images"][0]["url"]).content != client.get(image["url"]).content
    # the same recipe again: the same pixels (reproduce button)
    again = generate(client, adapters=[{"ref": "toy-style", "scale": 0.4}])
    assert client.get(again["result"]["images"][0]["url"]).content == client.get(image["url"]).content


def test_compare_grids_and_weight_sweeps(served):
    client, _ = served
    grid = generate(client, mode="compare", adapters=[{"ref": "toy-style", "scale": 1.0}])
    (image,) = grid["result"]["images"]
    assert image["recipe"]["compare"]["columns"] == ["base", "toy-style"]
    sweep = generate(client, mode="sweep", sweep="toy-style", adapters=[{"ref": "toy-style", "scale": 1.0}])
    images = sweep["result"]["images"]
    assert [i.get("scale") for i in images[:-1]] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
    assert images[-1]["kind"] == "sweep-grid" and {i["recipe"]["seed"] for i in images[:-1]} == {5}
    assert [a["scale"] for a in recipe(client, images[2]["url"])["adapters"]] == [0.5]


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [({"steps": 0}, 400, "steps must be at least 1"), ({"width": 60}, 400, "width"),
     ({"adapters": [{"ref": "me/nothing", "scale": 1}]}, 404, "no adapter named 'me/nothing'"),
     ({"adapters": [{"ref": "toy-style", "scale": 1e9}]}, 400, "scale"),
     ({"base": "/etc"}, 400, "not one this server offers"), ({"mode": "compare"}, 400, "--compare needs"),
     ({"mode": "sweep"}, 400, "sweep"), ({"prompt": "x" * 20_000}, 422, "prompt"), ({"steps": "many"}, 422, "steps"),
     ({"mode": "video"}, 422, "mode"), ({"prompt": "a <lora:x"}, 400, "not closed")],
)  # fmt: skip
def test_bad_generate_requests_are_refused_before_queueing(served, body, status, says):
    client, server = served
    before = len(server.jobs.list(500))
    body = {"prompt": "a red circle", **body}
    assert says in error(client.post("/api/generate", json=body, headers=HEADERS), status)
    assert len(server.jobs.list(500)) == before


def test_job_ids_events_and_cancel(served):
    client, _ = served
    assert "not a job id" in error(client.get("/api/jobs/x"), 400)
    assert error(client.get("/api/jobs/20200101-000000-00000000"), 404)
    job = client.post("/api/generate", json={"prompt": "a blue square", "steps": 2, "seed": 1, "num_images": 2},
                      headers=HEADERS).json()  # fmt: skip
    with client.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
        events = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: ")]
    assert events[-1]["state"] == "done" and len(events[-1]["result"]["images"]) == 2
    assert error(client.get(f"/api/jobs/{job['id']}/files/00000-9.png"), 404)
    assert "not an image name" in error(client.get(f"/api/jobs/{job['id']}/files/jobs.sqlite"), 400)
    assert error(client.get(f"/api/jobs/{job['id']}/files/..%2F..%2Fjobs.sqlite"), 404)  # no route takes a path
    done = client.post(f"/api/jobs/{job['id']}/cancel", headers=HEADERS).json()
    assert done["state"] == "done"  # a finished job stays finished
    assert "only a stopped training job" in error(client.post(f"/api/jobs/{job['id']}/resume", headers=HEADERS), 400)


def test_training_requests_are_checked_before_queueing(served):
    client, server = served
    data = str(server.folders[0])
    unknown = client.post("/api/train", json={"trainer": "nope", "data": data}, headers=HEADERS)
    assert "lora" in error(unknown, 404 if unknown.status_code == 404 else 400)
    bad = client.post("/api/train", json={"trainer": "lora", "data": data, "options": {"rank": 10**9}},
                      headers=HEADERS)  # fmt: skip
    outside = client.post("/api/train", json={"trainer": "lora", "data": "/etc"}, headers=HEADERS)
    assert "'/etc' is not under a folder this server may read" in error(outside, 403)
    assert "rank" in error(bad, 400)
    assert "give data" in error(client.post("/api/train", json={"trainer": "lora"}, headers=HEADERS), 400)
    assert "not an upload id" in error(client.post("/api/train", json={"trainer": "lora", "upload": "../x"},
                                                   headers=HEADERS), 400)  # fmt: skip
    trainers = {t["name"]: t for t in client.get("/api/trainers").json()["trainers"]}
    steps = next(o for o in trainers["lora"]["options"] if o["name"] == "steps")
    assert steps["type"] == "int" and steps["help"] and steps["maximum"]


# --- records across restarts and kills ---------------------------------------------------------------------------
def test_a_restart_marks_unfinished_jobs_and_keeps_finished_ones(tmp_path):
    import threading

    gate = threading.Event()

    def slow(job):
        gate.wait(10)
        return {"ok": True}

    store = JobStore(tmp_path, {"x": lambda job: {"n": job.params["n"]}, "slow": slow})
    first = store.submit("x", {"n": 1})
    import time

    while store.get(first["id"])["state"] != "done":
        time.sleep(0.01)
    running = store.submit("slow", {})
    queued = store.submit("x", {"n": 2})
    while store.get(running["id"])["state"] != "running":
        time.sleep(0.01)
    # a second server on the same folder (the first one's worker is gone as far as it knows)
    again = JobStore(tmp_path, {"x": lambda job: {}, "slow": slow})
    assert again.get(first["id"])["result"] == {"n": 1} and again.get(first["id"])["state"] == "done"
    assert again.get(running["id"])["state"] == again.get(queued["id"])["state"] == "interrupted"
    gate.set()
    store.close()
    again.close()


CHILD = """
import sys, time
from lorastack.web.jobs import JobStore
from lorastack.core.recipe import save_png
from PIL import Image

def make(job):
    job.folder.mkdir(parents=True, exist_ok=True)
    save_png(Image.new("RGB", (8, 8)), job.folder / "00000-1.png", {"seed": 1})
    return {"images": [{"file": "00000-1.png"}]}

store = JobStore(sys.argv[1], {"make": make})
job = store.submit("make", {})
print(job["id"], flush=True)
while store.get(job["id"])["state"] != "done":
    time.sleep(0.01)
"""


@pytest.mark.parametrize("point", ["serve.job.before-commit", "serve.job.after-commit"])
def test_a_kill_never_lists_an_image_without_its_file(tmp_path, point):
    env = {**os.environ, "LORASTACK_CRASH_AT": point}
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    job_id = done.stdout.split()[0]
    store = JobStore(tmp_path, {"make": lambda job: {}})
    record = store.get(job_id)
    if point == "serve.job.before-commit":
        assert record["state"] == "interrupted" and record["result"] is None
    else:
        assert record["state"] == "done"
        for image in record["result"]["images"]:
            assert (tmp_path / "jobs" / job_id / image["file"]).is_file()
    store.close()


@pytest.mark.slow  # a few training steps on the toy base: about half a minute on 2 cores
def test_a_training_job_lands_in_the_library_and_resumes(served, tmp_path):
    from lorastack import toy

    client, _ = served
    data = toy.write_dataset(tmp_path / "data", 4, seed=1)
    body = {"trainer": "lora", "data": str(data), "name": "me/trained",
            "options": {"steps": 4, "resolution": 64, "rank": 2, "batch_size": 2, "checkpoint_every": 2}}  # fmt: skip
    done = wait(client, client.post("/api/train", json=body, headers=HEADERS).json(), timeout=600)
    assert done["state"] == "done", done
    assert done["result"]["ref"] == "me/trained@1" and len(done["live"]["losses"]) == 4
    card = client.get("/api/adapters/me/trained").json()
    assert card["training"]["provenance"]["steps"] == 4 and client.get(card["training"]["loss_url"]).status_code == 200
