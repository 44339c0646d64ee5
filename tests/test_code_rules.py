"""Rules of the code that keep it legible, checked so they stay true: imports flow one
way through the stages (config → layers → graph → optim → plan → runtime → report →
pipeline → cli) with no cycle between modules, no module outgrows its line budget,
and pyflakes finds no unused import or name."""

import ast
import io
import os

from pyflakes import api
from pyflakes.reporter import Reporter

from helpers import REPO

PACKAGE = os.path.join(REPO, "nntrainer_cli")
# Each stage may import only from stages before it (and from itself).
STAGES = ["errors", "sizes", "files", "config", "layers", "graph", "optim", "plan", "runtime",
          "report", "exchange", "budget_search", "pipeline", "cli", "__main__"]
LINE_BUDGET = 350


def modules() -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                out[name.removesuffix(".__init__")] = path
    return out


def imports(name: str, path: str) -> set[str]:
    """Modules of the package that `name` imports, anywhere in it (lazy imports count)."""
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
            out |= {t for t in [target, *names] if t in MODULES}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in MODULES}
    # a module's own parent packages are imported before it in any case: no edge
    return {t for t in out if t != name and not name.startswith(t + ".")}


MODULES = modules()
GRAPH = {name: imports(name, path) for name, path in MODULES.items()}


def stage(module: str) -> int:
    parts = module.split(".")
    return STAGES.index(parts[1] if len(parts) > 1 else "cli")


def test_imports_flow_one_way_through_the_stages():
    backward = [f"{a} -> {b}" for a, bs in GRAPH.items() for b in bs
                if b != "nntrainer_cli" and stage(b) > stage(a)]
    assert backward == []


def test_no_import_cycle_between_modules():
    state, cycles = {}, []

    def visit(m, path):
        state[m] = "open"
        for n in sorted(GRAPH[m]):
            if state.get(n) == "open":
                cycles.append(path[path.index(n):] + [n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_modules_keep_to_the_line_budget():
    long = {name: n for name, path in MODULES.items()
            if (n := sum(1 for _ in open(path, encoding="utf-8"))) > LINE_BUDGET}
    assert long == {}, f"over {LINE_BUDGET} lines: split by what the parts hold"


def stage_table() -> str:
    """The import graph by stage, as docs/ARCHITECTURE.md shows it (a test keeps it true;
    `python tests/test_code_rules.py` prints it)."""
    rows = ["| stage | modules | imports from |", "|---|---|---|"]
    for s in STAGES[:-1]:
        mods = sorted(m for m in GRAPH if m.split(".")[1:2] == [s] or (s == "cli" and
                                                                      m == "nntrainer_cli"))
        if not mods:
            continue
        uses = sorted({m.split(".")[1] for a in mods for m in GRAPH[a]
                       if "." in m and m.split(".")[1] != s}, key=STAGES.index)
        names = ", ".join(m.split(".", 1)[1] if "." in m else m for m in mods)
        rows.append(f"| {s} | {names} | {', '.join(uses) or '-'} |")
    return "\n".join(rows)


def test_architecture_doc_shows_the_current_import_graph():
    doc = open(os.path.join(REPO, "docs", "ARCHITECTURE.md"), encoding="utf-8").read()
    assert stage_table() in doc, "regenerate with: python tests/test_code_rules.py"


def test_pyflakes_finds_nothing():
    out = io.StringIO()
    count = api.checkRecursive([PACKAGE, os.path.join(REPO, "tests"),
                                os.path.join(REPO, "benchmarks")], Reporter(out, out))
    assert count == 0, out.getvalue()


if __name__ == "__main__":
    print(stage_table())
