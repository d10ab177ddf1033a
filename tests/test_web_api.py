"""The library API through FastAPI's test client: every endpoint, its bad inputs (4xx, one line) and the rules
for tokens, hosts and cross-site requests."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient
from web_helpers import HEADERS, fill_library, png, wait

from lorastack.web.app import create_app
from lorastack.web.security import ServeError, check_bind, check_token

TOKEN = "s3cret-token-0123456789"


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    fill_library(root / "registry", root / "files").close()
    return root


@pytest.fixture(scope="module")
def client(library):
    with TestClient(create_app(library / "registry", default_base="toy", folders=[library.parent])) as c:
        yield c


def error(response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    message = response.json()["error"]
    assert "\n" not in message and "Traceback" not in message
    return message


# --- the library --------------------------------------------------------------------------------------------------
def test_the_library_lists_one_card_per_adapter_with_its_preview(client):
    page = client.get("/api/adapters").json()
    assert [i["ref"] for i in page["items"]] == ["me/blue@1", "me/red@2", "other/green@1"]
    red = page["items"][1]
    assert red["versions"] == 2 and red["family"] == "sd1" and red["preview_url"].startswith("/api/thumbnails/")
    assert page["items"][0]["trigger_words"] == ["bluish"] and page["items"][0]["preview_url"] is None
    thumb = client.get(red["preview_url"])
    assert (
        thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg" and thumb.content[:2] == b"\xff\xd8"
    )


def test_filters_search_sort_and_pages(client):
    def refs(**params):
        return [i["ref"] for i in client.get("/api/adapters", params=params).json()["items"]]

    assert refs(q="bluish") == ["me/blue@1"]  # trigger words
    assert refs(q="RED ONE") == ["me/red@2"]  # metadata text, case folded
    assert refs(lineage="pony") == ["me/red@2"]
    assert refs(tag="cute") == refs(tag="v2") == ["me/red@2"]
    assert refs(family="sdxl") == []
    assert refs(all_versions="true") == ["me/blue@1", "me/red@1", "me/red@2", "other/green@1"]
    first, second = (client.get("/api/adapters", params={"per_page": 2, "page": n}).json() for n in (1, 2))
    assert first["has_more"] and not second["has_more"]
    assert [i["ref"] for i in first["items"] + second["items"]] == refs()
    assert set(refs(sort="date")) == set(refs()) == set(refs(sort="use"))
    assert client.get("/api/families").json() == {"families": ["sd1"]}


@pytest.mark.parametrize(
    ("params", "where"),
    [({"sort": "size"}, "sort"), ({"page": 0}, "page"), ({"per_page": 1000}, "per_page"), ({"q": "x" * 1001}, "q"),
     ({"missing": "maybe"}, "missing")],
)  # fmt: skip
def test_bad_list_parameters_are_422_naming_the_parameter(client, params, where):
    assert error(client.get("/api/adapters", params=params), 422).startswith(f"{where}: ")


def test_one_adapter_has_its_versions_metadata_and_previews(client):
    data = client.get("/api/adapters/me/red").json()
    assert data["ref"] == "me/red@2" and [v["ref"] for v in data["all_versions"]] == ["me/red@1", "me/red@2"]
    assert data["metadata"]["lineage"] == {"value": "Pony", "source": "user", "updated_at": data["metadata"]
                                           ["lineage"]["updated_at"]}  # fmt: skip
    (preview,) = data["previews"]
    full = client.get(preview["url"])
    assert full.status_code == 200 and full.content == png()
    assert client.get("/api/adapters/me/red@1").json()["previews"] == []
    assert data["training"] is None


def test_unknown_and_malformed_references(client):
    assert "did you mean me/red" in error(client.get("/api/adapters/me/rde"), 404)
    assert "has no version 9" in error(client.get("/api/adapters/me/red@9"), 404)
    assert error(client.get("/api/adapters/me/red@x"), 400)
    assert error(client.get("/api/download/nope/x"), 404)


def test_images_are_served_by_hash_only(client):
    assert error(client.get("/api/previews/..%2F..%2Findex.sqlite"), 404)  # no route takes a path there
    assert "not a sha256" in error(client.get("/api/previews/..%2Eindex.sqlite"), 400)
    assert "not a sha256" in error(client.get("/api/thumbnails/abc"), 400)
    assert error(client.get("/api/previews/" + "0" * 64), 404)
    # an adapter blob is in the store but is no preview: not served as one
    sha = client.get("/api/adapters/me/blue").json()["files"][0]["sha256"]
    assert error(client.get(f"/api/previews/{sha}"), 404)
    assert client.get("/static/../web/app.py").status_code == 404


def test_download_sends_the_adapter_file(client, library):
    response = client.get("/api/download/me/blue@1")
    assert response.status_code == 200 and response.content == (library / "files" / "blue.safetensors").read_bytes()


def test_metadata_edits_and_tags(client):
    body = {"metadata": {"weight": 0.7, "trigger_groups": [["blue sky", "bluish"]], "license": "MIT"},
            "add_tags": ["best"]}  # fmt: skip
    response = client.patch("/api/adapters/me/blue", json=body, headers=HEADERS)
    assert response.status_code == 200, response.text
    data = client.get("/api/adapters/me/blue:best").json()
    assert data["metadata"]["weight"]["value"] == 0.7 and data["metadata"]["license"]["source"] == "user"
    assert "best" in data["tags"]
    assert [i["ref"] for i in client.get("/api/adapters", params={"tag": "best"}).json()["items"]] == ["me/blue@1"]


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [({"metadata": {"weight": 99}}, 400, "weight"), ({"metadata": {"colour": "red"}}, 400, "unknown metadata field"),
     ({"metadata": {"url": "javascript:alert(1)"}}, 400, "http or https"), ({"add_tags": ["bad tag!"]}, 400, "tag"),
     ({"surprise": 1}, 422, "surprise"), ({"metadata": "x"}, 422, "metadata")],
)  # fmt: skip
def test_bad_metadata_edits_change_nothing(client, body, status, says):
    before = client.get("/api/adapters/other/green").json()["metadata"]
    assert says in error(client.patch("/api/adapters/other/green", json=body, headers=HEADERS), status)
    assert client.get("/api/adapters/other/green").json()["metadata"] == before


def test_preview_upload_is_decoded_before_it_is_stored(client):
    bad = client.post("/api/preview-uploads/other/green", files={"file": ("x.png", b"not an image")}, headers=HEADERS)
    assert "not a readable PNG" in error(bad, 400)
    good = client.post(
        "/api/preview-uploads/other/green", files={"file": ("g.png", png((0, 200, 0)))}, headers=HEADERS
    )
    assert good.status_code == 200 and client.get(good.json()["url"]).content == png((0, 200, 0))


def test_removal_needs_the_version_and_its_confirmation(library):
    with TestClient(create_app(library / "registry", folder=library / "serve-rm")) as c:
        assert error(c.delete("/api/adapters/me/red@1"), 403)  # no X-Lorastack header
        assert "confirm" in error(c.delete("/api/adapters/me/red@1", headers=HEADERS), 422)
        assert "repeat its reference" in error(
            c.delete("/api/adapters/me/red@1", params={"confirm": "me/red@2"}, headers=HEADERS), 409
        )
        assert "name the version" in error(c.delete("/api/adapters/me/red", params={"confirm": "me/red@2"},
                                                    headers=HEADERS), 409)  # fmt: skip
        gone = c.delete("/api/adapters/me/red@1", params={"confirm": "me/red@1"}, headers=HEADERS)
        assert gone.json()["removed"] == "me/red@1"
        assert error(c.get("/api/adapters/me/red@1"), 404)
        assert c.get("/api/adapters/me/red@2").status_code == 200


# --- who may ask --------------------------------------------------------------------------------------------------
def test_state_changes_need_the_header_and_the_same_origin(client):
    body = {"metadata": {"notes": "x"}}
    assert "X-Lorastack" in error(client.patch("/api/adapters/me/blue", json=body), 403)
    cross = client.patch("/api/adapters/me/blue", json=body, headers={**HEADERS, "Origin": "https://evil.example"})
    assert "cross-site" in error(cross, 403)
    same = client.patch("/api/adapters/me/blue", json=body, headers={**HEADERS, "Origin": "http://testserver"})
    assert same.status_code == 200


def test_without_a_token_only_loopback_host_names_are_answered(client):
    assert "not a loopback name" in error(client.get("/api/adapters", headers={"Host": "evil.example"}), 403)
    for host in ("127.0.0.1:7860", "localhost", "[::1]:80"):
        assert client.get("/api/adapters", headers={"Host": host}).status_code == 200, host


def test_with_a_token_every_request_needs_it(library):
    with TestClient(create_app(library / "registry", token=TOKEN, folder=library / "serve-token")) as c:
        for path in ("/api/adapters", "/", "/openapi.json", "/static/app.js"):
            assert "needs its token" in error(c.get(path), 401), path
        assert error(c.get("/api/adapters", headers={"Authorization": "Bearer wrong-token-0123456789"}), 401)
        assert c.get("/api/adapters", headers={"Authorization": f"Bearer {TOKEN}", "Host": "lab.example"}).json()[
            "items"
        ]
        first = c.get("/", params={"token": TOKEN})  # the printed address: sets the cookie the pages then send
        assert first.status_code == 200 and "HttpOnly" in first.headers["set-cookie"]
        assert c.get("/api/adapters").status_code == 200  # the cookie
        c.cookies.clear()
        assert error(c.get("/api/adapters"), 401)


def test_token_and_bind_rules():
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("0.0.0.0", TOKEN)
    with pytest.raises(ServeError, match="--host 0.0.0.0 is not a loopback address"):
        check_bind("0.0.0.0", None)
    for bad in ("short", "x" * 600, "has space in it 12345", "ünïcødé-token-123456"):
        with pytest.raises(ServeError, match="--token"):
            check_token(bad)


def test_the_cli_refuses_a_public_address_without_a_token():
    from cli_helpers import run_cli

    code, _out, err = run_cli("serve", "--host", "0.0.0.0", "--port", "0")
    assert code == 1 and err.strip() == (
        "Error: --host 0.0.0.0 is not a loopback address: give --token TOKEN (every request must then carry it), "
        "or bind 127.0.0.1"
    )


def test_bodies_are_bounded(library):
    with TestClient(create_app(library / "registry", max_upload=10_000, folder=library / "serve-small")) as c:
        big = c.post("/api/uploads/adapter", files={"file": ("a.safetensors", b"x" * 50_000)},
                     data={"name": "me/big"}, headers=HEADERS)  # fmt: skip
        assert "the most accepted" in error(big, 413)
        huge = c.post("/api/uploads/adapter", files={"file": ("a.safetensors", b"x" * (2 << 20))},
                      data={"name": "me/big"}, headers=HEADERS)  # fmt: skip
        assert "at most" in error(huge, 413)  # refused from its Content-Length, before the body is read
        assert not list((library / "serve-small" / "uploads").glob("*"))
        assert error(c.post("/api/scan", content=b"{}", headers={**HEADERS, "Content-Length": "abc"}), 400)


def test_the_openapi_schema_covers_the_api(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/adapters", "/api/adapters/{ref}", "/api/generate", "/api/jobs/{job_id}", "/api/train",
                 "/api/uploads/adapter", "/api/scan", "/api/push", "/api/jobs/{job_id}/events"):  # fmt: skip
        assert path in paths, path


# --- imports ------------------------------------------------------------------------------------------------------
def test_an_uploaded_adapter_lands_in_the_library(client, library):
    data = (library / "files" / "green.safetensors").read_bytes()
    job = client.post("/api/uploads/adapter", files={"file": ("up.safetensors", data)}, data={"name": "up/loaded"},
                      headers=HEADERS).json()  # fmt: skip
    done = wait(client, job)
    assert done["state"] == "done" and done["result"]["ref"] == "up/loaded@1"
    assert client.get("/api/download/up/loaded@1").content == data
    assert not list((library / "serve" / "uploads").glob("*.safetensors"))  # the upload's copy is gone


@pytest.mark.parametrize(
    ("filename", "content", "form", "says"),
    [("a.ckpt", b"x", {"name": "me/a"}, "upload a .safetensors file"),
     ("a.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......", {"name": "me/a"}, "a.safetensors"),
     ("a.safetensors", b"x", {"name": "bad name!"}, "name"),
     ("a.safetensors", b"x", {"name": "me/a", "tag": "bad tag!"}, "tag")],
)  # fmt: skip
def test_bad_uploads_are_refused_before_anything_is_stored(client, library, filename, content, form, says):
    before = client.get("/api/adapters", params={"all_versions": "true"}).json()["items"]
    r = client.post("/api/uploads/adapter", files={"file": (filename, content)}, data=form, headers=HEADERS)
    assert says in error(r, 400)
    assert client.get("/api/adapters", params={"all_versions": "true"}).json()["items"] == before
    assert not list((library / "serve" / "uploads").glob("*.safetensors"))


def test_a_dataset_upload_must_be_a_zip(client):
    assert "not a zip" in error(client.post("/api/uploads/dataset", files={"file": ("d.zip", b"PK no")},
                                            headers=HEADERS), 400)  # fmt: skip


def test_a_folder_scan_imports_in_place(client, library, tmp_path):
    from lorastack.testing.registry import small_adapter

    folder = tmp_path / "loras"
    folder.mkdir()
    small_adapter(folder / "scanned.safetensors", seed=11)
    done = wait(client, client.post("/api/scan", json={"folder": str(folder)}, headers=HEADERS).json())
    assert done["state"] == "done" and done["result"]["counts"]["added"] == 1, done
    (card,) = client.get("/api/adapters", params={"q": "scanned"}).json()["items"]
    assert card["location"] == "inplace"
    assert "not a folder" in error(client.post("/api/scan", json={"folder": str(folder / "nope")}, headers=HEADERS),
                                   400)  # fmt: skip
    # only folders under the server's --folder: not its parent, nor one reached by a link out of it
    (folder / "out").symlink_to(library.parent.parent)
    for outside in (str(library.parent.parent), str(folder / "out"), str(folder / ".." / ".." / "..")):
        refused = error(client.post("/api/scan", json={"folder": outside}, headers=HEADERS), 403)
        assert "is not under a folder this server may read (--folder: " in refused and "\n" not in refused
