"""The `nntrainer` command: train, federate, report, compare, plan, check, summarize,
convert and import models."""

from __future__ import annotations

import signal

import click

from nntrainer_cli import __version__
from nntrainer_cli.errors import Terminated

from .common import OneLineErrors
from .exchange import convert, import_
from .federate import federate
from .infer import eval_, predict
from .inspect import check, plan, summary
from .runs import compare, report
from .train import train


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nntrainer")
@click.option("--debug", is_flag=True, help="Show the full traceback when something fails.")
def main(debug: bool) -> None:
    """Train NNTrainer INI models with memory planned ahead of time.

    Every tensor of a training iteration is placed in one arena; tensors whose
    lifetimes do not overlap share bytes.
    """
    signal.signal(signal.SIGTERM, _terminate)


def _terminate(signum, frame):
    raise Terminated()


for command in (train, federate, eval_, predict, plan, summary, check, convert, import_,
                report, compare):
    main.add_command(command)
