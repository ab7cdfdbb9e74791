"""The `shedder-ov` command line. Each stage lives in its own module; this file only wires
them up and turns bad input (ShedderError) into one line on stderr and exit status 2."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable

import typer

from .errors import ShedderError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Mamba-Shedder pruning → OpenVINO → NNCF.")


def one_line_errors(command: Callable) -> Callable:
    """Bad input ends the command with one clear line and exit status 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ShedderError as error:
            typer.echo(f"error: {error}", err=True)
            sys.exit(2)

    return wrapper


@app.callback()
def _commands() -> None:
    """Mamba-Shedder pruning of Mamba-family models → OpenVINO IR → NNCF weight compression."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "fast path is not available" notice is ours to give


RecipeArg = typer.Argument(..., help="recipe YAML", show_default=False)


@app.command()
@one_line_errors
def prune(
    recipe: Path = RecipeArg,
    force: bool = typer.Option(False, "--force", help="discard an existing different run in the output dir"),
    resume: bool = typer.Option(False, "--resume", help="continue a run whose recipe changed only in harmless ways"),
) -> None:
    """Search (or apply a removal list) and write the physically pruned checkpoint."""
    from .pipeline import run_prune
    from .recipe import load_recipe

    run_prune(load_recipe(recipe), force=force, resume=resume)


def main() -> None:  # pragma: no cover
    app()
