"""Federated averaging (FedAvg; McMahan et al. 2017, arXiv 1602.05629): the training set
is split among clients; each round every client trains its share for a few local epochs
from the global weights, and the global weights become the clients' weights averaged by
their record counts. Only weights and counts leave a client.

The local engine runs the clients one after another in this process, in the one planned
arena: besides the plan it holds the global weights and one accumulator (plan + 2×
weights, whatever the number of clients). The client step (`fit`) is the one a Flower
client process runs (flower_engine.py)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from nntrainer_cli.errors import ConfigError

from . import partition
from . import weights as weights_io
from .data import class_names, client_entries, open_dataset
from .dataset import Dataset
from .executor import Executor
from .results import ClientResult, EpochResult, FederationFigures, TestResult
from .data import open_datasets, record_shapes
from .trainer import Trainer


@dataclass(frozen=True)
class FedOptions:
    clients: int | None   # None with `dir`: one per entry of the folder
    rounds: int
    local_epochs: int = 1
    partition: str = "iid"   # as given: iid, dirichlet:ALPHA, dir
    engine: str = "local"
    fraction: float = 1.0    # of the clients sampled each round


def sampled(fed: FedOptions, seed: int, round_: int) -> list[int]:
    """The clients that train in this round: all, or a `fraction` of them (at least one)
    drawn from the seed and the round, so every engine draws the same ones."""
    if fed.fraction >= 1:
        return list(range(fed.clients))
    rng = np.random.default_rng([seed, 3, round_])
    take = max(1, round(fed.fraction * fed.clients))
    return sorted(int(k) for k in rng.choice(fed.clients, take, replace=False))


class Client:
    """One client's lasting state: its records, its own generators (shuffling, dropout)
    and its iteration count, which carry over from round to round as on a device. Client
    k draws from seed + k, so a lone client trains exactly as `train` does."""

    def __init__(self, index: int, ds: Dataset, seed: int):
        self.index, self.ds, self.iteration = index, ds, 0
        self.rng = np.random.default_rng(seed + index)
        self.layer_state = np.random.default_rng([seed + index, 1]).bit_generator.state


def accumulate(total: list[np.ndarray], weights, share: float, first: bool) -> None:
    """total += share · weights, tensor by tensor; `weights` are scaled in place (they are
    a client's copy, used up here), so no temporary is made."""
    for t, w in zip(total, weights):
        w *= share
        if first:
            np.copyto(t, w)
        else:
            t += w


def fedavg(updates: list[tuple[list[np.ndarray], int]]) -> list[np.ndarray]:
    """The mean of the clients' weights, weighted by their record counts (in the order
    given: the sum's rounding depends on it)."""
    count = sum(n for _, n in updates)
    total = [np.empty_like(w) for w in updates[0][0]]
    for k, (weights, n) in enumerate(updates):
        accumulate(total, [np.array(w, copy=True) for w in weights], n / count, k == 0)
    return total


def open_federated(cfg, graph, fed: FedOptions, seed: int,
                   only: int | None = None) -> tuple[dict[str, Dataset], list[Dataset]]:
    """The model's data sets and each client's records: shares of the training set, or
    with `dir` the entries of its folder, one per client; `only` that client's."""
    kind, alpha = partition.parse(fed.partition)
    least = graph.step_batch if graph.learns_by_gradient else 1
    if kind == "dir":
        clients = _client_folders(cfg, graph, fed, least, only)
        try:
            return open_datasets(cfg, graph, train=False, classes=clients[0].classes), clients
        except BaseException:
            for ds in clients:
                ds.close()
            raise
    data = open_datasets(cfg, graph)
    train = data["train"]
    try:
        rows = partition.split(train.count, train.class_of() if kind == "dirichlet" else None,
                               fed.clients, kind, alpha, np.random.default_rng([seed, 2]), least)
    except BaseException:
        for ds in data.values():
            ds.close()
        raise
    return data, [partition.Shard(train, r) for k, r in enumerate(rows)
                  if only in (None, k)]


def _client_folders(cfg, graph, fed: FedOptions, least: int,
                    only: int | None) -> list[Dataset]:
    """With `dir`: the training path's entries, one per client (image folders, or data
    files), numbered by the classes they name together."""
    loc = cfg.data["train"]
    folder = cfg.resolve(loc.section, loc.key)
    paths = client_entries(folder) if os.path.isdir(folder) else []
    if not paths:
        raise loc.error(f"--partition dir: {folder} is not a folder holding one entry per "
                        "client")
    if fed.clients not in (None, len(paths)):
        raise loc.error(f"--partition dir: {folder} holds {len(paths)} client entries, "
                        f"not {fed.clients}")
    if only is not None and only >= len(paths):
        raise ConfigError(f"{folder} holds {len(paths)} clients (0..{len(paths) - 1}), "
                          f"not client {only}", key="--client-id")
    inputs, labels = record_shapes(graph)
    classes = class_names(folder, loc.kind, loc.label_column, inputs, labels)
    if classes and len(classes) != labels[0]:
        raise loc.error(f"the clients of {folder} name {len(classes)} classes together; the "
                        f"model tells {labels[0]} apart")
    out = []
    try:
        for p in paths if only is None else paths[only:only + 1]:
            out.append(open_dataset(p, inputs, labels, loc.error, kind=loc.kind,
                                    label_column=loc.label_column, classes=classes))
            if out[-1].count < least:
                raise loc.error(f"client {p} has {out[-1].count} records, fewer than one "
                                f"batch of {least}")
    except BaseException:
        for ds in out:
            ds.close()
        raise
    return out


class FederatedTrainer(Trainer):
    """A Trainer whose epochs are rounds of FedAvg over `clients` (data sets). The
    training set in `data` serves the shards; validation and test sets judge the global
    weights after each round and at the end."""

    def __init__(self, cfg, graph, plan, optimizer, schedule, data, opts, fed: FedOptions,
                 clients: list[Dataset], ids: list[int] | None = None):
        super().__init__(cfg, graph, plan, optimizer, schedule, data, opts)
        self.fed = fed
        self.clients = [Client(k, ds, opts.seed)
                        for k, ds in zip(ids or range(len(clients)), clients)]

    @property
    def train_sets(self) -> list[Dataset]:
        return [c.ds for c in self.clients]

    def _feature_cache(self, ex: Executor):
        return None   # each client would need its own: not done yet

    def fit(self, ex: Executor, client: Client, weights: list[np.ndarray],
            round_: int) -> ClientResult:
        """The client step: the global weights into the arena, the optimizer afresh,
        `local_epochs` epochs over the client's records. The trained weights stay in the
        arena for the caller to take."""
        t0 = time.perf_counter()
        weights_io.write_whole(ex, weights)
        ex.reset_state(client.iteration)
        ex.rng.bit_generator.state = client.layer_state
        for _ in range(self.fed.local_epochs):
            loss, acc, client.iteration = self._epoch(
                ex, round_, client.rng, client.iteration, ds=client.ds,
                desc=f"round {round_}/{self.fed.rounds} client {client.index}")
        client.layer_state = ex.rng.bit_generator.state
        return ClientResult(client.index, client.ds.count, loss, acc, time.perf_counter() - t0)

    def _start(self, ex: Executor, report, init_rng) -> list[np.ndarray]:
        """The initial global weights (initialized, or loaded), and the report's frame."""
        self.report = report
        ex.initialize(init_rng)
        weights_io.load_arrays(ex, self.cfg.backbone_weights)
        if self.opts.init_weights:
            note = weights_io.load(ex, self.opts.init_weights, self.opts.weights_map)
            if note:
                self._log(note)
        glob = weights_io.read_whole(ex)   # whole, as Flower sends them, however tiled
        report.federation = FederationFigures(
            self.fed.engine, self.fed.partition, self.fed.local_epochs,
            [c.ds.count for c in self.clients], sum(w.nbytes for w in glob))
        return glob

    def _train(self, ex: Executor, report, rng, init_rng) -> None:
        """The local engine: every client in turn, in this process's arena."""
        glob = self._start(ex, report, init_rng)
        total = [np.empty_like(w) for w in glob]
        for r in range(1, self.fed.rounds + 1):
            t0 = time.perf_counter()
            results = []
            chosen = [self.clients[k] for k in sampled(self.fed, self.opts.seed, r)]
            count = sum(c.ds.count for c in chosen)
            for k, client in enumerate(chosen):
                results.append(self.fit(ex, client, glob, r))
                for i, row, name in ex.weight_parts():   # the arena's copy is used up here
                    with ex.persistent(name, write=False) as v:
                        accumulate([total[i][row:row + len(v)]], [v], client.ds.count / count,
                                   k == 0)
            glob, total = total, glob
            self.finish_round(ex, r, results, glob, t0, max(c.iteration for c in self.clients))
        self.finish(ex)

    def finish_round(self, ex: Executor, r: int, results: list[ClientResult],
                     glob: list[np.ndarray], t0: float, iteration: int) -> None:
        """The new global weights into the arena, judged on the validation set, saved
        (with the clients' largest iteration count), logged and reported; a requested
        stop ends the run here."""
        weights_io.write_whole(ex, glob)
        count = sum(c.samples for c in results)
        row = EpochResult(r, sum(c.loss * c.samples for c in results) / count,
                          sum(c.accuracy * c.samples for c in results) / count)
        if "valid" in self.data:
            row.val_loss, row.val_accuracy = self._evaluate(ex, self.data["valid"])
        row.seconds = time.perf_counter() - t0
        self.report.epochs.append(row)
        self.report.federation.rounds.append(results)
        self._tell(ex, row, iteration)
        if self.opts.save:
            weights_io.save(ex, self.opts.save, r * self.fed.local_epochs, iteration,
                            with_adam=False)
        self._log(_round_line(row, self.fed.rounds, results))
        self.stops.check()

    def finish(self, ex: Executor) -> None:
        if "test" in self.data:
            self.report.test = TestResult(*self._evaluate(ex, self.data["test"]))


def _round_line(row: EpochResult, rounds: int, clients: list[ClientResult]) -> str:
    """The round's global figures, its slowest client, and the largest client process."""
    text = f"round {row.epoch}/{rounds}  clients {len(clients)}  loss {row.train_loss:.4f}  " \
           f"acc {row.train_accuracy:.4f}"
    if row.val_loss is not None:
        text += f"  val_loss {row.val_loss:.4f}  val_acc {row.val_accuracy:.4f}"
    text += f"  ({row.seconds:.2f}s; slowest client {max(c.seconds for c in clients):.2f}s"
    if clients[0].peak_rss_bytes is not None:
        text += f", largest {max(c.peak_rss_bytes for c in clients) / 2**20:.1f} MiB"
    return text + ")"
