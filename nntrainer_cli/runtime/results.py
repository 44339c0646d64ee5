"""What a training run gives: typed figures, written to JSON (`--report`) and shown as
the summary table. Every field is documented once, here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    train_accuracy: float          # a fraction
    val_loss: float | None = None  # None without a validation set
    val_accuracy: float | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class EpochState:
    """Where a run stands at an epoch's end, for the run folder's metrics."""
    learning_rate: float           # of the epoch's last iteration
    rss_bytes: int | None          # the process's resident memory now
    swap_bytes_in: int             # moved so far (0 without swap)
    swap_bytes_out: int


@dataclass(frozen=True)
class BestEpoch:
    """The epoch of the best validation accuracy (on a tie, the lower validation loss),
    as NNTrainer's save_best_path picks it, and where its weights went."""
    epoch: int
    val_accuracy: float
    val_loss: float
    weights: str


def best_epoch(epochs: list[EpochResult]) -> EpochResult | None:
    """The first epoch no later one beat on (accuracy, then lower loss)."""
    best = None
    for e in epochs:
        if e.val_accuracy is not None and (best is None or (e.val_accuracy, -e.val_loss)
                                           > (best.val_accuracy, -best.val_loss)):
            best = e
    return best


@dataclass(frozen=True)
class TestResult:
    loss: float
    accuracy: float


@dataclass(frozen=True)
class SwapFigures:
    budget_bytes: int
    resident_peak_bytes: int       # the resident arena the budget allowed
    lookahead: int
    frugal: int                    # 0, or the frugal level the budget needed
    bytes_in: int                  # moved over the whole run
    bytes_out: int
    io_wait_seconds: float         # the compute thread waiting for the I/O thread
    inline_io_seconds: float       # the compute thread copying page-cache data itself
    loads_inline: int
    loads_background: int
    bytes_in_per_iteration: int    # as planned
    bytes_out_per_iteration: int
    tiles: dict[str, int] = field(default_factory=dict)   # layers cut into row tiles
    micro_batches: int = 1         # parts each step's batch ran in: slot by slot, or
    accumulate: bool = False       # one after another (plan/interleave.py)
    direct: bool = False           # the swap file bypassed the page cache (O_DIRECT)


def swap_figures(plan, io, arena: int) -> SwapFigures | None:
    """What a run's swap planned and did (None without swap); `arena`: the bytes
    allocated (a second plan's, where larger: runtime/head_run.py)."""
    if plan.swap is None:
        return None
    return SwapFigures(plan.swap.budget, arena, plan.swap.lookahead, plan.frugal,
                       io.moved_in, io.moved_out, io.waited, io.inline_seconds,
                       io.loads_inline, io.loads_background, plan.swap.bytes_in,
                       plan.swap.bytes_out, plan.tiles, plan.micro_batches,
                       plan.accumulate, io.file.direct)


@dataclass(frozen=True)
class MemoryFigures:
    planned_peak_bytes: int
    lower_bound_bytes: int
    naive_bytes: int               # every tensor in its own bytes
    measured_peak_bytes: int | None  # tracemalloc's peak; None with --no-tracemalloc
    rss_peak_bytes: int            # the process's peak resident set
    rss_delta_bytes: int | None    # its growth during training, when measurable
    rss_peak_reset: bool           # whether the kernel's peak could be reset first
    swap: SwapFigures | None = None
    data_held_bytes: int = 0       # what the data loaders keep (arrays, file lists)
    data_read_peak_bytes: int | None = None  # the most one batch's reading allocated
    checkpoint_write_peak_bytes: int | None = None  # the most one checkpoint's writing did


@dataclass(frozen=True)
class ClientResult:
    client: int
    samples: int                   # its records: its weight in the average
    loss: float                    # over its last local epoch
    accuracy: float
    seconds: float
    peak_rss_bytes: int | None = None   # its own process's (engine flower)


@dataclass
class FederationFigures:
    engine: str                    # local or flower
    partition: str                 # iid, dirichlet:ALPHA or dir
    local_epochs: int
    shard_sizes: list[int]         # records per client
    weights_bytes: int             # one copy of the weights; averaging holds two more
    rounds: list[list[ClientResult]] = field(default_factory=list)
    server_peak_rss_bytes: int | None = None   # the Flower server process's (engine flower)


@dataclass
class TrainReport:
    model: str
    batch_size: int
    planner: str
    weights: str | None            # where they were saved; None: not saved
    epochs: list[EpochResult] = field(default_factory=list)
    interrupted: bool = False      # stopped by Ctrl-C or SIGTERM: these are finished epochs
    test: TestResult | None = None
    memory: MemoryFigures | None = None
    step_seconds_median: float | None = None  # after the first warm-up steps
    seconds: float = 0.0
    classes: list[str] | None = None   # class names by index, when the data names them
    feature_cache: dict | None = None  # the frozen prefix's cached output: layers, bytes, where
    checkpoint: str | None = None      # the last checkpoint written, if any
    best: BestEpoch | None = None      # save_best_path: the epoch whose weights it holds
    federation: FederationFigures | None = None   # `federate`: epochs are its rounds
    profile: dict | None = None        # train --profile: time per slot (runtime/profile.py)

    def to_json(self) -> dict:
        """Plain values for json.dump; every key is always there (null when it does not
        apply: no test set, no swap, a run stopped before the end)."""
        return asdict(self)
