"""`mri44 train|export|score|weights`: the stages under one command.

Each subcommand is the stage's own command (same options, same help, same one-line errors through
mri44.console), so `python -m train`, `onnx-export`, `mri-score` and `mri-weights` stay equivalent spellings.
This is the one module of the core that imports the stages: it only assembles them.
"""

from __future__ import annotations

import typer

from mri44.stages.export.cli import app as export_app
from mri44.stages.score.cli import app as score_app
from mri44.stages.score.report_cli import app as report_app
from mri44.stages.train.cli import app as train_app
from mri44.stages.train.pretrained import app as weights_app
from mri44.version import __version__

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Classify brain MRI slices by tumour type and contrast: train a ResNet-18, export it to ONNX, score "
    "image folders. Every subcommand has --help.",
)

STAGES = {
    "train": train_app,  # also: python -m train
    "export": export_app,  # also: onnx-export
    "score": score_app,  # also: mri-score
    "weights": weights_app,  # also: mri-weights
    "report": report_app,  # also: mri-report
}
for name, stage in STAGES.items():
    (command,) = stage.registered_commands
    assert command.callback is not None
    app.command(name, help=command.help)(command.callback)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mri44 {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Options before the subcommand."""


def main() -> None:
    app()
