"""A Hugging Face Hub HTTP API on 127.0.0.1, for testing with the real ``huggingface_hub`` client.

No Hub-compatible server that accepts uploads installs from PyPI, so this is a small fake of the endpoints the
client calls for model repos: repo creation, whoami, YAML validation, preupload, LFS batch and upload (sha256
checked), ndjson commits (412 on a stale ``parentCommit``), refs, tags, branches, commits, tree, paths-info, and
``resolve`` with ``X-Repo-Commit``/``ETag``/``Range``. Errors carry the ``X-Error-Code`` headers the client turns
into typed exceptions. Uploads must go the LFS way: run the client with ``HF_HUB_DISABLE_XET=1``.

Every request is logged (method, route, status, body bytes), and faults can be injected (drop the connection
mid-body, answer an error status), so tests can assert what the client did.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote

from .hub_http import HubError, Logged, LoopbackServer, Request, Response

LFS_PATTERNS = (".safetensors", ".bin", ".ckpt", ".pt", ".png", ".jpg", ".jpeg", ".webp")
_REPO = r"(?P<repo>[^/]+/[^/]+)"


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Entry:
    size: int
    git_oid: str
    sha256: str | None = None  # LFS files only
    content: bytes | None = None  # regular files only


@dataclass
class Commit:
    sha: str
    parent: str | None
    files: dict[str, Entry]
    title: str
    message: str = ""
    date: float = field(default_factory=time.time)


@dataclass
class Repo:
    id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


class FakeHub(LoopbackServer):
    """An in-memory Hub. ``token``: when set, writes and private repos need ``Authorization: Bearer <token>``;
    ``read_only_token``: a valid token that may read but not write (writes get 403)."""

    def __init__(self, token: str | None = None, read_only_token: str | None = None, user: str = "tester"):
        self.token, self.read_only_token, self.user = token, read_only_token, user
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.log: list[Logged] = []
        self.faults: list[tuple[re.Pattern, str, int]] = []
        self._counter = 0
        super().__init__()

    # --- test helpers ------------------------------------------------------------------------------------------
    def inject(self, route_regex: str, fault: str, times: int = 1) -> None:
        """Make the next ``times`` requests whose ``METHOD path`` matches fail: ``"drop"`` closes the connection
        halfway through the response body; ``"corrupt"`` sends the whole body with one byte changed; ``"hang"``
        accepts the request and never answers; ``"500"``, ``"403"``, … answer that status."""
        self.faults.append((re.compile(route_regex), fault, times))

    def calls(self, method: str | None = None, route: str | None = None) -> list[Logged]:
        return [c for c in self.log if (method is None or c.method == method) and (route is None or route in c.route)]

    def uploaded_bytes(self) -> int:
        """Bytes received by LFS uploads (where file contents travel)."""
        return sum(c.bytes_in for c in self.log if c.route.startswith("PUT /lfs/"))

    def commit_outside(self, repo_id: str, path: str, content: bytes, branch: str = "main") -> str:
        """Someone else pushes: add a regular file on ``branch`` (moves its head)."""
        with self.lock:
            repo = self.repos[repo_id]
            head = repo.branches[branch]
            files = dict(repo.commits[head].files)
            files[path] = Entry(len(content), git_sha1(content), content=content)
            return self._new_commit(repo, branch, head, files, f"Update {path}")

    # --- model -------------------------------------------------------------------------------------------------
    def _new_commit(self, repo: Repo, branch: str, parent: str | None, files: dict[str, Entry], title: str) -> str:
        self._counter += 1
        sha = hashlib.sha1(f"{repo.id}:{parent}:{self._counter}:{title}".encode()).hexdigest()
        repo.commits[sha] = Commit(sha, parent, files, title)
        repo.branches[branch] = sha
        return sha

    def _repo(self, repo_id: str, auth: str | None) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and auth is None):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _resolve(self, repo: Repo, revision: str) -> Commit:
        revision = unquote(revision)
        sha = repo.branches.get(revision) or repo.tags.get(revision)
        if sha is None and revision in repo.commits:
            sha = revision
        if sha is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[sha]

    def _entry_json(self, path: str, entry: Entry) -> dict:
        data = {"type": "file", "oid": entry.git_oid, "size": entry.size, "path": path}
        if entry.sha256 is not None:
            data["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": 134}
        return data

    # --- request handling --------------------------------------------------------------------------------------
    def handle(self, req: Request) -> Response:
        auth = self._auth(req)
        for pattern, method_names, fn in self._routes():
            m = pattern.match(req.path)
            if m and req.method in method_names:
                return fn(req, auth, **m.groupdict())
        return Response.error(HubError(404, f"no route for {req.method} {req.path}"))

    def _auth(self, req: Request) -> str | None:
        header = req.headers.get("Authorization", "")
        given = header[len("Bearer ") :] if header.startswith("Bearer ") else None
        if given is None:
            return None
        if given in (self.token, self.read_only_token) or self.token is None:
            return given
        raise HubError(401, "Invalid credentials in Authorization header")

    def _needs_write(self, auth: str | None) -> None:
        if self.token is None:
            return
        if auth is None:
            raise HubError(401, "You must be authenticated to write; run `hf auth login`")
        if auth == self.read_only_token:
            raise HubError(403, "You don't have the rights to write to this repo (read-only token)")

    def _routes(self):
        r = re.compile
        return [
            (r(r"^/api/whoami-v2$"), {"GET"}, self._whoami),
            (r(r"^/api/validate-yaml$"), {"POST"}, lambda req, auth: Response.json({"errors": [], "warnings": []})),
            (r(r"^/api/repos/create$"), {"POST"}, self._create_repo),
            (r(rf"^/api/models/{_REPO}/preupload/(?P<rev>.+)$"), {"POST"}, self._preupload),
            (r(rf"^/api/models/{_REPO}/commit/(?P<rev>.+)$"), {"POST"}, self._commit),
            (r(rf"^/api/models/{_REPO}/refs$"), {"GET"}, self._refs),
            (r(rf"^/api/models/{_REPO}/tag/(?P<rev>.+)$"), {"POST", "DELETE"}, self._tag),
            (r(rf"^/api/models/{_REPO}/branch/(?P<branch>.+)$"), {"POST", "DELETE"}, self._branch),
            (r(rf"^/api/models/{_REPO}/commits/(?P<rev>.+)$"), {"GET"}, self._commits),
            (r(rf"^/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$"), {"GET"}, self._tree),
            (r(rf"^/api/models/{_REPO}/paths-info/(?P<rev>.+)$"), {"POST"}, self._paths_info),
            (r(rf"^/api/models/{_REPO}(?:/revision/(?P<rev>.+))?$"), {"GET"}, self._model_info),
            (r(rf"^/{_REPO}\.git/info/lfs/objects/batch$"), {"POST"}, self._lfs_batch),
            (r(r"^/lfs/(?P<oid>[0-9a-f]{64})$"), {"PUT"}, self._lfs_upload),
            (r(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), {"GET", "HEAD"}, self._resolve_file),
        ]

    def _whoami(self, req, auth):
        if auth is None and self.token is not None:
            raise HubError(401, "Invalid user token")
        return Response.json({"type": "user", "name": self.user, "orgs": [], "auth": {"type": "access_token"}})

    def _create_repo(self, req, auth):
        self._needs_write(auth)
        body = req.json()
        repo_id = f"{body.get('organization') or self.user}/{body['name']}"
        url = f"{self.url}/{repo_id}"
        with self.lock:
            if repo_id in self.repos:
                raise HubError(409, "You already created this model repo", extra={"url": url})
            repo = Repo(repo_id, private=body.get("visibility") == "private" or bool(body.get("private")))
            attributes = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
            files = {".gitattributes": Entry(len(attributes), git_sha1(attributes), content=attributes)}
            self._new_commit(repo, "main", None, files, "initial commit")
            self.repos[repo_id] = repo
        return Response.json({"url": url, "name": repo_id, "id": repo_id})

    def _model_info(self, req, auth, repo, rev=None):
        with self.lock:
            r = self._repo(repo, auth)
            commit = self._resolve(r, rev or "main")
            siblings = []
            for path, entry in sorted(commit.files.items()):
                sibling = {"rfilename": path, "size": entry.size, "blobId": entry.git_oid}
                if entry.sha256:
                    sibling["lfs"] = {"sha256": entry.sha256, "size": entry.size, "pointerSize": 134}
                siblings.append(sibling)
            return Response.json({
                "id": repo, "modelId": repo, "sha": commit.sha, "private": r.private, "siblings": siblings,
                "tags": [], "lastModified": _iso(commit.date), "createdAt": _iso(commit.date),
            })  # fmt: skip

    def _preupload(self, req, auth, repo, rev):
        self._needs_write(auth)
        with self.lock:
            commit = self._resolve(self._repo(repo, auth), rev)
            files = []
            for f in req.json()["files"]:
                existing = commit.files.get(f["path"])
                lfs = f["path"].endswith(LFS_PATTERNS)
                oid = None if existing is None else (existing.sha256 or existing.git_oid)
                files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                              "oid": oid})  # fmt: skip
        return Response.json({"files": files})

    def _lfs_batch(self, req, auth, repo):
        self._needs_write(auth)
        self._repo(repo, auth)
        objects = []
        for obj in req.json()["objects"]:
            item = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.lfs:  # already stored: no actions, the client skips the upload
                # like the Hub's presigned storage URLs: the signature is in the URL, no token is sent with it
                signature = hashlib.sha256(f"{obj['oid']}:{id(self)}".encode()).hexdigest()[:32]
                item["actions"] = {"upload": {"href": f"{self.url}/lfs/{obj['oid']}?signature={signature}"}}
            objects.append(item)
        return Response.json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_upload(self, req, auth, oid):
        signature = hashlib.sha256(f"{oid}:{id(self)}".encode()).hexdigest()[:32]
        if req.query.get("signature", [""])[0] != signature:
            raise HubError(403, "upload URL signature does not match")
        if hashlib.sha256(req.body).hexdigest() != oid:
            raise HubError(400, "sha256 of the uploaded data does not match its oid")
        with self.lock:
            self.lfs[oid] = req.body
        return Response.json({})

    def _commit(self, req, auth, repo, rev):
        self._needs_write(auth)
        lines = [json.loads(line) for line in req.body.decode().splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        with self.lock:
            r = self._repo(repo, auth)
            branch = unquote(rev)
            head = r.branches.get(branch)
            if head is None:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            if header.get("parentCommit") and header["parentCommit"] != head:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(r.commits[head].files)
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "file":
                    content = base64.b64decode(value["content"])
                    files[value["path"]] = Entry(len(content), git_sha1(content), content=content)
                elif key == "lfsFile":
                    if value["oid"] not in self.lfs:
                        raise HubError(422, f"LFS object {value['oid']} was not uploaded")
                    data = self.lfs[value["oid"]]
                    files[value["path"]] = Entry(len(data), git_sha1(data), sha256=value["oid"])
                elif key in ("deletedFile", "deletedFolder"):
                    prefix = value["path"]
                    files = {p: e for p, e in files.items() if p != prefix and not p.startswith(prefix + "/")}
            sha = self._new_commit(r, branch, head, files, header.get("summary") or "Upload")
        url = f"{self.url}/{repo}/commit/{sha}"
        return Response.json({"commitUrl": url, "commitOid": sha, "pullRequestUrl": None})

    def _refs(self, req, auth, repo):
        with self.lock:
            r = self._repo(repo, auth)

            def refs(table, kind):
                return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": s} for n, s in sorted(table.items())]

            return Response.json({"branches": refs(r.branches, "heads"), "tags": refs(r.tags, "tags"), "converts": []})

    def _tag(self, req, auth, repo, rev):
        self._needs_write(auth)
        with self.lock:
            r = self._repo(repo, auth)
            if req.method == "DELETE":
                if r.tags.pop(unquote(rev), None) is None:
                    raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
                return Response.json({})
            tag = req.json()["tag"]
            if tag in r.tags:
                raise HubError(409, f"Tag {tag} already exists")
            r.tags[tag] = self._resolve(r, rev).sha
        return Response.json({})

    def _branch(self, req, auth, repo, branch):
        self._needs_write(auth)
        with self.lock:
            r = self._repo(repo, auth)
            branch = unquote(branch)
            if req.method == "DELETE":
                r.branches.pop(branch, None)
                return Response.json({})
            if branch in r.branches:
                raise HubError(409, f"Branch {branch} already exists")
            start = (req.json() or {}).get("startingPoint") or "main"
            r.branches[branch] = self._resolve(r, start).sha
        return Response.json({})

    def _commits(self, req, auth, repo, rev):
        with self.lock:
            r = self._repo(repo, auth)
            commit, out = self._resolve(r, rev), []
            while commit is not None:
                out.append({"id": commit.sha, "title": commit.title, "message": commit.message,
                            "authors": [{"user": self.user}], "date": _iso(commit.date)})  # fmt: skip
                commit = r.commits.get(commit.parent) if commit.parent else None
        return Response.json(out)

    def _tree(self, req, auth, repo, rev, path=None):
        with self.lock:
            commit = self._resolve(self._repo(repo, auth), rev)
            prefix = (path or "").strip("/")
            entries, folders = [], set()
            for p, entry in sorted(commit.files.items()):
                if prefix and not p.startswith(prefix + "/"):
                    continue
                rest = p[len(prefix) + 1 :] if prefix else p
                if "/" in rest:
                    folders.add((prefix + "/" if prefix else "") + rest.split("/")[0])
                else:
                    entries.append(self._entry_json(p, entry))
            entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": f} for f in sorted(folders)]
        return Response.json(entries)

    def _paths_info(self, req, auth, repo, rev):
        with self.lock:
            commit = self._resolve(self._repo(repo, auth), rev)
            form = parse_qs(req.body.decode()) if req.body else {}
            paths = form.get("paths", [])
            return Response.json([self._entry_json(p, commit.files[p]) for p in paths if p in commit.files])

    def _resolve_file(self, req, auth, repo, rev, path):
        with self.lock:
            r = self._repo(repo, auth)
            commit = self._resolve(r, rev)
            entry = commit.files.get(unquote(path))
            if entry is None:
                raise HubError(404, f"Entry not found: {path}", "EntryNotFound", extra={"commit": commit.sha})
            data = entry.content if entry.content is not None else self.lfs[entry.sha256]
        etag = entry.sha256 or entry.git_oid
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if entry.sha256:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(entry.size)})
        status, body = 200, data
        match = re.match(r"bytes=(\d+)-(\d*)", req.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(data) - 1
            status, body = 206, data[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{start + len(body) - 1}/{len(data)}"
        return Response(status, body, headers, head_only=req.method == "HEAD")


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))


def point_client_at(url: str, hf_home, monkeypatch) -> None:
    """Send the real ``huggingface_hub`` client to ``url``, with a fresh ``HF_HOME`` and LFS (not Xet) uploads.

    huggingface_hub reads these settings when it is imported, so the module constants are patched too.
    """
    import os

    from huggingface_hub import constants

    hf_home = os.fspath(hf_home)
    hub_cache = os.path.join(hf_home, "hub")
    token_path = os.path.join(hf_home, "token")
    for key, value in {
        "HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0", "HF_HOME": hf_home,
        "HF_HUB_CACHE": hub_cache, "HF_TOKEN_PATH": token_path, "HF_HUB_DISABLE_TELEMETRY": "1",
    }.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    for name, value in {
        "ENDPOINT": url,
        "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_OFFLINE": False,
        "HF_HOME": hf_home,
        "HF_HUB_CACHE": hub_cache,
        "HF_TOKEN_PATH": token_path,
        "HF_STORED_TOKENS_PATH": os.path.join(hf_home, "stored_tokens"),
    }.items():
        monkeypatch.setattr(constants, name, value)
