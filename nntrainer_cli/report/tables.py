"""Plans and training results for people (aligned text) and machines (JSON dicts)."""

from __future__ import annotations

import itertools
import math

from nntrainer_cli.layers.base import Phase
from nntrainer_cli.plan import MemoryPlan
from nntrainer_cli.runtime.inference import InferenceReport
from nntrainer_cli.runtime.results import MemoryFigures, TrainReport
from nntrainer_cli.sizes import human


def table(header: list[str], rows: list[list], right: set[int] = frozenset()) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for r in cells:
        lines.append("  ".join(c.rjust(w) if i in right else c.ljust(w)
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def live_bytes(plan: MemoryPlan) -> list[int]:
    """Bytes alive at each slot (a running sum of starts and ends)."""
    change = [0] * (len(plan.slots) + 1)
    for s in plan.specs.values():
        if not s.alias_of:
            change[s.first] += s.bytes
            change[s.last + 1] -= s.bytes
    return list(itertools.accumulate(change))[:-1]


def plan_summary(plan: MemoryPlan) -> str:
    saved = 1 - plan.peak_bytes / plan.naive_bytes if plan.naive_bytes else 0
    chosen = plan.planner if plan.planner == plan.requested else \
        f"{plan.planner} (best of all)"
    labels = any(t.kind == "label" for t in plan.specs.values())
    mode = "" if plan.slots[-1].phase != Phase.FORWARD else \
        ", forward only (no gradients)" if labels else ", forward only (no loss)"
    # Under a budget the graph may be the frugal one, whose plan without swap is smaller
    # than the one `plan` shows without a budget: say which graph the figures are of.
    note = ""
    if plan.swap:
        conv = ", conv in smaller pieces at a time" if plan.in_pieces else ""
        tiles = "".join(f", {t} row tiles" for t in tile_groups(plan.tiles)) + \
            (" (each tile's derivative before its gradient)" if plan.derivative_first else "")
        parts = "" if plan.micro_batches == 1 else ", one micro-batch's tensors at a " \
            "time" if plan.accumulate else ", every micro-batch's tensors at once"
        note = "\n(these figures are without swap" + (
            f", for the frugal graph: relu masks, gradients applied in parts{conv}{tiles}"
            if plan.frugal else "") + parts + ")"
    return (f"planner {chosen}, batch {batch_text(plan)}{mode}\n"
            f"peak {human(plan.peak_bytes)} ({plan.peak_bytes} B)   "
            f"lower bound {human(plan.lower_bound_bytes)}   "
            f"naive {human(plan.naive_bytes)}   saved vs naive {saved:.0%}{note}")


def parts_order(accumulate: bool) -> str:
    """How a split batch's micro-batches run (plan/interleave.py)."""
    return "one after another" if accumulate else "slot by slot"


def batch_text(plan: MemoryPlan) -> str:
    """`32`, or under a budget that split it `32 in 4 micro-batches of 8, slot by slot`."""
    k = plan.micro_batches
    return str(plan.batch_size) if k == 1 else f"{plan.batch_size} in {k} micro-batches " \
        f"of {plan.batch_size // k}, {parts_order(plan.accumulate)}"


def tile_groups(tiles: dict[str, int]) -> list[str]:
    """`fc1 in 4`, or for many layers cut alike `47 layers (fc1 … fc47) in 4`."""
    by_count: dict[int, list[str]] = {}
    for name, k in tiles.items():
        by_count.setdefault(k, []).append(name)
    return [f"{', '.join(names)} in {k}" if len(names) <= 3 else
            f"{len(names)} layers ({names[0]} … {names[-1]}) in {k}"
            for k, names in by_count.items()]


def plan_text(plan: MemoryPlan, model: str) -> str:
    live = live_bytes(plan)
    order = table(["slot", "phase", "layer", "live"],
                  [[s.index, plan.slot_label(s), s.node, human(live[s.index])] for s in plan.slots],
                  right={0, 3})
    tensors = table(["name", "kind", "shape", "bytes", "offset", "first", "last", "alias_of"],
                    [[s.name, s.kind, "x".join(map(str, s.shape)), s.bytes, s.offset,
                      s.first, s.last, s.alias_of or ""] for s in plan.specs.values()],
                    right={3, 4, 5, 6})
    text = (f"model {model}\n{plan_summary(plan)}\n\nexecution order\n{order}\n\n"
            f"tensors\n{tensors}\n")
    return text + (swap_text(plan) if plan.swap else "")


def head_text(head) -> str:
    """`plan` under a budget, of a model whose frozen prefix's output train caches: the
    plan its epochs from the second run under (Planning.head_plan)."""
    if head is None:
        return ""
    tiles = ", ".join(tile_groups(head.plan.tiles))
    return (f"\nfrom epoch 2, with the frozen prefix's output cached, the layers after "
            f"[{head.graph.nodes[0].name}] run alone under their own plan: batch "
            f"{batch_text(head.plan)}, {'tiled: ' + tiles if tiles else 'untiled'}\n"
            f"{swap_summary(head.plan)}\n")


def head_json(head) -> dict:
    if head is None:
        return {}
    p = head.plan
    return {"head_plan": {"input": head.graph.nodes[0].name, "resident_peak_bytes": p.arena_bytes,
                          "tiles": p.tiles, "micro_batches": p.micro_batches,
                          "accumulate": p.accumulate, "bytes_in": p.swap.bytes_in,
                          "bytes_out": p.swap.bytes_out}}


def swap_summary(plan: MemoryPlan) -> str:
    sw = plan.swap
    return (f"swap: budget {human(sw.budget)}, resident arena {human(sw.peak)}, "
            f"lookahead {sw.lookahead}, {len(sw.swapped)} tensors swapped, per iteration "
            f"{human(sw.bytes_out)} out, {human(sw.bytes_in)} in")


def swap_text(plan: MemoryPlan) -> str:
    sw = plan.swap
    events = table(["slot", "op", "tensor", "bytes"],
                   [[e["slot"], "out after" if e["op"] == "out" else "in from", e["tensor"],
                     e["bytes"]] for e in sw.events()], right={0, 3})
    stays = table(["tensor", "offset", "bytes", "first", "last", "loaded", "stored"],
                  [[r.tensor, r.offset, r.bytes, r.first, r.last, "yes" if r.loaded else "",
                    "yes" if r.stored else ""] for r in sw.residencies], right={1, 2, 3, 4})
    return (f"\n{swap_summary(plan)}\n\nswap events (loads start as the slot starts; "
            f"stores start after it)\n{events}\n\nresidencies (stays in the arena)\n{stays}\n")


def plan_json(plan: MemoryPlan, model: str) -> dict:
    """DESIGN.md's fields; offsets are those of the plan without swap, and with a budget
    `swap.residencies` gives each stay's offset in the resident arena."""
    swapped = plan.swap.swapped if plan.swap else set()
    out = {
        "model": model,
        "planner": plan.planner,
        "batch_size": plan.batch_size,
        "peak_bytes": plan.peak_bytes,
        "lower_bound_bytes": plan.lower_bound_bytes,
        "naive_bytes": plan.naive_bytes,
        "resident_peak_bytes": plan.arena_bytes,
        "tiles": plan.tiles,
        "derivative_first": plan.derivative_first,   # in each tile's backward slots
        "micro_batches": plan.micro_batches,
        "accumulate": plan.accumulate,   # the micro-batches one after another
        "execution_order": [{"slot": s.index, "layer": s.node, "phase": s.phase, "part": s.part,
                             "micro_batch": s.micro, "gathers": s.gather}
                            for s in plan.slots],
        "tensors": [{"name": s.name, "kind": s.kind, "shape": list(s.shape), "dtype": s.dtype,
                     "bytes": s.bytes, "offset": s.offset, "first": s.first, "last": s.last,
                     "alias_of": s.alias_of, "swapped": (s.alias_of or s.name) in swapped}
                    for s in plan.specs.values()],
    }
    if plan.swap:
        sw = plan.swap
        out["swap"] = {
            "budget_bytes": sw.budget, "lookahead": sw.lookahead, "events": sw.events(),
            "bytes_out": sw.bytes_out, "bytes_in": sw.bytes_in,
            "resident_lower_bound_bytes": sw.lower_bound,
            "residencies": [{"tensor": r.tensor, "offset": r.offset, "bytes": r.bytes,
                             "first": r.first, "last": r.last, "loaded": r.loaded,
                             "stored": r.stored} for r in sw.residencies]}
    return out


def model_summary(plan: MemoryPlan, graph) -> str:
    """Per layer: type, output shape, parameters, and the bytes of the tensors it owns
    (weights with their gradients and optimizer state, outputs, temporaries)."""
    specs = plan.specs
    rows, total_params, trainable = [], 0, 0
    for node in graph.nodes:
        params = sum(math.prod(w.shape) for w in node.ctx.weights)
        train = sum(math.prod(w.shape) for w in node.ctx.weights if w.trainable)
        total_params, trainable = total_params + params, trainable + train
        prefix = node.name + ":"
        owned = sum(s.bytes for s in specs.values() if s.name.startswith(prefix))
        shapes = ", ".join(":".join(map(str, s[1:])) for s in node.ctx.output_shapes)
        rows.append([node.name, node.type, shapes, f"{params:,}", human(owned)])
    body = table(["layer", "type", "output (C:H:W)", "params", "tensors (unshared)"], rows,
                 right={3, 4})
    return (f"{body}\n\nparameters {total_params:,} ({trainable:,} trainable)   "
            f"batch {batch_text(plan)}\n{plan_summary(plan)}")


def train_summary(report: TrainReport) -> str:
    m, last = report.memory, report.epochs[-1]
    rows = [["train accuracy", f"{last.train_accuracy:.4f}"],
            ["train loss", f"{last.train_loss:.4f}"]]
    if last.val_accuracy is not None:
        rows += [["validation accuracy", f"{last.val_accuracy:.4f}"],
                 ["validation loss", f"{last.val_loss:.4f}"]]
    if report.test:
        rows += [["test accuracy", f"{report.test.accuracy:.4f}"],
                 ["test loss", f"{report.test.loss:.4f}"]]
    arena = m.swap.resident_peak_bytes if m.swap else m.planned_peak_bytes
    # a budget's plan may be of the frugal graph, smaller than the plan as written
    frugal = " (frugal graph, without swap)" if m.swap and m.swap.frugal else ""
    rows += [["planned peak" + frugal, human(m.planned_peak_bytes)],
             ["lower bound", human(m.lower_bound_bytes)],
             ["naive total", human(m.naive_bytes)]]
    fed = report.federation
    if fed:
        sizes = fed.shard_sizes
        rows += [["clients (records each)", f"{len(sizes)} ({min(sizes)}-{max(sizes)}), "
                                            f"{fed.partition}, engine {fed.engine}"],
                 ["rounds x local epochs", f"{len(fed.rounds)} x {fed.local_epochs}"],
                 ["global weights + their sum", human(2 * fed.weights_bytes)]]
        if fed.rounds and fed.rounds[-1] and fed.rounds[-1][0].peak_rss_bytes is not None:
            rows.append(["client process peak RSS (largest)",
                         human(max(c.peak_rss_bytes for c in fed.rounds[-1]))])
        arena += 2 * fed.weights_bytes
    if m.swap:
        sw = m.swap
        rows += [["memory budget", human(sw.budget_bytes)],
                 ["resident arena (swap)", human(sw.resident_peak_bytes)],
                 *([["tiled layers", ", ".join(tile_groups(sw.tiles))]]
                   if sw.tiles else []),
                 *([["micro-batches per step",
                     f"{sw.micro_batches}, {parts_order(sw.accumulate)}"]]
                   if sw.micro_batches > 1 else []),
                 ["swapped out / in", f"{human(sw.bytes_out)} / {human(sw.bytes_in)}"],
                 ["loads from the page cache / by the I/O thread",
                  f"{sw.loads_inline} / {sw.loads_background}"],
                 ["swap I/O on the compute thread", f"{sw.inline_io_seconds:.2f} s copying, "
                                                    f"{sw.io_wait_seconds:.2f} s waiting"]]
    if m.measured_peak_bytes is not None:
        ratio = m.measured_peak_bytes / arena if arena else 0
        rows.append(["measured peak", f"{human(m.measured_peak_bytes)} ({ratio:.2f}x arena"
                                      f"{' + weights' if fed else ''})"])
    if m.rss_delta_bytes is not None:
        rows.append(["training RSS growth", human(m.rss_delta_bytes)])
    rows += _loader_rows(m, report.classes)
    if m.checkpoint_write_peak_bytes is not None:
        rows.append(["checkpoint writing (apart)", human(m.checkpoint_write_peak_bytes)])
    if report.feature_cache:
        fc = report.feature_cache
        rows.append(["cached features", f"{human(fc['bytes'])} in {fc['where']}, after "
                                        f"[{fc['boundary']}] ({len(fc['layers'])} layers)"])
        if "head_plan" in fc:   # the epochs after the first ran the rest alone
            h = fc["head_plan"]
            cut = tile_groups(h["tiles"]) + [f"{h['micro_batches']} micro-batches"] * (
                h["micro_batches"] > 1)
            rows.append(["epochs 2+: the rest's own plan", ", ".join(
                [f"{human(h['resident_peak_bytes'])} resident", *cut])])
    rows += [["process peak RSS", human(m.rss_peak_bytes)],
             ["time", f"{report.seconds:.1f} s"],
             ["weights", f"saved to {report.weights}" if report.weights
              else "not saved (use --save FILE)"]]
    if report.best:
        b = report.best
        rows.append(["best validation epoch", f"{b.epoch}: acc {b.val_accuracy:.4f}, loss "
                                              f"{b.val_loss:.4f}, saved to {b.weights}"])
    return table(["result", "value"], rows, right={1})


def profile_table(prof: dict) -> str:
    """`train --profile`: the slots by time, GFLOP/s of the products, the rest."""
    rows = []
    for r in sorted(prof["slots"], key=lambda r: -r["seconds_per_step"]):
        gf = r["gflops"]
        rows.append([r["layer"], r["label"], f"{1000 * r['seconds_per_step']:.3f}",
                     f"{100 * r['share']:.1f}%", "-" if gf is None else f"{gf:.1f}",
                     "-" if gf is None else f"{100 * gf / prof['gemm_gflops']:.0f}%"])
    outside = prof["outside_kernels_share"]
    rows.append(["(outside kernels)", "", f"{1000 * outside * prof['step_seconds_mean']:.3f}",
                 f"{100 * outside:.1f}%", "", ""])
    return (table(["layer", "phase", "ms/step", "share", "GFLOP/s", "of GEMM"], rows,
                  right={2, 3, 4, 5})
            + f"\n{prof['steps']} steps, {1000 * prof['step_seconds_mean']:.3f} ms each on "
              f"average; this machine's BLAS: {prof['gemm_gflops']:.1f} GFLOP/s on a "
              "512x512x512 float32 product")


def inference_summary(report: InferenceReport) -> str:
    m = report.memory
    rows = [["records", str(report.records)]]
    if report.loss is not None:
        rows += [["accuracy", f"{report.accuracy:.4f}"], ["loss", f"{report.loss:.4f}"]]
    # under swap (the model's memory_swap) the arena holds the resident share only
    planned = m.swap.resident_peak_bytes if m.swap else m.planned_peak_bytes
    rows += [["planned peak (forward only)", human(m.planned_peak_bytes)],
             *([["resident under swap", f"{human(planned)} (swapped {human(m.swap.bytes_in)} "
                                        "in)"]] if m.swap else []),
             ["measured peak", f"{human(m.measured_peak_bytes)} "
                               f"({m.measured_peak_bytes / max(planned, 1):.2f}x)"],
             *_loader_rows(m, report.classes),
             ["time", f"{report.seconds:.1f} s"]]
    return table(["result", "value"], rows, right={1})


def _loader_rows(m: MemoryFigures, classes: list[str] | None) -> list[list[str]]:
    """The data loader's own memory (apart from training's), and the class names."""
    rows = [["data loader (held / reading)", f"{human(m.data_held_bytes)} / "
             f"{human(m.data_read_peak_bytes) if m.data_read_peak_bytes is not None else '-'}"]]
    if classes:
        shown = ", ".join(f"{k}={name}" for k, name in enumerate(classes[:10]))
        rows.append(["classes", shown + (", ..." if len(classes) > 10 else "")])
    return rows
