"""`nntrainer federate`: federated averaging of one model over many clients' data."""

from __future__ import annotations

from dataclasses import replace

import click

from nntrainer_cli.errors import ConfigError
from nntrainer_cli.files import check_writable

from .common import (FILE, WEIGHTS, batch_opt, budget_opt, fail, handle_errors, model_arg,
                     planner_opt, set_opt, warn)
from .train import require_training, run_and_report, run_folder


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
@click.option("--fraction", type=click.FloatRange(0, 1, min_open=True), default=1.0,
              show_default=True,
              help="Share of the clients that train in each round (at least one), drawn "
                   "from --seed and the round.")
@click.option("--engine", type=click.Choice(["local", "flower"]), default="local",
              show_default=True,
              help="local: the clients one after another in this process, one arena for "
                   "all. flower: a Flower server and one process per client on 127.0.0.1 "
                   "(needs the 'federated' extra: pip install 'nntrainer_cli[federated]').")
@click.option("--listen", metavar="HOST:PORT",
              help="With --engine flower: serve at HOST:PORT (e.g. 0.0.0.0:8080) and wait "
                   "for --clients clients to connect (each started with --connect), "
                   "instead of starting them here.")
@click.option("--connect", metavar="HOST:PORT",
              help="Run as one client of the Flower server at HOST:PORT (what --engine "
                   "flower starts for each client; on another machine too): train this "
                   "client's records when the server asks, send back its weights. Its "
                   "--clients, --partition, --local-epochs and --seed must be the server's.")
@click.option("--client-id", type=click.IntRange(min=0), metavar="K",
              help="With --connect: which client this is (its share of the data, and its "
                   "seed + K).")
@click.option("--wait", type=click.FloatRange(min=0), default=120, show_default=True,
              help="Seconds a client waits for its server to listen, and a server for all "
                   "its clients to join.")
@batch_opt
@planner_opt
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed for the initial weights, the split, and client k's shuffling "
                   "(seed + k).")
@click.option("--init-weights", type=WEIGHTS,
              help="Start the global model from this weights file (.bin or .safetensors).")
@click.option("--save", type=FILE,
              help="Save the global weights here after every round (atomic); default: "
                   "[Model] save_path.")
@click.option("--report", "report_path", type=FILE,
              help="Write the results as JSON to this file, with every round's clients.")
@click.option("--run-dir", type=click.Path(file_okay=False),
              help="Keep the run in this new (or empty) folder, as train --run-dir does: one "
                   "metrics.csv row per round. Default when weights are saved: runs/STEM-N "
                   "beside them.")
@click.option("--no-run-dir", is_flag=True, help="Write no run folder.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@click.option("--no-tracemalloc", "no_trace", is_flag=True,
              help="Do not trace allocations (faster); the report gives RSS figures only.")
@budget_opt
@set_opt
@handle_errors
def federate(model, clients, rounds, local_epochs, partition, fraction, engine, listen, connect,
             client_id, wait, batch_size, planner, seed, init_weights, save, report_path,
             run_dir, no_run_dir, quiet, no_trace, budget, overrides):
    """Train MODEL by federated averaging (FedAvg): its training set is split among
    clients; each round every client trains its share from the global weights, and the
    global weights become the clients' mean, weighted by their record counts. Only
    weights leave a client. Reports each round's validation accuracy and memory."""
    from nntrainer_cli.optim.schedulers import make_schedule
    from nntrainer_cli.pipeline import prepare
    from nntrainer_cli.runtime import partition as parts
    from nntrainer_cli.runtime.federation import (FederatedTrainer, FedOptions,
                                                  open_federated)
    from nntrainer_cli.runtime.flower_engine import (FlowerClient, FlowerServer, flower,
                                                     parse_address)
    from nntrainer_cli.runtime.trainer import TrainOptions

    kind, _ = parts.parse(partition)
    if clients is None and kind != "dir":
        raise ConfigError("how many clients? give --clients N", key="--clients")
    if (connect is None) != (client_id is None):
        raise ConfigError("a client process needs both --connect HOST:PORT and --client-id K",
                          key="--connect" if connect is None else "--client-id")
    if connect:
        parse_address(connect, "--connect")
    if listen:
        parse_address(listen, "--listen")
    if connect and (engine != "local" or listen):
        raise ConfigError("--connect runs a client; --engine and --listen are the server's",
                          key="--connect")
    if connect and run_dir:
        raise ConfigError("--run-dir is the server's: a client keeps no run folder",
                          key="--run-dir")
    if listen and engine != "flower":
        raise ConfigError("--listen serves the flower engine: add --engine flower",
                          key="--listen")
    if client_id is not None and clients is not None and client_id >= clients:
        raise ConfigError(f"client {client_id} of {clients}: ids go from 0 to {clients - 1}",
                          key="--client-id")
    p = prepare(model, overrides=overrides, batch_size=batch_size, planner=planner,
                budget=budget)
    cfg = p.cfg
    warn(cfg.warnings, quiet)
    require_training(p, model)
    save = save or cfg.model_path("save_path")
    for path, what in ((save, "weights"), (report_path, "report")):
        if path:
            check_writable(path, what)
    flowering = engine == "flower" or connect is not None
    if flowering:
        flower()   # says what to install before any data is read
    fed = FedOptions(clients, rounds, local_epochs, partition, engine, fraction)
    data, client_sets = open_federated(cfg, p.graph, fed, seed, client_id)
    if client_id is None:
        fed = replace(fed, clients=len(client_sets))
    warn([note for ds in data.values() for note in ds.notes], quiet)
    folder = None if connect else run_folder(run_dir, no_run_dir, save)
    if folder:
        save = save or folder.file("weights.bin")
        folder.start(model, overrides, p.plan, click.get_current_context())
    # tracemalloc would count Flower's own buffers, and slows its imports tenfold: its
    # processes report their resident peaks instead
    opts = TrainOptions(epochs=rounds * local_epochs, seed=seed, quiet=quiet, save=save,
                        init_weights=init_weights, swap=p.swap,
                        trace_memory=not (no_trace or flowering),
                        on_epoch=folder.epoch if folder else None)
    args = (cfg, p.graph, p.plan, p.optimizer, make_schedule(cfg), data, opts, fed, client_sets)
    if connect:
        _client(FlowerClient(*args, [client_id], address=connect, wait=wait),
                [*data.values(), *client_sets], quiet)
        return
    if engine == "flower":
        same = [model, "--clients", str(fed.clients), "--rounds", str(rounds), "--local-epochs",
                str(local_epochs), "--partition", partition, "--seed", str(seed), "--planner",
                planner, "-q", *(["--batch-size", str(batch_size)] if batch_size else []),
                *(["--memory-budget", budget] if budget else []),
                *[a for o in overrides for a in ("--set", o)]]
        trainer = FlowerServer(*args, client_args=same, listen=listen, wait=wait)
    else:
        trainer = FederatedTrainer(*args)
    run_and_report(trainer, p.plan, [*data.values(), *client_sets], report_path, folder,
                   quiet, rounds, "rounds")


def _client(trainer, datasets, quiet: bool) -> None:
    """This process as one client: trains when its server asks, until the server ends."""
    k = trainer.clients[0].index
    try:
        report = trainer.run()
    except KeyboardInterrupt as stop:
        fail(f"client {k} stopped after {trainer.rounds_done} rounds",
             getattr(stop, "exit_code", 130))
    finally:
        for ds in datasets:
            ds.close()
    if not quiet:
        click.echo(f"client {k}: {trainer.rounds_done} rounds of {trainer.clients[0].ds.count} "
                   f"records; peak RSS {report.memory.rss_peak_bytes / 2**20:.1f} MiB")
