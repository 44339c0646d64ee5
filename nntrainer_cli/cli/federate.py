"""`nntrainer federate`: federated averaging of one model over many clients' data."""

from __future__ import annotations

from dataclasses import replace

import click

from nntrainer_cli.errors import ConfigError
from nntrainer_cli.files import check_writable

from .common import (FILE, batch_opt, budget_opt, handle_errors, model_arg, planner_opt,
                     set_opt, warn)
from .train import run_and_report


@click.command()
@model_arg
@click.option("--clients", type=click.IntRange(min=1),
              help="How many clients share the training set (required, except with "
                   "--partition dir: one per entry of the training folder).")
@click.option("--rounds", type=click.IntRange(min=1), required=True,
              help="Rounds of federated averaging.")
@click.option("--local-epochs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Epochs each client trains its own records per round.")
@click.option("--partition", default="iid", show_default=True, metavar="iid|dirichlet:A|dir",
              help="How the training set is split: iid (random, equal shares), "
                   "dirichlet:ALPHA (per class, shares drawn from Dirichlet(ALPHA): small "
                   "ALPHA, few classes per client), or dir ([train_set] path is a folder "
                   "with one entry per client, read as [train_set] type says).")
@click.option("--engine", type=click.Choice(["local", "flower"]), default="local",
              show_default=True,
              help="local: the clients one after another in this process, one arena for "
                   "all. flower: a Flower server and one process per client on 127.0.0.1 "
                   "(needs the 'federated' extra: pip install 'nntrainer_cli[federated]').")
@batch_opt
@planner_opt
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed for the initial weights, the split, and client k's shuffling "
                   "(seed + k).")
@click.option("--init-weights", type=FILE,
              help="Start the global model from this weights file (.bin or .safetensors).")
@click.option("--save", type=FILE,
              help="Save the global weights here after every round (atomic); default: "
                   "[Model] save_path.")
@click.option("--report", "report_path", type=FILE,
              help="Write the results as JSON to this file, with every round's clients.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@click.option("--no-tracemalloc", "no_trace", is_flag=True,
              help="Do not trace allocations (faster); the report gives RSS figures only.")
@budget_opt
@set_opt
@handle_errors
def federate(model, clients, rounds, local_epochs, partition, engine, batch_size, planner,
             seed, init_weights, save, report_path, quiet, no_trace, budget, overrides):
    """Train MODEL by federated averaging (FedAvg): its training set is split among
    clients; each round every client trains its share from the global weights, and the
    global weights become the clients' mean, weighted by their record counts. Only
    weights leave a client. Reports each round's validation accuracy and memory."""
    from nntrainer_cli.optim.schedulers import make_schedule
    from nntrainer_cli.pipeline import parse_size, prepare
    from nntrainer_cli.runtime import partition as parts
    from nntrainer_cli.runtime.federation import (FederatedTrainer, FedOptions,
                                                  open_federated)
    from nntrainer_cli.runtime.trainer import TrainOptions

    kind, _ = parts.parse(partition)
    if clients is None and kind != "dir":
        raise ConfigError("how many clients? give --clients N", key="--clients")
    p = prepare(model, overrides=overrides, batch_size=batch_size, planner=planner,
                budget=parse_size(budget) if budget is not None else None)
    cfg = p.cfg
    warn(cfg.warnings, quiet)
    if p.optimizer is None and p.graph.learns_by_gradient:
        raise ConfigError("no [Optimizer] section: training needs one (e.g. type = sgd)",
                          file=model)
    if "train" not in cfg.data:
        raise ConfigError("no training data: add [train_set] with path = FILE", file=model)
    save = save or cfg.model_path("save_path")
    for path, what in ((save, "weights"), (report_path, "report")):
        if path:
            check_writable(path, what)
    fed = FedOptions(clients, rounds, local_epochs, partition, engine)
    data, client_sets = open_federated(cfg, p.graph, fed, seed)
    fed = replace(fed, clients=len(client_sets))
    warn([note for ds in data.values() for note in ds.notes], quiet)
    opts = TrainOptions(epochs=rounds * local_epochs, seed=seed, quiet=quiet, save=save,
                        init_weights=init_weights, swap=p.swap, trace_memory=not no_trace)
    trainer = FederatedTrainer(cfg, p.graph, p.plan, p.optimizer, make_schedule(cfg), data,
                               opts, fed, client_sets)
    run_and_report(trainer, p.plan, [*data.values(), *client_sets], report_path, quiet,
                   rounds, "rounds")
