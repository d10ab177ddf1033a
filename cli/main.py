"""The ``lorastack`` command: a thin click layer over lorastack's packages.

Every error lorastack raises on purpose derives from :class:`lorastack.LorastackError`; the group turns it into one
line, ``Error: <message>`` on stderr with exit code 1, inside click's own handling, so the shell and
``click.testing.CliRunner`` show the same thing. Usage errors are click's (exit code 2). Anything else is a bug and
keeps its traceback. ``LORASTACK_RAISE_ERRORS=1`` re-raises lorastack's errors too, for debugging.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import click

from lorastack import __version__
from lorastack.errors import LorastackError

from .text import printable

#: Libraries whose logs, warnings and loading bars a user cannot act on: silenced unless ``lorastack -v``.
LIBRARIES = ("diffusers", "transformers", "huggingface_hub", "accelerate", "peft", "datasets", "torch", "PIL",
             "torchao", "bitsandbytes")  # fmt: skip
#: Environment variables the libraries read when they are first imported.
QUIET_ENVIRONMENT = {
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "DIFFUSERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}
#: The same, kept when the user set them (TORCH_LOGS is how a user asks torch for its logs).
QUIET_DEFAULTS = {"TORCH_LOGS": "-all"}  # torch's own log handler: errors only (torchao's import warns, say)


class ReportedError(LorastackError, click.ClickException):
    """A :class:`LorastackError` as click shows it: ``Error: <message>``, one line, exit code 1."""

    exit_code = 1

    def __init__(self, error: LorastackError):
        # messages quote file names and values from outside: control characters are shown as escapes
        super().__init__(printable(error))
        self.error = error


class LorastackGroup(click.Group):
    """The ``lorastack`` group: lorastack's errors from any command become click errors here, and only here."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ReportedError:
            raise
        except LorastackError as e:
            if os.environ.get("LORASTACK_RAISE_ERRORS"):
                raise
            raise ReportedError(e) from e


def _verbose_from_context() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().params.get("verbose"))


def quiet_libraries(verbose: bool | None = None) -> None:
    """Silence the libraries' logs, warnings and loading bars, or (``verbose``) let them show.

    Commands call it before loading models; ``verbose`` defaults to the group's ``-v/--verbose``. The one place that
    decides what the libraries may print: logging levels, warnings filters and the libraries' own switches.
    """
    if verbose is None:
        verbose = _verbose_from_context()
    _quiet_environment(verbose)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        if verbose:
            library.set_verbosity_info()
            library.enable_progress_bar()
        else:
            library.set_verbosity_error()
            library.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        (enable_progress_bars if verbose else disable_progress_bars)()


def _quiet_environment(verbose: bool) -> None:
    """The part of :func:`quiet_libraries` that imports nothing: run for every command, in the group's callback."""
    for name, value in QUIET_ENVIRONMENT.items():
        if verbose:
            if os.environ.get(name) == value:
                del os.environ[name]
        else:
            os.environ[name] = value
    for name, value in QUIET_DEFAULTS.items():
        if verbose:
            if os.environ.get(name) == value:
                del os.environ[name]
        else:
            os.environ.setdefault(name, value)
    for library in LIBRARIES:
        logging.getLogger(library).setLevel(logging.INFO if verbose else logging.ERROR)
    if verbose:
        warnings.resetwarnings()
        warnings.simplefilter("default")
    else:
        # lorastack itself reports through its messages, not the warnings module: every warning here is a library's
        warnings.simplefilter("ignore")


@click.group("lorastack", cls=LorastackGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lorastack")
@click.option("-v", "--verbose", is_flag=True, help="Show the libraries' logs, warnings and loading bars.")
def cli(verbose: bool) -> None:
    """Manage, stack, train and share LoRA adapters for Stable Diffusion."""
    _quiet_environment(verbose)


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
    from . import duplicates, link

    duplicates.register(cli)
    link.register(cli)
    from . import recipe, stack

    recipe.register(cli)
    stack.register(cli)
    from . import library

    library.register(cli)
    from . import library_meta

    library_meta.register(cli)
    from . import arith

    arith.register(cli)
    from . import serve

    serve.register(cli)
    from . import eval as eval_commands

    eval_commands.register(cli)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (exits with the command's status)."""
    cli.main(args=argv, prog_name="lorastack")


if __name__ == "__main__":
    main()
