"""The ``lorastack`` command: a thin click layer over lorastack's packages.

Typed errors from the packages become one-line messages here, and only here. ``LORASTACK_RAISE_ERRORS=1``
re-raises them with their traceback for debugging.
"""

from __future__ import annotations

import os
import sys

import click

from lorastack import __version__
from lorastack.adapters.errors import AdapterError
from lorastack.core.errors import LorastackError
from lorastack.registry.errors import RegistryError

from .text import printable

#: Exceptions whose message is meant for the user: shown without a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (AdapterError, LorastackError, RegistryError)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lorastack")
def cli() -> None:
    """Manage, stack, train and share LoRA adapters for Stable Diffusion."""


def quiet_libraries() -> None:
    """Keep diffusers/transformers progress bars and info logs out of command output (warnings still show)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def _register_commands() -> None:
    from . import adapters, caption, dataset, demo, generate, hub, plugins, registry, train

    adapters.register(cli)
    generate.register(cli)
    registry.register(cli)
    hub.register(cli)
    plugins.register(cli)
    caption.register(cli)
    dataset.register(cli)
    train.register(cli)
    demo.register(cli)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        cli.main(args=argv, prog_name="lorastack", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except USER_ERRORS as e:
        if os.environ.get("LORASTACK_RAISE_ERRORS"):
            raise
        click.echo(f"Error: {printable(e)}", err=True)  # messages quote file names and values from outside
        sys.exit(1)
    except ValueError as e:
        # Public functions raise ValueError for bad arguments (diffusers/peft style); show it, not a traceback.
        if os.environ.get("LORASTACK_RAISE_ERRORS"):
            raise
        click.echo(f"Error: {printable(e)}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
