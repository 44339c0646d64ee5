"""Using trained weights: eval (loss and accuracy on a data set) and predict (the
model's output for every record), each in a forward-only plan."""

from __future__ import annotations

import json
import math
import os

import click

from nntrainer_cli.errors import ConfigError
from nntrainer_cli.files import check_writable, write_text

from .common import (DATA, FILE, WEIGHTS, batch_opt, handle_errors, model_arg, set_opt, warn,
                     weights_map_opt)

_weights_opt = click.option("--weights", "-w", type=WEIGHTS, required=True,
                            help="Trained weights: NNTrainer .bin or .safetensors.")


def _names(weights_map):
    from nntrainer_cli.runtime.tensor_files import read_weights_map
    return read_weights_map(weights_map) if weights_map else None


def _open(model, data, batch_size, overrides, need_labels=True):
    """The forward-only plan, the data (--data, else the model's test set), its path,
    and the training set's class names where it names them."""
    from nntrainer_cli.pipeline import prepare
    from nntrainer_cli.runtime.data import class_names, open_dataset
    from nntrainer_cli.runtime.swap_io import check_swap_dir
    from nntrainer_cli.runtime.tables import has_column
    from nntrainer_cli.runtime.data import record_shapes

    p = prepare(model, overrides=overrides, batch_size=batch_size, require_loss=False,
                inference=True)
    warn(p.cfg.warnings)
    if p.swap:   # the model's memory_swap: inference swaps too
        check_swap_dir(p.swap.directory)
    cfg, shapes = p.cfg, record_shapes(p.graph)
    train, test = cfg.data.get("train"), cfg.data.get("test")
    # the training set's class names number the classes of what is evaluated here
    classes = class_names(cfg.resolve(train.section, train.key), train.kind,
                          train.label_column, *shapes) if train else None
    if data is None:
        if test is None:
            raise ConfigError("no test data: add [test_set] or pass --data FILE", file=model)
        path, where = cfg.resolve(test.section, test.key), test.error
        kind, label_column = test.kind, test.label_column
    else:
        path, kind = os.path.abspath(data), "auto"
        label_column = next((s.label_column for s in (test, train) if s and s.label_column
                             and path.lower().endswith(".csv")
                             and has_column(path, s.label_column)), None)   # the model's
        where = lambda msg: ConfigError(msg, key="--data")  # noqa: E731
    ds = open_dataset(path, *shapes, where, need_labels, kind, label_column, classes)
    warn(ds.notes)
    return p, ds, path, classes


@click.command("eval")
@model_arg
@_weights_opt
@click.option("--data", type=DATA, help="Data to evaluate on (default: the model's test set): "
              "a raw or .npz file, a .csv table, or a folder of images per class.")
@batch_opt
@click.option("--report", "report_path", type=FILE, help="Also write the results as JSON.")
@weights_map_opt
@set_opt
@handle_errors
def eval_(model, weights, data, batch_size, report_path, weights_map, overrides):
    """Evaluate MODEL with trained weights: loss and accuracy, and the memory it took."""
    from nntrainer_cli.report.tables import inference_summary
    from nntrainer_cli.runtime.inference import infer

    if report_path:
        check_writable(report_path, "report")
    p, ds, path, _ = _open(model, data, batch_size, overrides)
    try:
        report = infer(model, p.graph, p.plan, weights, ds, path, names=_names(weights_map),
                       swap=p.swap)
    finally:
        ds.close()
    if report_path:
        write_text(report_path, json.dumps(report.to_json(), indent=2))
    click.echo(inference_summary(report))


@click.command()
@model_arg
@_weights_opt
@click.option("--data", type=DATA, required=True,
              help="The records to predict: raw data as for training, .npz with 'x' "
                   "(labels 'y' may be left out), a .csv table (the label column may be "
                   "left out), or a folder of images per class.")
@click.option("--output", "-o", type=FILE, required=True,
              help="Where the outputs go, one row per record in input order (after the "
                   "final activation): .npy (float32, records × values) or .csv with a "
                   "header: the record (its file for images, else its number), one column "
                   "per value (named by class where the training set names them) and the "
                   "predicted class.")
@batch_opt
@weights_map_opt
@set_opt
@handle_errors
def predict(model, weights, data, output, batch_size, weights_map, overrides):
    """Write MODEL's output for every record of --data."""
    from nntrainer_cli.runtime.inference import OutputFile, infer

    check_writable(output, "predictions")
    p, ds, path, classes = _open(model, data, batch_size, overrides, need_labels=False)
    out = p.graph.losses[0] if p.graph.losses else p.graph.nodes[-1]
    try:
        with OutputFile(output, ds.count, math.prod(out.ctx.output_shapes[0][1:]),
                        ds.record_names(), classes) as f:
            report = infer(model, p.graph, p.plan, weights, ds, path, f.write,
                           _names(weights_map), p.swap)
    finally:
        ds.close()
    click.echo(f"wrote {report.records} prediction{'s' if report.records != 1 else ''} to "
               f"{output}", err=True)
