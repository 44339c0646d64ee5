"""The memory plan as a picture: time slots across, arena offsets down, one rectangle
per tensor (under a budget: per stay in the resident arena) coloured by kind.
Hovering a rectangle names the tensor (SVG <title>)."""

from __future__ import annotations

from html import escape

from nntrainer_cli.layers.base import Phase
from nntrainer_cli.plan import MemoryPlan

from nntrainer_cli.sizes import human

from .tables import tile_groups

COLOURS = {
    "input": "#8c564b", "label": "#c49c94", "weight": "#1f77b4", "optimizer_state": "#aec7e8",
    "gradient": "#d62728", "activation": "#2ca02c", "derivative": "#ff7f0e",
    "temporary": "#9467bd",
}
WIDTH, HEIGHT = 960, 560               # the drawing area
LEFT, TOP, RIGHT, BOTTOM = 90, 60, 190, 50


def _blocks(plan: MemoryPlan):
    """(kind, first, last, offset, bytes, tooltip, loaded, stored) per rectangle: the
    tensors, or under a budget each stay of a tensor in the resident arena."""
    if plan.swap:
        for r in plan.swap.residencies:
            how = ", ".join(w for w, on in (("read from swap", r.loaded),
                                            ("written to swap after", r.stored)) if on)
            yield (r.kind, r.first, r.last, r.offset, r.bytes,
                   f"{r.tensor}: {r.kind}, {human(r.bytes)}, offset {r.offset}, slots "
                   f"{r.first}-{r.last}{'; ' + how if how else ''}", r.loaded, r.stored)
        return
    aliases: dict[str, list[str]] = {}
    for s in plan.specs.values():
        if s.alias_of:
            aliases.setdefault(s.alias_of, []).append(s.name)
    for s in plan.specs.values():
        if s.alias_of or not s.bytes:
            continue
        shared = f" (shared with {', '.join(aliases[s.name])})" if s.name in aliases else ""
        yield (s.kind, s.first, s.last, s.offset, s.bytes,
               f"{s.name}{shared}: {s.kind}, {'x'.join(map(str, s.shape))}, {human(s.bytes)}, "
               f"offset {s.offset}, slots {s.first}-{s.last}", False, False)


def plan_svg(plan: MemoryPlan, model: str) -> str:
    slots = len(plan.slots)
    arena = max(plan.arena_bytes, 1)
    x = lambda t: LEFT + WIDTH * t / slots  # noqa: E731
    y = lambda b: TOP + HEIGHT * b / arena  # noqa: E731
    w, h = LEFT + WIDTH + RIGHT, TOP + HEIGHT + BOTTOM
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{LEFT}" y="22" font-size="15" font-weight="bold">'
           f'{escape(model)}: {human(plan.arena_bytes)} arena, planner {plan.planner}, '
           f'batch {plan.batch_size}'
           + (f', budget {human(plan.swap.budget)} (without swap {human(plan.peak_bytes)})'
              if plan.swap else "")
           + "".join(f", {escape(t)} row tiles" for t in tile_groups(plan.tiles))
           + '</text>',
           f'<text x="{LEFT}" y="42" fill="#555">time slot across (forward, then backward'
           + (', each micro-batch in turn' if plan.accumulate else '')
           + '); arena offset down. Hover a block for its tensor.'
           + (' Black edges: read from / written to the swap file.' if plan.swap else '')
           + '</text>']
    backward: list[list[int]] = []   # runs of slots past forward (micro-batches one
    for s in plan.slots:             # after another: one run each)
        if s.phase != Phase.FORWARD:
            if backward and backward[-1][1] == s.index:
                backward[-1][1] += 1
            else:
                backward.append([s.index, s.index + 1])
    out.append(f'<text x="{x(0) + 4:.1f}" y="{TOP - 5}" fill="#555">forward</text>')
    for a, b in backward:
        out.append(f'<rect x="{x(a):.1f}" y="{TOP}" width="{x(b) - x(a):.1f}" '
                   f'height="{HEIGHT}" fill="#f4f4f4"/>')
        out.append(f'<text x="{x(a) + 4:.1f}" y="{TOP - 5}" fill="#555">backward</text>')
    for kind, first, last, offset, size, tip, loaded, stored in _blocks(plan):
        x0, x1, y0 = x(first), x(last + 1), y(offset)
        h = max(y(offset + size) - y0, 0.5)
        out.append(f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" height="{h:.1f}" '
                   f'fill="{COLOURS[kind]}" stroke="white" stroke-width="0.3">'
                   f'<title>{escape(tip)}</title></rect>')
        for edge, on in ((x0, loaded), (x1, stored)):
            if on:
                out.append(f'<line x1="{edge:.1f}" y1="{y0:.1f}" x2="{edge:.1f}" '
                           f'y2="{y0 + h:.1f}" stroke="black" stroke-width="2"/>')
    out += _axes(plan, x, y, slots)
    out += _legend()
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _axes(plan: MemoryPlan, x, y, slots: int) -> list[str]:
    bottom = TOP + HEIGHT
    lines = [f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH}" height="{HEIGHT}" fill="none" '
             f'stroke="black"/>']
    step = max(1, slots // 12)
    for t in range(0, slots, step):
        lines.append(f'<text x="{x(t + 0.5):.1f}" y="{bottom + 16}" text-anchor="middle">{t}</text>')
    lines.append(f'<text x="{LEFT + WIDTH / 2}" y="{bottom + 36}" text-anchor="middle">'
                 f'execution slot</text>')
    for frac in (0, 0.25, 0.5, 0.75, 1):
        b = int(plan.arena_bytes * frac)
        lines.append(f'<text x="{LEFT - 6}" y="{y(b) + 4:.1f}" text-anchor="end">{human(b)}</text>')
    bound = plan.swap.lower_bound if plan.swap else plan.lower_bound_bytes
    lb = y(bound)
    lines.append(f'<line x1="{LEFT}" y1="{lb:.1f}" x2="{LEFT + WIDTH}" y2="{lb:.1f}" '
                 f'stroke="black" stroke-dasharray="6 4"/>')
    label_y = min(lb + 4, bottom - 12)  # keep clear of the peak label below
    lines.append(f'<text x="{LEFT + WIDTH + 6}" y="{label_y:.1f}">lower bound '
                 f'{human(bound)}</text>')
    lines.append(f'<text x="{LEFT + WIDTH + 6}" y="{bottom + 4}">peak '
                 f'{human(plan.arena_bytes)}</text>')
    return lines


def _legend() -> list[str]:
    out = []
    for i, (kind, colour) in enumerate(COLOURS.items()):
        top = TOP + 40 + 20 * i
        out.append(f'<rect x="{LEFT + WIDTH + 10}" y="{top}" width="12" height="12" '
                   f'fill="{colour}"/>')
        out.append(f'<text x="{LEFT + WIDTH + 28}" y="{top + 10}">{kind.replace("_", " ")}</text>')
    return out
