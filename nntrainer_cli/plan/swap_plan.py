"""What a swap plan holds, as the runtime and the reports read it: each tensor's stays
in the arena (`Residency`), their places in the swap file, and per slot the transfers
to issue and the one to wait for (`SlotSwaps`), stays that lie back to back in the file
grouped into one system call (`Transfer`). The runtime only follows these steps;
`tests/test_swap.py` replays them with the I/O done as early and as late as allowed.
`plan/swap.py` finds the stays."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from .specs import ALIGN

DIRECT_IO_BLOCK = 4096  # O_DIRECT moves whole blocks between block-aligned memory and disk
DEFAULT_LOOKAHEAD = 2
MAX_STAYS_PER_TRANSFER = 64  # well under the system's buffers per preadv (IOV_MAX)


@dataclass(frozen=True)
class SwapOptions:
    """Swapping under a memory budget, as asked for by the flags or NNTrainer's
    memory_swap keys: what the planner needs (budget, lookahead, block size) and where
    the runtime puts the swap file."""
    budget: int                 # bytes the resident arena may hold; 0: as few as can be
    lookahead: int = DEFAULT_LOOKAHEAD  # slots between a load's start and the use
    direct: bool = False        # an O_DIRECT swap file: every stay in whole blocks
    directory: str = ""

    @property
    def unit(self) -> int:
        """What every stay is rounded up to."""
        return DIRECT_IO_BLOCK if self.direct else ALIGN


@dataclass(slots=True)   # thousands per plan: a __dict__ each doubled them
class Residency:
    tensor: str
    kind: str
    bytes: int
    first: int          # first slot it occupies (a load is issued as this slot starts)
    last: int           # its last use; a store, if any, is issued right after it
    use_first: int      # its first use: a load must have arrived by then
    loaded: bool        # starts by reading the swap file
    stored: bool        # ends by writing the swap file
    offset: int = 0


@dataclass(frozen=True, slots=True)
class Transfer:
    """Stays that lie back to back in the swap file and move at the same time: one
    system call. Numbered per iteration in the order they are issued."""
    number: int
    op: str                              # "in" (load) or "out" (store)
    file_offset: int
    stays: tuple[tuple[int, int], ...]   # (arena offset, bytes) of each, in file order


@dataclass(frozen=True, slots=True)
class SlotSwaps:
    loads: tuple[Transfer, ...]   # issued as the slot starts
    wait: int                     # the slot runs once transfers 1..wait are done (0: none)
    stores: tuple[Transfer, ...]  # issued after it


@dataclass(frozen=True)
class SwapRefusal:
    """A budget under the floor: the smallest budget that works, and what sets it."""
    budget: int
    floor: int
    lookahead: int
    busiest: str
    held: tuple[str, ...] = ()   # the tensors resident at the busiest slot, largest first
    candidate: tuple = ()        # the budget search's (level, tiles, parts) it refuses

    def message(self, plan_bytes: int) -> str:
        """One line for the user; the floor also as a share of `plan_bytes`, the plan
        without swap that a budget like 60% is a share of."""
        return (f"a memory budget of {self.budget:,} bytes cannot be met: with every idle "
                f"tensor swapped out (lookahead {self.lookahead}) the smallest budget that "
                f"works is {self.floor:,} bytes ({-(-self.floor * 100 // plan_bytes)}% of "
                f"the plan without swap, {plan_bytes:,} bytes); {self.busiest}")


@dataclass
class SwapPlan:
    budget: int
    lookahead: int
    residencies: list[Residency]
    peak: int                            # the resident arena
    lower_bound: int                     # of the residencies: no placement does better
    file_offsets: dict[str, int] = field(default_factory=dict)
    file_bytes: int = 0
    steps: list[SlotSwaps] = field(default_factory=list)   # per slot

    @cached_property
    def _by_tensor(self) -> dict[str, list[Residency]]:
        by: dict[str, list[Residency]] = {}
        for r in self.residencies:
            by.setdefault(r.tensor, []).append(r)
        return by

    def of(self, tensor: str) -> list[Residency]:
        """A tensor's stays in order (looked up for every tensor when the run starts)."""
        return self._by_tensor.get(tensor, [])

    @property
    def swapped(self) -> set[str]:
        return set(self.file_offsets)

    def events(self) -> list[dict]:
        out = []
        for r in self.residencies:
            if r.loaded:
                out.append({"slot": r.first, "op": "in", "tensor": r.tensor, "bytes": r.bytes})
            if r.stored:
                out.append({"slot": r.last, "op": "out", "tensor": r.tensor, "bytes": r.bytes})
        return sorted(out, key=lambda e: (e["slot"], e["op"] == "in", e["tensor"]))

    @property
    def bytes_in(self) -> int:
        return sum(r.bytes for r in self.residencies if r.loaded)

    @property
    def bytes_out(self) -> int:
        return sum(r.bytes for r in self.residencies if r.stored)


def steps(res: list[Residency], file_at: dict[str, int], end: int) -> list[SlotSwaps]:
    """Per slot: the loads issued as it starts, the transfer it waits for, the stores
    issued after it. A slot waits for the loads of the stays it first uses, and, for a
    stay it writes first (not loaded), for the stores of earlier stays in its bytes."""
    number: dict[tuple[str, int], int] = {}
    count = 0

    def transfers(op: str, stays: list[Residency]) -> tuple[Transfer, ...]:
        nonlocal count
        runs: list[list] = []   # [file offset, stays, bytes]
        for r in sorted(stays, key=lambda r: file_at[r.tensor]):
            last = runs[-1] if runs else None
            if last and last[0] + last[2] == file_at[r.tensor] \
                    and len(last[1]) < MAX_STAYS_PER_TRANSFER:
                last[1].append(r)
                last[2] += r.bytes
            else:
                runs.append([file_at[r.tensor], [r], r.bytes])
                count += 1
            number[(op, id(r))] = count
        first = count - len(runs) + 1
        return tuple(Transfer(first + k, op, at, tuple((r.offset, r.bytes) for r in group))
                     for k, (at, group, _) in enumerate(runs))

    moves = []
    for t in range(end + 1):
        loads = transfers("in", [r for r in res if r.loaded and r.first == t])
        moves.append((loads, transfers("out", [r for r in res if r.stored and r.last == t])))
    out = []
    for t, (loads, stores) in enumerate(moves):
        need = [number[("in", id(r))] for r in res if r.loaded and r.use_first == t]
        for r in res:
            if not r.loaded and r.first == t:
                need += [number[("out", id(p))] for p in res
                         if p.stored and p.last < t and p.offset < r.offset + r.bytes
                         and r.offset < p.offset + p.bytes]
        out.append(SlotSwaps(loads, max(need, default=0), stores))
    return out


def file_layout(res: list[Residency]) -> tuple[dict[str, int], int]:
    """Each swapped tensor's place in the swap file, in the order tensors are first
    moved, so that those moved at the same slot (a part of a weight's optimizer state,
    say) lie back to back and the runtime moves each such run with one system call."""
    def first_move(r: Residency) -> tuple[int, int]:
        return (r.last, 0) if r.stored else (r.first, 1)

    moved = sorted((r for r in res if r.loaded or r.stored), key=first_move)
    offsets, at = {}, 0
    for r in moved:
        if r.tensor not in offsets:
            offsets[r.tensor] = at
            at += r.bytes   # stays are already whole units (4 KiB blocks for direct I/O)
    return offsets, at
