"""The `nntrainer` command: train, plan and check NNTrainer models."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import traceback

import click

from nntrainer_cli import __version__
from nntrainer_cli.errors import ConfigError, Terminated, TrainingError, UserError
from nntrainer_cli.files import check_writable, write_text
from nntrainer_cli.plan import PLANNER_NAMES

MODEL_EXTENSIONS = (".ini", ".yaml", ".yml")


class FilePath(click.Path):
    """A file path; an empty one is refused rather than silently meaning 'none'."""

    def convert(self, value, param, ctx):
        if value == "":
            self.fail("an empty path", param, ctx)
        return super().convert(value, param, ctx)


FILE = FilePath(dir_okay=False)


def _fail(message: str, code: int):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _warn(notes, quiet: bool = False) -> None:
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
            _fail(str(e), e.exit_code)
        except KeyboardInterrupt as e:
            _fail("interrupted", getattr(e, "exit_code", 130))
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as e:  # a bug of ours: say so plainly
            if debug:
                raise
            _fail(f"internal error: {type(e).__name__}: {e} (run with --debug for details)", 1)
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
            _fail(f"{e.format_message()}{hint}", 2)
        except click.ClickException as e:
            _fail(e.format_message(), e.exit_code)
        except click.Abort:
            _fail("interrupted", 130)
        except BrokenPipeError:  # the reader went away (`nntrainer check | head`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


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


_model_arg = click.argument("model", type=FILE)
_planner_opt = click.option("--planner", type=click.Choice(PLANNER_NAMES), default="best",
                            show_default=True,
                            help="Memory planner; 'best' runs all and keeps the smallest arena.")
_batch_opt = click.option("--batch-size", "-b", type=click.IntRange(min=1),
                          help="Override [Model] batch_size.")
_budget_opt = click.option(
    "--memory-budget", "budget", metavar="SIZE",
    help="Keep the resident arena within SIZE (64MiB, 1.5GB, 500000 bytes, or 50% of the "
         "plan made without a budget): tensors idle between two uses go to a swap file and come "
         "back before they are needed. Same results, less memory.")
_lookahead_opt = click.option(
    "--lookahead", type=click.IntRange(min=0),
    help="Under a budget, start reading a tensor back this many slots before its use "
         "(default: [Model] memory_swap_lookahead, else 2).")
_set_opt = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                        help="Override a config value, e.g. --set model.epochs=5 or "
                             "--set train_set.path=data.dat (repeatable).")


@main.command()
@_model_arg
@click.option("--epochs", type=click.IntRange(min=1), help="Override [Model] epochs.")
@_batch_opt
@_planner_opt
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed for weight initialization and shuffling.")
@click.option("--no-shuffle", is_flag=True, help="Read training data in file order.")
@click.option("--init-weights", type=FILE,
              help="Start from this NNTrainer weights file (.bin).")
@click.option("--save", type=FILE,
              help="Save weights here after every epoch (NNTrainer .bin layout, atomic); "
                   "default: [Model] save_path.")
@click.option("--report", "report_path", type=FILE,
              help="Write the results as JSON to this file.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@click.option("--no-tracemalloc", "no_trace", is_flag=True,
              help="Do not trace allocations: faster small kernels, for timing runs; the "
                   "report then gives RSS figures only, no measured_peak_bytes.")
@_budget_opt
@_lookahead_opt
@click.option("--swap-dir", type=click.Path(file_okay=False),
              help="Where the swap file goes under a budget (default: [Model] "
                   "memory_swap_path, else the system temp directory). It is removed at the end.")
@click.option("--swap-direct", is_flag=True,
              help="Open the swap file with O_DIRECT so reads really come from the disk, "
                   "not the page cache (for honest benchmarks; stays round up to 4 KiB).")
@_set_opt
@handle_errors
def train(model, epochs, batch_size, planner, seed, no_shuffle, init_weights, save, report_path,
          quiet, no_trace, budget, lookahead, swap_dir, swap_direct, overrides):
    """Train MODEL and report accuracy and peak memory (planned and measured)."""
    from nntrainer_cli.pipeline import prepare
    from nntrainer_cli.report.tables import plan_summary, train_summary
    from nntrainer_cli.runtime.trainer import Trainer, TrainOptions, open_datasets
    from nntrainer_cli.optim.schedulers import make_schedule

    from nntrainer_cli.pipeline import parse_size
    from nntrainer_cli.runtime.swap_io import check_swap_dir

    p = prepare(model, overrides=overrides, batch_size=batch_size, planner=planner,
                budget=parse_size(budget) if budget is not None else None, lookahead=lookahead,
                swap_dir=swap_dir, direct=swap_direct)
    cfg = p.cfg
    _warn(cfg.warnings, quiet)
    if p.swap:
        check_swap_dir(p.swap.directory)
    if p.optimizer is None:
        raise ConfigError("no [Optimizer] section: training needs one (e.g. type = adam)",
                          file=model)
    if "train" not in cfg.data:
        raise ConfigError("no training data: add [train_set] with path = FILE, or pass "
                          "--set train_set.path=FILE", file=model)
    if save is None:
        save = cfg.model_path("save_path")
    if save:
        check_writable(save, "weights")
    if report_path:
        check_writable(report_path, "report")
    data = open_datasets(cfg, p.graph)
    _warn([note for ds in data.values() for note in ds.notes], quiet)
    epochs = epochs or cfg.model["epochs"]
    saved = f"weights of finished epochs are in {save}" if save else \
        "weights were not saved (use --save FILE)"
    try:
        if not quiet:
            click.echo(plan_summary(p.plan), err=True)
        opts = TrainOptions(epochs=epochs, seed=seed,
                            shuffle=not no_shuffle, quiet=quiet, save=save,
                            init_weights=init_weights, swap=p.swap,
                            trace_memory=not no_trace)
        report = Trainer(cfg, p.graph, p.plan, p.optimizer, make_schedule(cfg), data, opts).run()
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: keep what finished
        report = getattr(stop, "report", None)
        done = len(report.epochs) if report else 0
        if report_path and report:
            write_text(report_path, json.dumps(report.to_json(), indent=2))
        _fail(f"interrupted after {done} of {epochs} epochs; {saved}"
              + (f"; report in {report_path}" if report_path and report else ""),
              getattr(stop, "exit_code", 130))
    finally:
        for ds in data.values():
            ds.close()
    if report_path:
        write_text(report_path, json.dumps(report.to_json(), indent=2))
    if not quiet:
        click.echo(train_summary(report))


@main.command()
@_model_arg
@click.option("--format", "fmt", type=click.Choice(["text", "json", "svg"]), default="text",
              show_default=True,
              help="Readable tables, one JSON object, or an SVG memory map (time across, "
                   "arena offset down; open it in a browser).")
@_batch_opt
@_planner_opt
@_budget_opt
@_lookahead_opt
@click.option("--output", "-o", type=FILE,
              help="Write to this file instead of standard output.")
@_set_opt
@handle_errors
def plan(model, fmt, batch_size, planner, budget, lookahead, output, overrides):
    """Print MODEL's memory plan: execution order, tensors, offsets, peak."""
    from nntrainer_cli.pipeline import prepare
    from nntrainer_cli.report.svg import plan_svg
    from nntrainer_cli.report.tables import plan_json, plan_text

    if output:
        check_writable(output)
    from nntrainer_cli.pipeline import parse_size

    p = prepare(model, overrides=overrides, batch_size=batch_size, planner=planner,
                require_loss=False, budget=parse_size(budget) if budget is not None else None,
                lookahead=lookahead)
    _warn(p.cfg.warnings)
    text = {"json": lambda: json.dumps(plan_json(p.plan, model), indent=2),
            "svg": lambda: plan_svg(p.plan, model),
            "text": lambda: plan_text(p.plan, model)}[fmt]()
    if output:
        write_text(output, text)
    else:
        click.echo(text)


@main.command()
@_model_arg
@_batch_opt
@_set_opt
@handle_errors
def summary(model, batch_size, overrides):
    """List MODEL's layers: output shapes, parameters and memory per layer."""
    from nntrainer_cli.pipeline import prepare
    from nntrainer_cli.report.tables import model_summary

    p = prepare(model, overrides=overrides, batch_size=batch_size, require_loss=False)
    _warn(p.cfg.warnings)
    click.echo(model_summary(p.plan, p.graph))


@main.command()
@_model_arg
@click.option("--to", "fmt", type=click.Choice(["yaml", "ini"]), required=True,
              help="The format to write.")
@click.option("--output", "-o", type=FILE,
              help="Write to this file (relative data paths are rebased to it) instead of "
                   "standard output.")
@handle_errors
def convert(model, fmt, output):
    """Convert MODEL between INI and YAML. Keys are written lower-case; the comment
    lines at the top of the file are carried over, other comments are dropped. The
    converted model plans and trains exactly like MODEL."""
    from nntrainer_cli.config.reader import read_model_file
    from nntrainer_cli.config.model import load_config
    from nntrainer_cli.graph import build_graph
    from nntrainer_cli.config.writers import leading_comments, rebase, to_ini, to_yaml

    build_graph(load_config(model), require_loss=False)  # refuse a model that does not build
    sections = read_model_file(model)
    if output:
        check_writable(output)
        rebase(sections, model, output)
    text = (to_yaml if fmt == "yaml" else to_ini)(sections, leading_comments(model))
    if output:
        write_text(output, text)
    else:
        click.echo(text, nl=False)


def _model_files(paths) -> list[str]:
    files = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs.sort()
                files += [os.path.join(root, n) for n in sorted(names)
                          if n.lower().endswith(MODEL_EXTENSIONS)]
        else:
            files.append(path)
    return files


@main.command()
@click.argument("paths", nargs=-1, type=click.Path())
@_batch_opt
@handle_errors
def check(paths, batch_size):
    """Parse, build, infer shapes and plan every model in PATHS (files or folders,
    default: configs/) without training. Missing data files are warnings.
    Exits 2 if any model fails."""
    from nntrainer_cli.pipeline import prepare
    from nntrainer_cli.report.tables import human

    files = _model_files(paths or ["configs"])
    if not files:
        _fail(f"no model files ({', '.join(MODEL_EXTENSIONS)}) in {' '.join(paths or ['configs'])}", 2)
    failed = 0
    for path in files:
        try:
            p = prepare(path, batch_size=batch_size, require_loss=False)
        except UserError as e:
            failed += 1
            click.echo(f"error: {e}")
            continue
        notes = list(p.cfg.warnings)
        for loc in p.cfg.data.values():
            data_path = p.cfg.resolve(loc.section, loc.key)
            if not os.path.isfile(data_path):
                notes.append(str(loc.error(f"data file not found: {data_path}")))
        for note in notes:  # on standard output, with the line they are about
            click.echo(f"warning: {note}")
        mode = "" if p.graph.training else " (no loss: planned for inference)"
        click.echo(f"ok {path}{mode}: {len(p.graph.nodes)} layers, peak {human(p.plan.peak_bytes)}, "
                   f"lower bound {human(p.plan.lower_bound_bytes)}, "
                   f"naive {human(p.plan.naive_bytes)}")
    click.echo(f"{len(files) - failed} of {len(files)} models passed")
    if failed:
        sys.exit(2)
