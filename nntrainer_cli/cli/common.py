"""What every command shares: one-line errors and exit codes, file arguments that refuse
an empty path, warnings, and the options several commands take."""

from __future__ import annotations

import functools
import os
import re
import sys
import traceback

import click

from nntrainer_cli.config.reader import MODEL_EXTENSIONS
from nntrainer_cli.errors import TrainingError, UserError
from nntrainer_cli.plan import PLANNER_NAMES


class FilePath(click.Path):
    """A file path; an empty one is refused rather than silently meaning 'none'."""

    def convert(self, value, param, ctx):
        if value == "":
            self.fail("an empty path", param, ctx)
        return super().convert(value, param, ctx)


class WeightsPath(FilePath):
    """An existing weights file (checked before planning), refused with the flag that
    takes it when it is a model config, a checkpoint or an ONNX model."""

    OTHER = {".ckpt": ("a checkpoint", "; `train --resume` reads a checkpoint"),
             ".onnx": ("an ONNX model",
                       "; `nntrainer import` makes a model config and weights of an ONNX model"),
             **{ext: ("a model config", "") for ext in MODEL_EXTENSIONS}}

    def __init__(self):
        super().__init__(exists=True, dir_okay=False)

    def convert(self, value, param, ctx):
        ext = os.path.splitext(str(value))[1].lower()
        if ext in self.OTHER:
            kind, hint = self.OTHER[ext]
            self.fail(f"{value} is {kind}, not a weights file (.bin or .safetensors){hint}",
                      param, ctx)
        return super().convert(value, param, ctx)


FILE = FilePath(dir_okay=False)
WEIGHTS = WeightsPath()
DATA = FilePath()   # a data file, or a folder of images per class


def fail(message: str, code: int):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def warn(notes, quiet: bool = False) -> None:
    for note in notes if not quiet else ():
        click.echo(f"warning: {note}", err=True)


def handle_errors(fn):
    """Turn every failure into one line and an exit code: 2 for bad input, 1 for a
    failed run, 130 for Ctrl-C. --debug shows the traceback instead."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug = click.get_current_context().find_root().params.get("debug")
        try:
            return fn(*args, **kwargs)
        except (UserError, TrainingError) as e:
            if debug:
                traceback.print_exc()
            fail(str(e), e.exit_code)
        except KeyboardInterrupt as e:
            fail("interrupted", getattr(e, "exit_code", 130))
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as e:  # a bug of ours: say so plainly
            if debug:
                raise
            fail(f"internal error: {type(e).__name__}: {e} (run with --debug for details)", 1)
        finally:   # the command's arrays are gone: their memory goes back to the system
            from nntrainer_cli.runtime.measure import release_free_memory
            release_free_memory()
    return wrapper


class OneLineErrors(click.Group):
    """click's usage errors (a bad flag or choice) as one `error:` line and exit 2,
    like every other bad input."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **kw):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **kw)
        except click.UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # plain `nntrainer`: the help
                click.echo(e.ctx.get_help())
                sys.exit(0)
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
            if isinstance(e, click.NoSuchOption) and e.option_name == "--debug":
                hint = " (--debug goes before the command: nntrainer --debug COMMAND ...)"
            one = re.sub(r"[ \t]*\n\s*", " ", e.format_message())   # a list of choices
            fail(f"{one}{hint}", 2)
        except click.ClickException as e:
            fail(e.format_message(), e.exit_code)
        except click.Abort:
            fail("interrupted", 130)
        except BrokenPipeError:  # the reader went away (`nntrainer check | head`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


model_arg = click.argument("model", type=FILE)
planner_opt = click.option("--planner", type=click.Choice(PLANNER_NAMES), default="best",
                            show_default=True,
                            help="Memory planner; 'best' runs all and keeps the smallest arena.")
batch_opt = click.option("--batch-size", "-b", type=click.IntRange(min=1),
                          help="Override [Model] batch_size.")
budget_opt = click.option(
    "--memory-budget", "budget", metavar="SIZE",
    help="Keep the resident arena within SIZE (64MiB, 1.5GB, 500000 bytes, 50% of the "
         "plan made without a budget, or auto: what this machine or the process's memory "
         "cgroup leaves, less what the process holds and an 8 MiB margin): tensors idle "
         "between two uses go to a swap file and come back before they are needed. Same "
         "results, less memory.")
lookahead_opt = click.option(
    "--lookahead", type=click.IntRange(min=0),
    help="Under a budget, start reading a tensor back this many slots before its use "
         "(default: [Model] memory_swap_lookahead, else 2).")
weights_map_opt = click.option(
    "--weights-map", type=FILE,
    help="YAML renaming a safetensors file's tensors to ours (their_name: our_name, or "
         "{name: ..., transpose: true} for a PyTorch Linear weight, or null to leave one "
         "out), to load a PyTorch state_dict.")
set_opt = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                        help="Override a value of the model file, e.g. --set "
                             "model.batch_size=16 or --set fc1.unit=64 (repeatable).")
