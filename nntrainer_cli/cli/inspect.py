"""Commands that look at a model without training it: plan, summary, check."""

from __future__ import annotations

import json
import os
import sys

import click

from nntrainer_cli.errors import UserError
from nntrainer_cli.files import check_writable, write_text

from .common import (FILE, MODEL_EXTENSIONS, batch_opt, budget_opt, fail, lookahead_opt,
                     model_arg, planner_opt, set_opt, warn, handle_errors)


@click.command()
@model_arg
@click.option("--format", "fmt", type=click.Choice(["text", "json", "svg"]),
              help="Readable tables, one JSON object, or an SVG memory map (time across, "
                   "arena offset down; open it in a browser). Default: by the extension "
                   "of --output (.json, .svg), else text.")
@batch_opt
@planner_opt
@budget_opt
@lookahead_opt
@click.option("--output", "-o", type=FILE,
              help="Write to this file instead of standard output.")
@set_opt
@handle_errors
def plan(model, fmt, batch_size, planner, budget, lookahead, output, overrides):
    """Print MODEL's memory plan: execution order, tensors, offsets, peak."""
    from nntrainer_cli.pipeline import Planning
    from nntrainer_cli.report.svg import plan_svg
    from nntrainer_cli.report.tables import head_json, head_text, plan_json, plan_text

    if output:
        check_writable(output)
    if fmt is None:
        ext = os.path.splitext(output or "")[1].lower().lstrip(".")
        fmt = ext if ext in ("json", "svg") else "text"
    planning = Planning(model, overrides=overrides, batch_size=batch_size, planner=planner,
                        require_loss=False, budget=budget, lookahead=lookahead)
    p = planning.prepared()
    # what train runs from epoch 2 (the feature cache's), where there is one
    head = planning.head_plan(p) if p.cfg.model["epochs"] > 1 else None
    warn(p.cfg.warnings)
    if fmt == "text" and not output:   # whether it fits this machine as it is
        click.echo(p.auto or fits_here(p.plan), err=True)
    text = {"json": lambda: json.dumps({**plan_json(p.plan, model), **head_json(head)},
                                       indent=2),
            "svg": lambda: plan_svg(p.plan, model),
            "text": lambda: plan_text(p.plan, model) + head_text(head)}[fmt]()
    if output:
        write_text(output, text)
        click.echo(f"wrote {output} ({fmt}, {len(text.encode()) / 1024:.1f} KiB)", err=True)
    else:
        click.echo(text)


def fits_here(plan) -> str:
    """Whether the plan fits what this machine leaves this process, and if not, what
    --memory-budget auto would do."""
    from nntrainer_cli.pipeline import machine_budget

    found = machine_budget()
    room, how = found.budget, found.how
    arena = plan.arena_bytes
    if arena <= room:
        return f"this machine: {room / 2**20:.1f} MiB for training ({how}); the arena fits"
    return (f"this machine: {room / 2**20:.1f} MiB for training ({how}); the arena "
            f"({arena / 2**20:.1f} MiB) does not fit: train with --memory-budget auto")


@click.command()
@model_arg
@batch_opt
@set_opt
@handle_errors
def summary(model, batch_size, overrides):
    """List MODEL's layers: output shapes, parameters and memory per layer."""
    from nntrainer_cli.pipeline import prepare
    from nntrainer_cli.report.tables import model_summary

    p = prepare(model, overrides=overrides, batch_size=batch_size, require_loss=False)
    warn(p.cfg.warnings)
    click.echo(model_summary(p.plan, p.graph))


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


@click.command()
@click.argument("paths", nargs=-1, type=click.Path())
@batch_opt
@handle_errors
def check(paths, batch_size):
    """Parse, build, infer shapes and plan every model in PATHS (files or folders,
    default: configs/ in the current folder) without training. Missing data files are
    warnings.
    Exits 2 if any model fails."""
    from nntrainer_cli.pipeline import prepare
    from nntrainer_cli.sizes import human

    if not paths and not os.path.isdir("configs"):
        fail("no configs/ folder here, the default: give the model files or folders", 2)
    files = _model_files(paths or ["configs"])
    if not files:
        fail(f"no model files ({', '.join(MODEL_EXTENSIONS)}) in {' '.join(paths or ['configs'])}", 2)
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
            if loc.kind == "dir" and not os.path.isdir(data_path):
                notes.append(str(loc.error(f"image folder not found: {data_path}")))
            elif loc.kind != "dir" and not os.path.isfile(data_path):
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
