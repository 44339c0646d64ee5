"""Commands that move models between formats: convert (INI ↔ YAML) and import (ONNX)."""

from __future__ import annotations

import os

import click

from nntrainer_cli.errors import ConfigError
from nntrainer_cli.files import check_writable, write_text

from .common import FILE, MODEL_EXTENSIONS, model_arg, handle_errors


@click.command()
@model_arg
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
    from nntrainer_cli.config.writers import leading_comments, rebase, to_ini, to_yaml
    from nntrainer_cli.pipeline import prepare

    if output and output.lower().endswith(MODEL_EXTENSIONS) and \
            output.lower().endswith(".ini") != (fmt == "ini"):
        raise ConfigError(f"--to {fmt} but {output} is named as the other format; the file "
                          "would not read back", key="--output")
    prepare(model, require_loss=False)  # refuse a model that does not build
    sections = read_model_file(model)
    if output:
        check_writable(output)
        rebase(sections, model, output)
    text = (to_yaml if fmt == "yaml" else to_ini)(sections, leading_comments(model))
    if output:
        write_text(output, text)
    else:
        click.echo(text, nl=False)


@click.command("import")
@click.argument("source", type=FILE)
@click.option("--output", "-o", type=FILE, required=True,
              help="The model file to write (INI, or YAML by extension); the weights go "
                   "beside it with the extension .bin (NNTrainer's layout).")
@handle_errors
def import_(source, output):
    """Import an ONNX model: write it as a model file of ours plus its weights. Nothing
    is written when an operator, attribute or shape cannot be expressed."""
    import tempfile

    from nntrainer_cli.config.model import load_config
    from nntrainer_cli.config.writers import to_ini, to_yaml
    from nntrainer_cli.exchange.onnx_import import convert
    from nntrainer_cli.graph import build_graph
    from nntrainer_cli.runtime.weights import save_arrays

    check_writable(output, "model")
    weights = os.path.splitext(output)[0] + ".bin"
    check_writable(weights, "weights")
    imported = convert(source)
    yaml_out = output.lower().endswith((".yaml", ".yml"))
    text = (to_yaml if yaml_out else to_ini)(imported.sections,
                                             [f"# Imported from {os.path.basename(source)}"])
    # build the graph from the text first: a shape that does not fit stops it here
    with tempfile.NamedTemporaryFile("w", suffix=os.path.splitext(output)[1] or ".ini",
                                     dir=os.path.dirname(os.path.abspath(output))) as tmp:
        tmp.write(text)
        tmp.flush()
        graph = build_graph(load_config(tmp.name))
    save_arrays(weights, graph, imported.weights)
    write_text(output, text)
    for note in imported.notes:
        click.echo(f"note: {note}", err=True)
    params = sum(a.size for a in imported.weights.values())
    click.echo(f"wrote {output} ({len(graph.nodes)} layers) and {weights} ({params:,} "
               f"parameters); start training from them with --init-weights {weights}")
