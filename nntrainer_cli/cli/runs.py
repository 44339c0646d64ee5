"""Looking back at run folders (`train --run-dir`): `report` renders one as an HTML page,
`compare` sets several side by side."""

from __future__ import annotations

import json
import os
import sys

import click

from nntrainer_cli.files import check_writable, write_text

from .common import FILE, handle_errors, warn

RUN_DIR = click.Path(file_okay=False)


@click.command()
@click.argument("run_dir", type=RUN_DIR)
@click.option("--output", "-o", type=FILE,
              help="Where the page goes (default: RUN_DIR/report.html; - for standard "
                   "output).")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@handle_errors
def report(run_dir, output, quiet):
    """Render RUN_DIR (made by train --run-dir) as one self-contained HTML page: loss and
    accuracy per epoch, the memory map, planned against measured memory, the layers,
    the swap figures under a budget, the machine and the model as it ran. No network,
    scripts or fonts; it prints well too. A run cut short renders what it left."""
    from nntrainer_cli.report.html import render
    from nntrainer_cli.report.run_folder import Run

    run = Run(run_dir)
    output = output or os.path.join(run_dir, "report.html")
    page = render(run)
    if output == "-":
        click.echo(page, nl=False)
    else:
        check_writable(output, "report page")
        write_text(output, page)
    lacking = run.missing + [f"{name} (damaged)" for name in run.damaged]
    if lacking:
        warn([f"{run_dir} lacks {', '.join(lacking)}: the page shows what is there"], quiet)
    if not quiet and output != "-":
        click.echo(f"wrote {output} ({len(page.encode()) / 1024:.1f} KiB)")


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=RUN_DIR)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="A table for people, or JSON for scripts.")
@handle_errors
def compare(run_dirs, fmt):
    """Set the final figures of RUN_DIRS side by side: accuracy, the arena (resident
    under a budget), the budget and the swap traffic it cost, measured memory, time;
    for choosing between configs. A folder that cannot be read is named on standard
    error and left out (exit 2); the others are still shown."""
    from nntrainer_cli.errors import UserError
    from nntrainer_cli.report.run_folder import Run
    from nntrainer_cli.report.tables import table
    from nntrainer_cli.sizes import human

    rows, bad = [], []
    for d in run_dirs:
        try:
            rows.append(_figures(Run(d)))
        except UserError as e:
            bad.append(str(e))
    if rows and fmt == "json":
        click.echo(json.dumps(rows, indent=2))
    elif rows:
        cols = [("run", "run", str), ("epochs", "epochs", str),
                ("val acc", "val_accuracy", _num), ("test acc", "test_accuracy", _num),
                ("arena", "arena_bytes", human), ("budget", "budget_bytes", human),
                ("swapped in+out", "swap_bytes", human),
                ("measured peak", "measured_peak_bytes", human),
                ("peak RSS", "rss_peak_bytes", human), ("step", "step_ms", _ms),
                ("time", "seconds", lambda v: f"{v:.1f} s")]
        click.echo(table([c[0] for c in cols],
                         [[fn(r[key]) if r[key] is not None else "-" for _, key, fn in cols]
                          for r in rows], right=set(range(1, len(cols)))))
        if any(not r["finished"] for r in rows):
            click.echo("(stopped): interrupted, or no report.json")
    for message in bad:
        click.echo(f"error: {message}", err=True)
    if bad:
        sys.exit(2)


def _num(v) -> str:
    return f"{v:.4f}"


def _ms(v) -> str:
    return f"{v:.2f} ms"


def _figures(run) -> dict:
    """One run's final figures (None where the run did not get that far)."""
    rep = run.report or {}
    mem = rep.get("memory") or {}
    last = run.metrics[-1] if run.metrics else {}
    test = rep.get("test") or {}
    sw = mem.get("swap") or {}
    finished = bool(rep) and not rep.get("interrupted")
    epochs = len(rep["epochs"]) if rep.get("epochs") else int(last["epoch"]) if last else 0
    return {"run": run.path, "model": run.info.get("model"),
            "command": run.info.get("command"),
            "epochs": f"{epochs}" if finished else f"{epochs} (stopped)",
            "train_accuracy": last.get("train_accuracy"),
            "val_accuracy": last.get("val_accuracy"), "test_accuracy": test.get("accuracy"),
            "test_loss": test.get("loss"),
            "planned_peak_bytes": mem.get("planned_peak_bytes"),
            "arena_bytes": sw.get("resident_peak_bytes", mem.get("planned_peak_bytes")),
            "budget_bytes": sw.get("budget_bytes"),
            "swap_bytes": sw["bytes_in"] + sw["bytes_out"] if sw else None,
            "measured_peak_bytes": mem.get("measured_peak_bytes"),
            "rss_peak_bytes": mem.get("rss_peak_bytes"),
            "step_ms": 1000 * rep["step_seconds_median"]
            if rep.get("step_seconds_median") else None,
            "seconds": rep.get("seconds"), "finished": finished}
