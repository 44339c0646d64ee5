"""Splitting a training set among federated clients: `iid` (a random, near-equal split)
or `dirichlet:ALPHA` (per class, the clients' shares drawn from Dirichlet(ALPHA): the
smaller ALPHA, the more each client holds a few classes only, as people's own data does;
Hsu et al. 2019). Each client's records stay in file order, so one client holds the
whole set in the order `train` reads it. The third kind, `dir` (one folder per client),
needs no split: its folders are the clients."""

from __future__ import annotations

import math
import re

import numpy as np

from nntrainer_cli.errors import ConfigError
from .dataset import Dataset

TRIES = 100   # Dirichlet draws before giving up on every client holding a batch


def parse(spec: str) -> tuple[str, float | None]:
    """`iid`, `dir` or `dirichlet:ALPHA` (ALPHA > 0) → (kind, alpha)."""
    text = spec.strip().lower()
    if text in ("iid", "dir"):
        return text, None
    m = re.fullmatch(r"dirichlet:(\d+(?:\.\d*)?(?:e[-+]?\d+)?)", text)
    if m and 0 < float(m.group(1)) < math.inf:
        return "dirichlet", float(m.group(1))
    raise ConfigError(f"expected iid, dir or dirichlet:ALPHA with ALPHA > 0 (e.g. "
                      f"dirichlet:0.5), got {spec!r}", key="--partition")


def split(count: int, classes: np.ndarray | None, clients: int, kind: str,
          alpha: float | None, rng: np.random.Generator, least: int) -> list[np.ndarray]:
    """Record indices (sorted) for each client, every client holding at least `least`."""
    if count < clients * least:
        raise ConfigError(f"{count} training records cannot give {clients} clients "
                          f"{least} each (one batch); use fewer clients or a smaller batch",
                          key="--clients")
    if kind == "iid":
        return [np.sort(part) for part in np.array_split(rng.permutation(count), clients)]
    if classes is None:
        raise ConfigError("dirichlet needs class labels (one-hot or class numbers); this "
                          "training set's labels are not classes: use iid", key="--partition")
    by_class = [np.flatnonzero(classes == c) for c in np.unique(classes)]
    for _ in range(TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(clients)]
        for members in by_class:
            shares = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for k, part in enumerate(np.split(rng.permutation(members), cuts)):
                parts[k].append(part)
        shards = [np.sort(np.concatenate(p)) for p in parts]
        if min(map(len, shards)) >= least:
            return shards
    raise ConfigError(f"in {TRIES} Dirichlet({alpha:g}) draws some client always held fewer "
                      f"than {least} records (one batch); use a larger ALPHA, fewer clients "
                      "or a smaller batch", key="--partition")


class Shard(Dataset):
    """Some records of a data set, served as a data set of their own: a client's share."""

    def __init__(self, base: Dataset, rows: np.ndarray):
        self.base, self.count, self.order = base, len(rows), rows.astype(np.int64)
        self.notes, self.classes = [], base.classes

    def read(self, start: int, batch: int, views: list[np.ndarray]) -> None:
        self.base.read_records(self.indices(start, batch), views)
