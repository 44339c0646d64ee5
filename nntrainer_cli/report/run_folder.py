"""A run folder (`train --run-dir DIR`): everything one training run leaves, in one
place, for `nntrainer report` and `nntrainer compare` to read back later.

    model.ini | model.yaml  the model as it ran (after --set), data paths rebased
    run.json                what ran it: command line, versions, machine, format
    plan.json, plan.svg     the memory plan and its map
    metrics.csv             one row per finished epoch, written as each one ends
    report.json             the run's report (as --report writes it), at the end or on a stop
    weights.bin, checkpoint.ckpt   unless --save / --checkpoint put them elsewhere

A folder that already holds files is refused, so two runs never share one. A run that
saves its weights and names no folder gets one beside them: runs/STEM-N."""

from __future__ import annotations

import csv
import datetime
import io
import itertools
import json
import os
import platform
import shlex
import sys

from nntrainer_cli import __version__
from nntrainer_cli.config.reader import read_model_file
from nntrainer_cli.config.model import apply_overrides
from nntrainer_cli.config.writers import leading_comments, rebase, to_ini, to_yaml
from nntrainer_cli.errors import DataError
from nntrainer_cli.files import write_text
from nntrainer_cli.plan import MemoryPlan
from nntrainer_cli.runtime.results import EpochResult, EpochState

from .svg import plan_svg
from .tables import plan_json

FORMAT = 1
METRICS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
           "learning_rate", "seconds", "rss_bytes", "planned_bytes", "swap_bytes_in",
           "swap_bytes_out"]


def command_line(ctx) -> str:
    """The command as typed, rebuilt from what click parsed (flags at their defaults
    left out), so it can be run again."""
    words = ["nntrainer", ctx.command.name]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value in (None, False, ()) or value == param.default:
            continue
        if param.param_type_name == "argument":
            words.append(str(value))
        elif getattr(param, "is_flag", False):
            words.append(param.opts[0])
        else:
            for v in value if getattr(param, "multiple", False) else [value]:
                words += [param.opts[0], shlex.quote(str(v))]
    return " ".join(words)


def _machine() -> dict:
    """Cores, memory, and the BLAS numpy uses: what a figure of this run depends on."""
    import numpy as np
    blas = None
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
    except (TypeError, KeyError):   # numpy < 1.25 prints only
        pass
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        pages = None
    return {"cores": os.cpu_count(), "memory_bytes": pages, "machine": platform.machine(),
            "system": platform.platform(), "blas": blas}


class RunFolder:
    """Writes a run folder as the run goes."""

    def __init__(self, path: str):
        if os.path.isfile(path):
            raise DataError(f"--run-dir {path} is a file, not a folder")
        if os.path.isdir(path) and os.listdir(path):
            what = "already holds a run" if os.path.isfile(os.path.join(path, "run.json")) \
                else "is not empty"
            raise DataError(f"--run-dir {path} {what}; give a new or empty folder")
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise DataError(f"cannot create --run-dir {path}: {e.strerror}") from None
        self.path = path
        self.metrics = None

    @classmethod
    def beside(cls, weights: str) -> "RunFolder":
        """The default folder of a run that saves its weights: runs/STEM-N in the weights'
        folder, N the first number free. Each is made exclusively (mkdir fails if it
        exists), so two runs started together still get two folders."""
        parent = os.path.join(os.path.dirname(weights), "runs")
        stem = os.path.splitext(os.path.basename(weights))[0]
        try:
            os.makedirs(parent, exist_ok=True)
            for n in itertools.count(1):
                try:
                    os.mkdir(os.path.join(parent, f"{stem}-{n}"))
                    return cls(os.path.join(parent, f"{stem}-{n}"))
                except FileExistsError:
                    continue
        except OSError as e:
            raise DataError(f"cannot create a run folder in {parent}: {e.strerror} (name one "
                            "with --run-dir, or pass --no-run-dir)") from None

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def start(self, model: str, overrides, plan: MemoryPlan, ctx) -> None:
        """The model as it runs (flags that change it folded in), what runs it (the
        command line, from click's context `ctx`), and its plan."""
        import numpy as np
        fmt = "yaml" if model.lower().endswith((".yaml", ".yml")) else "ini"
        target = self.file(f"model.{fmt}")
        sections = read_model_file(model)
        folded = [f"model.{key}={ctx.params[key]}" for key in ("epochs", "batch_size")
                  if ctx.params.get(key)]
        apply_overrides(sections, [*overrides, *folded])
        rebase(sections, model, target)
        write_text(target, (to_yaml if fmt == "yaml" else to_ini)(sections,
                                                                 leading_comments(model)))
        info = {"format": FORMAT, "command": command_line(ctx),
                "model": os.path.abspath(model),
                "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"),
                "versions": {"nntrainer_cli": __version__, "python": sys.version.split()[0],
                             "numpy": np.__version__},
                "machine": _machine()}
        write_text(self.file("run.json"), json.dumps(info, indent=2))
        write_text(self.file("plan.json"), json.dumps(plan_json(plan, model), indent=1))
        write_text(self.file("plan.svg"), plan_svg(plan, model))
        self.planned = plan.swap.peak if plan.swap else plan.peak_bytes
        try:   # unbuffered: a row is on disk once written, and no 128 KiB buffer is made
            self.metrics = open(self.file("metrics.csv"), "wb", buffering=0)
        except OSError as e:
            raise DataError(f"cannot write {self.file('metrics.csv')}: {e.strerror}") from None
        self._row(METRICS)

    def _row(self, values: list) -> None:
        line = ",".join("" if v is None else str(v) for v in values) + "\n"
        try:
            self.metrics.write(line.encode())
        except OSError as e:
            raise DataError(f"cannot write {self.file('metrics.csv')}: {e.strerror}") from None

    def epoch(self, row: EpochResult, state: EpochState) -> None:
        """One row, written at once: an interrupted run keeps its finished epochs."""
        self._row([row.epoch, row.train_loss, row.train_accuracy, row.val_loss,
                   row.val_accuracy, state.learning_rate, row.seconds, state.rss_bytes,
                   self.planned, state.swap_bytes_in, state.swap_bytes_out])

    def close(self) -> None:
        if self.metrics:
            self.metrics.close()


class Run:
    """A run folder read back: what is there, and what is missing (an interrupted run
    has no report, a run of another version may lack a file)."""

    def __init__(self, path: str):
        if not os.path.exists(path):
            raise DataError(f"{path} does not exist")
        if not os.path.isdir(path):
            raise DataError(f"{path} is not a run folder (train --run-dir DIR makes one)")
        self.path, self.missing, self.damaged = path, [], []
        self.info = self._json("run.json", required=True)
        if self.info is None:
            raise DataError(f"{path} has no run.json: not a run folder (train --run-dir DIR "
                            "makes one)")
        if not isinstance(self.info, dict) or self.info.get("format", 0) > FORMAT:
            raise DataError(f"{path}/run.json is of a newer format ("
                            f"{self.info.get('format') if isinstance(self.info, dict) else '?'})"
                            f" than this version reads ({FORMAT}); update nntrainer_cli")
        self.report = self._json("report.json")
        self.plan = self._json("plan.json")
        self.svg = self._text("plan.svg")
        if self.svg is not None and not self.svg.rstrip().endswith("</svg>"):
            self.damaged.append("plan.svg")
            self.svg = None
        self.model_name = next((n for n in ("model.ini", "model.yaml")
                                if os.path.isfile(os.path.join(path, n))), None)
        self.model = self._text(self.model_name or "model.ini")
        self.metrics = self._metrics()
        if not self.metrics and self.report:   # no metrics.csv: the report has the epochs
            self.metrics = [{**e, "epoch": float(e["epoch"])}
                            for e in self.report.get("epochs", [])]

    @property
    def name(self) -> str:
        return os.path.basename(os.path.normpath(self.path))

    def _text(self, name: str) -> str | None:
        try:
            with open(os.path.join(self.path, name), encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            self.missing.append(name)
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read {os.path.join(self.path, name)}: {e}") from None
        return None

    def _json(self, name: str, required: bool = False):
        """A JSON file; one cut off is noted as damaged and left out, except run.json,
        without which the folder is not a run."""
        text = self._text(name)
        if text is None:
            return None
        try:
            return json.loads(text)
        except ValueError as e:
            if required:
                raise DataError(f"{os.path.join(self.path, name)} is not valid JSON ({e})") \
                    from None
            self.damaged.append(name)
            return None

    def _metrics(self) -> list[dict]:
        """The epochs' rows; a row cut off by an interrupted run is left out."""
        text = self._text("metrics.csv")
        rows = []
        for row in csv.DictReader(io.StringIO(text or "")):
            if None in row.values() or None in row:   # too few or too many fields
                continue
            try:
                rows.append({k: float(v) if v not in ("", None) else None
                             for k, v in row.items() if k in METRICS})
            except ValueError:
                continue
        return [r for r in rows if r.get("epoch") is not None
                and r.get("train_loss") is not None]
