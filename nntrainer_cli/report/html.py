"""One self-contained HTML page for a run folder (`nntrainer report`): the curves, the
memory, the layers and the config, with no script, font or file from elsewhere (the
charts are inline SVG), readable on a laptop screen and in print."""

from __future__ import annotations

import math
from html import escape

from .run_folder import Run
from nntrainer_cli.sizes import human

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; color: #222; margin: 0 auto; max-width: 980px;
       padding: 1.5em; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.15em; margin-top: 1.8em;
border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .5em 0; } td, th { padding: .2em .8em;
border-bottom: 1px solid #eee; text-align: left; } td.n, th.n { text-align: right;
font-variant-numeric: tabular-nums; }
.charts { display: flex; flex-wrap: wrap; gap: 1em; } .note { color: #8a5a00; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: 13px; }
svg { max-width: 100%; height: auto; } .meta { color: #666; font-size: .9em; }
@media print { body { max-width: none; padding: 0; } h2 { break-after: avoid; }
               .chart, table, figure, .keep { break-inside: avoid; } }
"""
SERIES = {"train": "#1f77b4", "validation": "#ff7f0e", "resident (RSS)": "#2ca02c",
          "planned arena": "#d62728"}


def _fmt(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def line_chart(title: str, series: dict[str, list[tuple[float, float]]], unit=None,
               width: int = 460, height: int = 260, from_zero: bool = True) -> str:
    """A small SVG line chart: epochs across, one line per series, labelled axes; the
    value axis from zero, or around the values."""
    points = [p for s in series.values() for p in s]
    if not points:
        return ""
    left, right, top, bottom = 64, 12, 46, 40   # a title row, then a legend row
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)
    y0, y1 = (min(0.0, min(ys)), max(ys) or 1.0) if from_zero else \
        (min(ys) * 0.98, max(max(ys) * 1.02, min(ys) * 0.98 + 1))
    sx = lambda x: left + (x - x0) / (x1 - x0) * (width - left - right)  # noqa: E731
    sy = lambda y: height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)  # noqa
    label = unit or (lambda v: f"{v:.3g}")
    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
           f'<text x="{left}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>']
    for k in range(5):   # horizontal grid with values
        v = y0 + (y1 - y0) * k / 4
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{sy(v):.1f}" y2="{sy(v):.1f}" '
                   f'stroke="#eee"/><text x="{left - 6}" y="{sy(v) + 4:.1f}" font-size="11" '
                   f'text-anchor="end">{escape(label(v))}</text>')
    ticks = sorted({round(x0 + (x1 - x0) * k / 4) for k in range(5)})
    for t in ticks:
        out.append(f'<text x="{sx(t):.1f}" y="{height - bottom + 16}" font-size="11" '
                   f'text-anchor="middle">{t}</text>')
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 6}" font-size="11" '
               'text-anchor="middle">epoch</text>')
    for k, (name, pts) in enumerate(series.items()):
        colour = SERIES.get(name, "#555")
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline class="series" data-series="{escape(name)}" fill="none" '
                   f'stroke="{colour}" stroke-width="2" points="{path}"/>')
        if len(pts) == 1:
            out.append(f'<circle cx="{sx(pts[0][0]):.1f}" cy="{sy(pts[0][1]):.1f}" r="3" '
                       f'fill="{colour}"/>')
        out.append(f'<text x="{left + 130 * k}" y="34" font-size="11" fill="{colour}">'
                   f'— {escape(name)}</text>')
    return "".join(out) + "</svg>"


def _table(header: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    cls = lambda k: ' class="n"' if k in numeric else ""  # noqa: E731
    head = "".join(f"<th{cls(k)}>{escape(h)}</th>" for k, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td{cls(k)}>{escape(str(v))}</td>"
                                    for k, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary(run: Run) -> list[list]:
    rep, rows = run.report, []
    last = run.metrics[-1] if run.metrics else None
    if last:
        rows += [["epochs finished", int(last["epoch"])],
                 ["train loss / accuracy", f"{_fmt(last['train_loss'])} / "
                                           f"{_fmt(last['train_accuracy'])}"],
                 ["validation loss / accuracy", f"{_fmt(last['val_loss'])} / "
                                                f"{_fmt(last['val_accuracy'])}"]]
    if rep:
        if rep.get("test"):
            rows.append(["test loss / accuracy", f"{_fmt(rep['test']['loss'])} / "
                                                 f"{_fmt(rep['test']['accuracy'])}"])
        m = rep.get("memory") or {}
        sw = m.get("swap")
        if sw:
            rows += [["resident arena (under the budget)", human(sw["resident_peak_bytes"])],
                     ["memory budget", human(sw["budget_bytes"])],
                     ["plan without swap", human(m.get("planned_peak_bytes"))]]
        else:
            rows.append(["planned peak (arena)", human(m.get("planned_peak_bytes"))])
        rows += [["lower bound (without swap)", human(m.get("lower_bound_bytes"))],
                 ["naive total (no sharing)", human(m.get("naive_bytes"))],
                 ["measured peak (tracemalloc)", human(m.get("measured_peak_bytes"))],
                 ["process peak RSS", human(m.get("rss_peak_bytes"))],
                 ["RSS growth while training", human(m.get("rss_delta_bytes"))],
                 ["time", f"{rep.get('seconds', 0):.1f} s"],
                 ["median step", f"{1000 * rep['step_seconds_median']:.2f} ms"
                  if rep.get("step_seconds_median") else "-"],
                 ["weights", rep.get("weights") or "not saved"]]
        if rep.get("interrupted"):
            rows.append(["stopped", "interrupted (Ctrl-C or SIGTERM) after the epochs above"])
    return rows


def _layers(plan: dict, prof: dict | None) -> list[list]:
    """Per layer, from the plan: output shape, parameters, bytes of its own tensors;
    with a profile, its time per training step (all its phases)."""
    rows: dict[str, list] = {}
    for t in plan.get("tensors", []):
        layer = t["name"].split(":")[0]
        row = rows.setdefault(layer, [layer, "", 0, 0])
        if t["kind"] == "activation" and not row[1]:
            row[1] = ":".join(map(str, t["shape"][1:]))
        if t["kind"] == "weight":
            row[2] += math.prod(t["shape"])
        row[3] += t["bytes"]
    seconds: dict[str, float] = {}
    for slot in (prof or {}).get("slots", []):
        seconds[slot["layer"]] = seconds.get(slot["layer"], 0.0) + slot["seconds_per_step"]
    return [[name, shape, f"{params:,}", human(size)]
            + ([f"{1000 * seconds.get(name, 0.0):.3f}"] if prof else [])
            for name, shape, params, size in rows.values()]


def _swap(rep: dict | None) -> list[list]:
    sw = ((rep or {}).get("memory") or {}).get("swap")
    if not sw:
        return []
    return [["memory budget", human(sw["budget_bytes"])],
            ["resident arena", human(sw["resident_peak_bytes"])],
            ["moved out / in (run)", f"{human(sw['bytes_out'])} / {human(sw['bytes_in'])}"],
            ["per iteration, as planned", f"{human(sw['bytes_out_per_iteration'])} / "
                                          f"{human(sw['bytes_in_per_iteration'])}"],
            ["I/O on the compute thread", f"{sw['inline_io_seconds']:.2f} s copying, "
                                          f"{sw['io_wait_seconds']:.2f} s waiting"]]


def render(run: Run) -> str:
    info, m = run.info, run.metrics
    arena = human(m[0]["planned_bytes"]) if m and m[0].get("planned_bytes") else "?"
    curve = lambda key: [(r["epoch"], r[key]) for r in m if r.get(key) is not None]  # noqa
    charts = [line_chart("loss", {"train": curve("train_loss"),
                                  "validation": curve("val_loss")}),
              line_chart("accuracy", {"train": curve("train_accuracy"),
                                      "validation": curve("val_accuracy")}),
              line_chart(f"process RSS after each epoch (arena {arena})",
                         {"resident (RSS)": curve("rss_bytes")}, unit=human, from_zero=False)]
    parts = [f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
             f"<title>{escape(run.name)}: nntrainer run</title><style>{STYLE}</style></head>"
             f"<body><h1>{escape(run.name)}</h1>",
             f"<p class=\"meta\">{escape(info.get('model', ''))} · started "
             f"{escape(info.get('started', '?'))} · <code>"
             f"{escape(str(info.get('command', '')))}</code></p>"]
    if run.missing or run.damaged:
        parts.append("<p class=\"note\">" + "; ".join(
            f"{what} in the run folder: {escape(', '.join(names))}" for what, names in
            (("missing", run.missing), ("cut off or damaged, left out", run.damaged)) if names)
            + (" (the run may not have finished)" if "report.json" in run.missing else "")
            + ".</p>")
    parts += ["<h2>Results</h2>", _table(["", ""], _summary(run), {1}),
              "<h2 id=\"curves\">Training curves</h2>",
              f"<div class=\"charts\">{''.join(charts) or '<p>No finished epoch.</p>'}</div>"]
    if run.svg:
        svg = run.svg[run.svg.find("<svg"):]
        parts += ["<section class=\"keep\"><h2 id=\"memory-map\">Memory map</h2>",
                  "<p>Time slots of one iteration across, arena offsets down; one block per "
                  "tensor, coloured by kind (hover for its name).</p>",
                  f"<figure>{svg}</figure></section>"]
    swap = _swap(run.report)
    if swap:
        parts += ["<h2>Swap</h2>", _table(["", ""], swap, {1})]
        gone = [[t["name"], t["kind"], human(t["bytes"])] for t in (run.plan or {}).get(
            "tensors", []) if t.get("swapped") and t["bytes"]]
        if gone:
            parts += [f"<p>{len(gone)} tensors go to the swap file between their uses, so "
                      "they need no bytes of the arena while idle:</p>",
                      _table(["tensor", "kind", "bytes"], gone, {2})]
    prof = (run.report or {}).get("profile")
    if run.plan:
        parts += ["<h2>Layers</h2>",
                  "<p>Own tensors: the bytes of every tensor of the layer, each counted "
                  "whole (they add up to the naive total); the plan lets tensors whose "
                  "lifetimes do not overlap share bytes.</p>",
                  _table(["layer", "output (C:H:W)", "parameters", "own tensors"]
                         + (["ms/step (--profile)"] if prof else []),
                         _layers(run.plan, prof), {2, 3, 4})]
    mach = info.get("machine", {})
    parts += ["<h2>Machine</h2>", _table(["", ""], [
        ["cores", mach.get("cores")], ["memory", human(mach.get("memory_bytes"))],
        ["system", mach.get("system")], ["BLAS", (mach.get("blas") or {}).get("name", "?")
                                         if isinstance(mach.get("blas"), dict) else "?"],
        *[[k, v] for k, v in info.get("versions", {}).items()]])]
    if run.model:
        parts += [f"<h2>Model ({escape(run.model_name or 'model')})</h2>",
                  f"<pre>{escape(run.model)}</pre>"]
    return "".join(parts) + "</body></html>\n"
