"""Talking to the Hub safely: timeouts on every call, errors translated into one line a user can act on.

huggingface_hub's default HTTP client has no timeout, and most of its calls pass ``timeout=None``, which overrides a
client default: a Hub that accepts a connection and never answers would hang a pull for ever. Its errors are
translated here: only transport failures are called network errors, the token and any credentials in the endpoint
never appear, and anything unexpected is re-raised as it is (a bug keeps its traceback).
"""

from __future__ import annotations

import errno
import os
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

from .errors import ConflictError, RegistryError

#: Seconds the Hub may stay silent (connecting, or between two chunks of an answer) before a call gives up.
#: huggingface_hub's own client waits forever: a Hub that accepts the connection and never answers would hang.
TIMEOUT_ENV = "LORASTACK_HUB_TIMEOUT"

DEFAULT_TIMEOUT = 30.0


class HubError(RegistryError):
    """Talking to the Hub failed; the message says what to do (log in, check the name, pass --file, …)."""


class HubConflictError(HubError, ConflictError):
    """The Hub branch moved since lorastack last saw it: pushing would overwrite someone's work."""


def _endpoint(endpoint: str | None) -> str:
    from huggingface_hub import constants

    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def check_repo_id(repo_id: str) -> str:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise HubError(f"{repo_id!r} is not a Hub repo id: write OWNER/NAME")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise HubError(
            f"{repo_id!r} is not a valid Hub repo id: OWNER/NAME, letters, digits, '-', '_' and '.', at most 96 "
            "characters"
        ) from None
    return repo_id


def redact(url: str) -> str:
    """``url`` without the user name and password it may carry (``http://user:secret@host`` → ``http://***@host``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an invalid URL)"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


def hub_timeout() -> float:
    """The Hub timeout in seconds: ``LORASTACK_HUB_TIMEOUT`` or :data:`DEFAULT_TIMEOUT`."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 3600:
        raise HubError(f"{TIMEOUT_ENV}={raw[:40]!r} is not a number of seconds from 0 (exclusive) to 3600")
    return value


_configured_timeout: float | None = None


def _configure_client() -> None:
    """Give every call huggingface_hub makes a timeout. Its default client has none, and most of its calls pass
    ``timeout=None``, which overrides a client default, so the timeout is set where each request is sent."""
    global _configured_timeout
    timeout = hub_timeout()
    if _configured_timeout == timeout:
        return
    try:
        from huggingface_hub import set_client_factory
        from huggingface_hub.utils._http import default_client_factory, hf_request_event_hook
    except ImportError:  # pragma: no cover - huggingface_hub < 1.0 (requests) has no client factory
        return
    import importlib

    httpx = importlib.import_module(type(default_client_factory()).__module__.split(".")[0])

    class TimeoutTransport(httpx.HTTPTransport):
        def handle_request(self, request):
            limits = dict(request.extensions.get("timeout") or {})
            request.extensions["timeout"] = {
                key: limits.get(key) if limits.get(key) is not None else timeout
                for key in ("connect", "read", "write", "pool")
            }
            return super().handle_request(request)

    def factory():
        return httpx.Client(
            event_hooks={"request": [hf_request_event_hook]},
            follow_redirects=True,
            timeout=timeout,
            transport=TimeoutTransport(),
        )

    set_client_factory(factory)
    _configured_timeout = timeout


def _network_failure(e: BaseException) -> str | None:
    """``"timeout"`` or ``"network"`` when ``e`` is a transport failure (of httpx, httpcore, requests or the OS);
    ``"local"`` for a file-system error (the Hugging Face cache); ``None`` for anything else."""
    names = {cls.__name__ for cls in type(e).__mro__}
    modules = {(cls.__module__ or "").split(".")[0] for cls in type(e).__mro__}
    if isinstance(e, TimeoutError) or ({"TimeoutException", "Timeout"} & names and modules & _HTTP_MODULES):
        return "timeout"
    if modules & _HTTP_MODULES and names & {"TransportError", "RequestError", "ConnectionError"}:
        return "network"
    if isinstance(e, ConnectionError) or (isinstance(e, OSError) and e.errno in _NETWORK_ERRNOS):
        return "network"
    if isinstance(e, OSError):
        return "local"
    return None


_NETWORK_ERRNOS = {
    getattr(errno, name)
    for name in ("ECONNREFUSED", "ECONNRESET", "ECONNABORTED", "ENETUNREACH", "ENETDOWN", "EHOSTUNREACH",
                 "EHOSTDOWN", "ETIMEDOUT", "EPIPE", "ENOTCONN")
    if hasattr(errno, name)
}  # fmt: skip

_HTTP_MODULES = {"httpx", "httpx2", "httpcore", "requests", "urllib3"}


def raise_hub_error(e: Exception, repo_id: str, endpoint: str, what: str, token: str | None = None) -> NoReturn:
    """Raise what ``e``, caught around a call to the Hub, means to a user: a transport or HTTP failure becomes a
    one-line :class:`HubError` (without the failure as its cause: its text may hold the token or the endpoint's
    credentials); anything else (a malformed answer lorastack reports itself, a bug) is re-raised as it is, with
    its own cause and traceback."""
    translated = _translate(e, repo_id, endpoint, what, token)
    if translated is e:
        raise e
    raise translated from None


def _translate(e: Exception, repo_id: str, endpoint: str, what: str, token: str | None = None) -> Exception:
    """A huggingface_hub/httpx error → a one-line HubError that says what to do (and never holds the token or the
    endpoint's credentials). Anything else is lorastack's own bug and is returned as it is, to be re-raised."""
    from huggingface_hub.errors import HfHubHTTPError

    cause = e
    while cause is not None and not isinstance(cause, HfHubHTTPError):  # uploads wrap HTTP errors in RuntimeError
        cause = cause.__cause__
    return _translate_one(cause or e, repo_id, redact(endpoint), what, token)


def _translate_one(e: Exception, repo_id: str, endpoint: str, what: str, token: str | None) -> Exception:
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(e, HubError | RegistryError):
        return e
    if isinstance(e, RevisionNotFoundError):
        return HubError(f"{repo_id} has no revision {what!r} on the Hub; check the branch, tag or commit")
    if isinstance(e, RemoteEntryNotFoundError):
        return HubError(f"{repo_id} has no file {what!r}; pass --file with one of its weight files")
    if isinstance(e, GatedRepoError):
        return HubError(f"{repo_id} is gated: accept its conditions on the Hub, then log in (hf auth login)")
    if isinstance(e, RepositoryNotFoundError):
        return HubError(
            f"{repo_id} was not found on the Hub; check the name, or log in (hf auth login / HF_TOKEN) "
            "if it is private"
        )
    if isinstance(e, LocalEntryNotFoundError | OfflineModeIsEnabled):
        return HubError(
            f"{repo_id}@{what} is not in the local Hugging Face cache and the Hub is offline (HF_HUB_OFFLINE)"
        )
    if isinstance(e, HfHubHTTPError) and e.response is not None:
        status = e.response.status_code
        if status == 401:
            if _has_token(token):
                return HubError(
                    f"the Hub refused your token for {repo_id} (401): it is wrong, expired or revoked; log in again "
                    "(hf auth login) or fix HF_TOKEN"
                )
            return HubError(
                f"the Hub refused the request for {repo_id}: not logged in; run `hf auth login` or set HF_TOKEN"
            )
        if status == 403:
            return HubError(f"your Hub token may not write to {repo_id}; log in with a token that has write access")
        if status == 412:
            return HubConflictError(
                f"{repo_id}: the Hub branch moved since lorastack last synced it (someone else pushed); pull the new "
                "commits first, then push again"
            )
        return HubError(f"the Hub answered {status} for {repo_id}; try again later")
    failure = _network_failure(e)
    if failure == "timeout":
        return HubError(
            f"the Hub at {endpoint} did not answer within {hub_timeout():g} s ({type(e).__name__}); try again later, "
            f"or set {TIMEOUT_ENV} to wait longer"
        )
    if failure == "network":
        return HubError(f"cannot reach the Hub at {endpoint} ({type(e).__name__}); check the network, then try again")
    if failure == "local" and _in_hugging_face_cache(getattr(e, "filename", None)):
        where = e.filename
        return HubError(
            f"the Hugging Face cache cannot be used: {where}: {getattr(e, 'strerror', None) or e}; check HF_HOME / "
            "HF_HUB_CACHE"
        )
    return e


def _in_hugging_face_cache(filename: object) -> bool:
    """Whether a file-system error is about the Hugging Face cache (and not, say, a registry file or a bug)."""
    from huggingface_hub import constants

    if not isinstance(filename, str | os.PathLike):
        return False
    path = os.path.abspath(os.fsdecode(filename))
    roots = {os.path.abspath(constants.HF_HUB_CACHE), os.path.abspath(constants.HF_HOME)}
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def _has_token(token: str | None) -> bool:
    if token:
        return True
    try:
        from huggingface_hub import get_token

        return bool(get_token())
    except Exception:  # pragma: no cover - a broken token store: behave as if there were none
        return False


def _api(endpoint: str, token: str | None):
    from huggingface_hub import HfApi

    _configure_client()
    return HfApi(endpoint=endpoint, token=token)
