"""``lorastack serve``: the library and the studio in a browser (FastAPI on uvicorn)."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but a loopback address needs --token.")  # fmt: skip
@click.option("--port", type=click.IntRange(0, 65535), default=7860, show_default=True)
@click.option("--token", envvar="LORASTACK_SERVE_TOKEN", default=None,
              help="Every request must carry it (16+ characters; or set LORASTACK_SERVE_TOKEN).")  # fmt: skip
@click.option("--base", default=None, help="The default base: folder, checkpoint, Hub id or alias (toy).")
@click.option("--allow-base", "bases", multiple=True, metavar="BASE",
              help="Another base requests may choose (repeat); the toy is always offered.")  # fmt: skip
@click.option("--max-upload-mb", type=click.IntRange(1, 65536), default=1024, show_default=True,
              help="The largest upload, in MiB.")  # fmt: skip
@click.option("--folder", "folders", multiple=True, metavar="DIR",
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A folder on this machine the pages may train on or scan (and those under it); repeatable. "
              "Default: none (datasets are uploaded as zips).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the address) when listening.")
def serve_cmd(host, port, token, base, bases, max_upload_mb, folders, as_json):
    """Serve the library, the studio (generate, compare, weight sweeps), training and imports in a browser.

    The JSON API is under /api (schema at /openapi.json). Long work runs as jobs, one at a time, recorded beside
    the registry (serve/); a restart keeps finished jobs and marks unfinished ones interrupted.
    """
    try:
        import uvicorn
    except ImportError:  # pragma: no cover - the optional extra is missing
        raise click.ClickException("lorastack serve needs the web extra: pip install 'lorastack[web]'") from None
    from lorastack.web.app import create_app
    from lorastack.web.security import check_bind, check_token

    from .main import quiet_libraries

    quiet_libraries()
    token = check_token(token)
    check_bind(host, token)
    app = create_app(token=token, default_base=base, bases=list(bases), max_upload=max_upload_mb << 20,
                     folders=list(folders))  # fmt: skip
    shown = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)

    def announce() -> None:
        bound = server.servers[0].sockets[0].getsockname()[1] if server.servers else port
        url = f"http://{shown}:{bound}/" + (f"?token={token}" if token else "")
        if as_json:
            click.echo(json.dumps({"url": url, "host": host, "port": bound}, sort_keys=True))
        else:
            click.echo(f"lorastack serve: {url}  (Ctrl-C stops)")

    original_startup = server.startup

    async def startup(sockets=None):
        await original_startup(sockets=sockets)
        if server.started:
            announce()

    server.startup = startup
    server.run()


def register(group: click.Group) -> None:
    group.add_command(serve_cmd)
