"""`nntrainer train`: train a model and report accuracy and memory."""

from __future__ import annotations

import json
import os

import click

from nntrainer_cli.errors import ConfigError
from nntrainer_cli.files import check_writable, write_text

from .common import (FILE, WEIGHTS, batch_opt, budget_opt, fail, handle_errors, lookahead_opt,
                     model_arg, planner_opt, set_opt, warn, weights_map_opt)


@click.command()
@model_arg
@click.option("--epochs", type=click.IntRange(min=1), help="Override [Model] epochs.")
@batch_opt
@planner_opt
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed for weight initialization and shuffling.")
@click.option("--no-shuffle", is_flag=True, help="Read training data in file order.")
@click.option("--init-weights", type=WEIGHTS,
              help="Start from this weights file: NNTrainer's .bin, or .safetensors with "
                   "tensors named as in the plan (fc1:weight, ...).")
@click.option("--save", type=FILE,
              help="Save weights here after every epoch (NNTrainer .bin layout, or "
                   ".safetensors by extension; atomic); default: [Model] save_path.")
@click.option("--save-best", type=FILE,
              help="Save the weights of the epoch with the best validation accuracy (on a "
                   "tie, the lower validation loss) here, when it ends (atomic; needs a "
                   "validation set); default: [Model] save_best_path.")
@click.option("--checkpoint", type=FILE,
              help="Write a checkpoint here (weights, optimizer state, position, record "
                   "order and random state; atomic) after every epoch, every --save-every "
                   "iterations, and when Ctrl-C or SIGTERM stops the run; default: the "
                   "--resume file, or save_path.ckpt with [Model] continue_train = true.")
@click.option("--save-every", type=click.IntRange(min=1), metavar="N",
              help="Also write the checkpoint every N iterations (needs a checkpoint path).")
@click.option("--resume", type=FILE,
              help="Continue from this checkpoint exactly where it stopped: the weights "
                   "and every other state end as in an uninterrupted run with the same seed.")
@click.option("--report", "report_path", type=FILE,
              help="Write the results as JSON to this file.")
@click.option("--run-dir", type=click.Path(file_okay=False),
              help="Keep the whole run in this new (or empty) folder: the model as it ran, "
                   "the plan (JSON, SVG), metrics.csv (one row per epoch), report.json, what "
                   "ran it (run.json), and the weights and checkpoint unless --save and "
                   "--checkpoint put them elsewhere. Read it back with 'nntrainer report' and "
                   "'nntrainer compare'. Default when weights are saved (--save or [Model] "
                   "save_path): runs/STEM-N beside them, N the first number free.")
@click.option("--no-run-dir", is_flag=True,
              help="Write no run folder, not even the default one beside saved weights.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@click.option("--no-tracemalloc", "no_trace", is_flag=True,
              help="Do not trace allocations: faster small kernels, for timing runs; the "
                   "report then gives RSS figures only, no measured_peak_bytes.")
@click.option("--profile", is_flag=True,
              help="Time every slot of the training steps: the table after the summary (and "
                   "'profile' in the report) gives each layer and phase's share of a step, "
                   "the share outside the kernels, and GFLOP/s of the matrix products "
                   "against this machine's BLAS. Add --no-tracemalloc for kernel times "
                   "without the tracing's cost.")
@click.option("--no-feature-cache", "no_cache", is_flag=True,
              help="Run the frozen layers before the first trainable one every epoch, "
                   "instead of keeping their output per record from the first epoch "
                   "(the default when they are deterministic, and there is no swap).")
@budget_opt
@lookahead_opt
@click.option("--swap-dir", type=click.Path(file_okay=False),
              help="Where the swap file goes under a budget (default: [Model] "
                   "memory_swap_path, else the system temp directory). It is removed at the end.")
@click.option("--swap-direct", is_flag=True,
              help="Open the swap file with O_DIRECT so reads really come from the disk, "
                   "not the page cache (for honest benchmarks; stays round up to 4 KiB).")
@weights_map_opt
@set_opt
@handle_errors
def train(model, epochs, batch_size, planner, seed, no_shuffle, init_weights, save, save_best,
          checkpoint, save_every, resume, report_path, run_dir, no_run_dir, quiet, no_trace,
          profile, no_cache, budget, lookahead, swap_dir, swap_direct, weights_map, overrides):
    """Train MODEL and report accuracy and peak memory (planned and measured)."""
    from nntrainer_cli.graph.frozen import frozen_prefix
    from nntrainer_cli.optim.schedulers import make_schedule
    from nntrainer_cli.pipeline import Planning
    from nntrainer_cli.runtime.swap_io import check_swap_dir
    from nntrainer_cli.runtime.tensor_files import read_weights_map
    from nntrainer_cli.runtime.data import open_datasets
    from nntrainer_cli.runtime.trainer import Trainer, TrainOptions

    planning = Planning(model, overrides=overrides, batch_size=batch_size, planner=planner,
                        budget=budget, lookahead=lookahead, swap_dir=swap_dir,
                        direct=swap_direct)
    data = None
    if planning.budget and planning.budget.auto:   # measured with the data open: what
        data = open_datasets(planning.cfg, planning.graph)   # the loader holds counts
    p = planning.prepared()
    cfg = p.cfg
    if p.auto and not quiet:
        click.echo(p.auto, err=True)
    unused = [flag for flag, given in (("--lookahead", lookahead is not None),
                                       ("--swap-dir", swap_dir), ("--swap-direct", swap_direct))
              if given and not p.swap]
    ignored = [f"{flag} has no effect without --memory-budget (or [Model] memory_swap)"
               for flag in unused]
    if epochs and any(o.lower().replace(" ", "").startswith("model.epochs=") for o in overrides):
        ignored.append("--epochs wins over --set model.epochs")
    if no_cache and frozen_prefix(p.graph) is None:
        ignored.append("--no-feature-cache has no effect: no frozen layers before the first "
                       "trainable one give each record an output to cache")
    if not p.graph.learns_by_gradient and (epochs or cfg.model["epochs"]) > 1:
        ignored.append("nothing learns by gradient here (centroid_knn enrolls): each epoch "
                       "enrolls every record again, the same centroids up to rounding; "
                       "one epoch is enough")
    warn(cfg.warnings + ignored, quiet)
    if p.swap:
        check_swap_dir(p.swap.directory)
    require_training(p, model)
    if save is None:
        save = cfg.model_path("save_path")
    if save_best and "valid" not in cfg.data:
        raise ConfigError("--save-best keeps the epoch with the best validation accuracy: "
                          "add [valid_set] with path = FILE", key="--save-best")
    if save_best is None and "valid" in cfg.data:
        save_best = cfg.model_path("save_best_path")
    if cfg.model["continue_train"] and save and not resume and not checkpoint:
        checkpoint = save + ".ckpt"   # NNTrainer's continue_train: pick up from save_path
        resume = checkpoint if os.path.isfile(checkpoint) else None
    checkpoint = checkpoint or resume
    if save_every and not checkpoint:
        raise ConfigError("needs a checkpoint path to write to: add --checkpoint FILE",
                          key="--save-every")
    if resume and init_weights:
        raise ConfigError("--resume and --init-weights both set the weights: give one",
                          key="--resume")
    if checkpoint:
        check_writable(checkpoint, "checkpoint")
    for path, what in ((save, "weights"), (save_best, "best weights")):
        if path:
            check_writable(path, what)
    if report_path:
        check_writable(report_path, "report")
    if data is None:
        data = open_datasets(cfg, p.graph)
    folder = run_folder(run_dir, no_run_dir, save)   # once flags and data are known good
    if folder:
        save = save or folder.file("weights.bin")
        checkpoint = checkpoint or folder.file("checkpoint.ckpt")
        folder.start(model, overrides, p.plan, click.get_current_context())
    warn([note for ds in data.values() for note in ds.notes], quiet)
    epochs = epochs or cfg.model["epochs"]
    # the feature cache's epochs under their own plan: not with --profile, which times
    # one plan's slots
    head = planning.head_plan(p) if p.swap and not no_cache and epochs > 1 and not profile \
        else None
    opts = TrainOptions(epochs=epochs, seed=seed,
                        shuffle=not no_shuffle, quiet=quiet, save=save, save_best=save_best,
                        init_weights=init_weights, swap=p.swap,
                        weights_map=read_weights_map(weights_map) if weights_map else None,
                        trace_memory=not no_trace, cache_features=not no_cache,
                        checkpoint=checkpoint, save_every=save_every, resume=resume,
                        on_epoch=folder.epoch if folder else None, profile=profile)
    trainer = Trainer(cfg, p.graph, p.plan, p.optimizer, make_schedule(cfg), data, opts, head)
    run_and_report(trainer, p.plan, list(data.values()), report_path, folder, quiet, epochs,
                   "epochs")


def run_folder(run_dir: str | None, no_run_dir: bool, save: str | None):
    """The run's folder: the one --run-dir names, else runs/STEM-N beside the weights
    when they are saved, none with --no-run-dir."""
    from nntrainer_cli.report.run_folder import RunFolder
    if no_run_dir and run_dir:
        raise ConfigError("--run-dir and --no-run-dir contradict each other: give one",
                          key="--no-run-dir")
    if run_dir:
        return RunFolder(run_dir)
    return RunFolder.beside(save) if save and not no_run_dir else None


def require_training(p, model: str) -> None:
    """What train and federate both need of a model: an optimizer where something
    learns by gradient, and training data."""
    if p.optimizer is None and p.graph.learns_by_gradient:
        raise ConfigError("no [Optimizer] section: training needs one (e.g. type = adam)",
                          file=model)
    if "train" not in p.cfg.data:
        raise ConfigError("no training data: add [train_set] with path = FILE, or pass "
                          "--set train_set.path=FILE", file=model)


def run_and_report(trainer, plan, datasets, report_path, folder, quiet, total: int,
                   unit: str):
    """Run `trainer`, write the JSON report (to `report_path` and the run folder, each
    when given), print the summary, close the data and the folder. On Ctrl-C or
    SIGTERM, say what finished and where it is, with the stop's exit code."""
    from nntrainer_cli.report.tables import plan_summary, profile_table, train_summary

    report_paths = [report_path] + ([folder.file("report.json")] if folder else [])
    save = trainer.opts.save
    try:
        if not quiet:
            click.echo(plan_summary(plan), err=True)
        report = trainer.run()
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: keep what finished
        report = getattr(stop, "report", None)
        done = len(report.epochs) if report else 0
        written = [p for p in report_paths if p] if report else []
        for path in written:
            write_text(path, json.dumps(report.to_json(), indent=2))
        if not save:
            saved = "weights were not saved (use --save FILE)"
        elif done:
            saved = f"weights of finished {unit} are in {save}"
        else:
            saved = f"no weights were saved (they are saved as each of the {unit} ends)"
        resumable = f"; continue with --resume {report.checkpoint}" \
            if report and report.checkpoint else ""
        fail(f"interrupted after {done} of {total} {unit}; {saved}{resumable}"
             + (f"; report in {written[0]}" if written else ""),
             getattr(stop, "exit_code", 130))
    finally:
        for ds in datasets:
            ds.close()
        if folder:
            folder.close()
    for path in report_paths:
        if path:
            write_text(path, json.dumps(report.to_json(), indent=2))
    if not quiet:
        click.echo(train_summary(report))
        if report.profile:
            click.echo("\n" + profile_table(report.profile))
        if folder:
            click.echo(f"run folder: {folder.path} (see it with: nntrainer report "
                       f"{folder.path})")
