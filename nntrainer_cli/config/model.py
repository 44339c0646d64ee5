"""The non-layer parts of a model file: [Model], [Optimizer], [LearningRateScheduler] and
the data sections, validated; layer sections are passed on (with backbones spliced in)
for the graph builder, which knows the layer types."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from typing import Any

from nntrainer_cli.errors import ConfigError

from . import props as P
from .reader import MODEL_EXTENSIONS, read_model_file
from .sections import Entry, Section

SPECIAL = ("model", "optimizer", "learningratescheduler", "dataset", "train_set", "valid_set",
           "test_set")
SPLITS = ("train", "valid", "test")

MODEL_SCHEMA: P.Schema = {
    "type": P.Prop(P.text),
    "epochs": P.Prop(P.positive_int, 1),
    "batch_size": P.Prop(P.positive_int, 1),
    "loss": P.Prop(P.enum("cross", "mse", "cross_softmax", "cross_sigmoid")),
    "save_path": P.Prop(P.text),
    "save_best_path": P.Prop(P.text),
    "continue_train": P.Prop(P.boolean, False),
    "memory_optimization": P.Prop(P.boolean, True),
    "memory_swap": P.Prop(P.boolean, False),
    "memory_swap_path": P.Prop(P.text),
    "memory_swap_lookahead": P.Prop(P.nonneg_int),
    "fsu": P.Prop(P.boolean, False),
    "fsu_path": P.Prop(P.text),
    "fsu_lookahead": P.Prop(P.nonneg_int),
    "model_tensor_type": P.Prop(P.enum("fp32-fp32"), "fp32-fp32"),
    "loss_scale": P.Prop(P.floating),
    "clip_grad_by_norm": P.Prop(P.positive_float),
    "input_layers": P.Prop(P.connections),
    "label_layers": P.Prop(P.connections),
    # The deprecated optimizer-in-[Model] form; ignored unless `optimizer` is given.
    "optimizer": P.Prop(P.enum("sgd", "adam", "adamw")),
    "learning_rate": P.Prop(P.positive_float),
    "decay_rate": P.Prop(P.decay_rate),
    "decay_steps": P.Prop(P.positive_int),
    "beta1": P.Prop(P.unit_interval),
    "beta2": P.Prop(P.unit_interval),
    "epsilon": P.Prop(P.positive_float),
    "tensor_type": P.Prop(P.text),
    "tensor_format": P.Prop(P.text),
}

_LR = {"learning_rate": P.Prop(P.positive_float), "decay_rate": P.Prop(P.decay_rate),
       "decay_steps": P.Prop(P.positive_int)}
OPTIMIZER_SCHEMAS: dict[str, P.Schema] = {
    "sgd": {**_LR, "momentum": P.Prop(P.unit_interval, 0.0)},
    "adam": {**_LR, "beta1": P.Prop(P.unit_interval, 0.9), "beta2": P.Prop(P.unit_interval, 0.999),
             "epsilon": P.Prop(P.positive_float, 1e-7), "torch_ref": P.Prop(P.boolean, False)},
    "adamw": {**_LR, "beta1": P.Prop(P.unit_interval, 0.9),
              "beta2": P.Prop(P.unit_interval, 0.999), "epsilon": P.Prop(P.positive_float, 1e-8),
              "torch_ref": P.Prop(P.boolean, False), "weight_decay": P.Prop(P.nonneg_float, 0.0)},
}
DEFAULT_LR = {"sgd": 1e-4, "adam": 1e-3, "adamw": 1e-3}

_MINMAX = {"max_learning_rate": P.Prop(P.positive_float, required=True),
           "min_learning_rate": P.Prop(P.nonneg_float, required=True),
           "decay_steps": P.Prop(P.positive_int, required=True)}
SCHEDULER_SCHEMAS: dict[str, P.Schema] = {
    "constant": {"learning_rate": P.Prop(P.positive_float, required=True)},
    "exponential": {"learning_rate": P.Prop(P.positive_float, required=True),
                    "decay_rate": P.Prop(P.decay_rate, required=True),
                    "decay_steps": P.Prop(P.positive_int, required=True)},
    "step": {"learning_rate": P.Prop(P.float_list, required=True),
             "iteration": P.Prop(P.int_list, required=True)},
    "cosine": _MINMAX,
    "linear": _MINMAX,
}


@dataclass
class Located:
    """A value together with where it was written, so later stages can point at it."""
    value: Any
    section: Section
    key: str

    def error(self, message: str) -> ConfigError:
        return self.section.error(message, self.key)


@dataclass
class DataSource(Located):
    """A data section's path (the Located value) and how to read it."""
    kind: str = "auto"                # file, dir or csv; auto: by the path (legacy [DataSet])
    label_column: str | None = None   # csv: the label column's name or number


@dataclass
class ModelConfig:
    path: str
    sections: list[Section]
    model: dict[str, Any]
    model_section: Section
    optimizer: str | None = None
    optimizer_props: dict[str, Any] = field(default_factory=dict)
    optimizer_section: Section | None = None
    scheduler: str | None = None
    scheduler_props: dict[str, Any] = field(default_factory=dict)
    data: dict[str, DataSource] = field(default_factory=dict)
    layers: list[Section] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # keys that have no effect
    # weights that came with spliced ONNX backbones, by plan name (set by the pipeline)
    backbone_weights: dict[str, Any] = field(default_factory=dict)

    @property
    def base_dir(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))

    def resolve(self, section: Section, key: str) -> str | None:
        """A path-valued key, resolved (see Entry.path); None when it is not set."""
        entry = section.get(key)
        return entry.path(self.base_dir) if entry is not None else None

    def model_path(self, key: str) -> str | None:
        return self.resolve(self.model_section, key)


def apply_overrides(sections: list[Section], overrides: list[str]) -> None:
    """`SECTION.KEY=VALUE` from the command line. It changes a section the file has;
    only the non-layer sections ([Optimizer], [train_set], ...) may be added this way."""
    for item in overrides:
        where = ConfigError("expected SECTION.KEY=VALUE", file="--set", key=item)
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise where
        lhs, value = item.split("=", 1)
        name, key = (s.strip().lower() for s in lhs.rsplit(".", 1))
        if not name or not key:
            raise where
        section = next((s for s in sections if s.name == name), None)
        if section is None:
            if name not in SPECIAL or name == "model":
                names = [s.name for s in sections]
                raise ConfigError(f"the model has no section [{name}]"
                                  f"{P.did_you_mean(name, names)}; --set changes existing "
                                  "sections (it can add only [Optimizer], "
                                  "[LearningRateScheduler] and the data sections)",
                                  file="--set", key=item)
            section = Section(name, 0, "--set")
            if name in ("train_set", "valid_set", "test_set"):
                section.entries["type"] = Entry("type", "file", 0, "--set")
            sections.append(section)
        section.entries[key] = Entry(key, value.strip(), 0, "--set")


def _splice_backbones(sections: list[Section], top: str, seen: tuple[str, ...] = ()) -> list[Section]:
    """Replace each `backbone = other.ini` section with that file's layer sections."""
    out = []
    base = os.path.dirname(os.path.abspath(top))
    for s in sections:
        entry = s.get("backbone")
        if entry is None:
            out.append(s)
            continue
        path = entry.path(base)
        if not path.lower().endswith((*MODEL_EXTENSIONS, ".onnx")):
            raise s.error(f"backbone {entry.value!r} is not an INI, YAML or ONNX model; "
                          "TensorFlow Lite and NNStreamer backbones are not supported",
                          "backbone")
        if not os.path.isfile(path):
            raise s.error(f"backbone file not found: {path}", "backbone")
        if path.lower().endswith(".onnx"):   # spliced with its weights by the pipeline
            out.append(s)
            continue
        if path in seen:
            raise s.error("backbone includes itself", "backbone")
        inner = [b for b in read_model_file(path) if b.name not in SPECIAL]
        if not inner:
            raise s.error(f"backbone {entry.value!r} has no layer sections", "backbone")
        trainable = s.get("trainable")
        for b in _splice_backbones(inner, top, seen + (path,)):
            if trainable is not None:
                b.entries["trainable"] = trainable
            out.append(b)
    return out


def _optimizer(cfg: ModelConfig, sections: dict[str, Section]) -> None:
    model = cfg.model
    section = sections.get("optimizer")
    if model["optimizer"] is not None:
        if section is not None:
            raise cfg.model_section.error("optimizer given both here and in [Optimizer]",
                                          "optimizer")
        cfg.optimizer = model["optimizer"]
        keys = [k for k in ("learning_rate", "decay_rate", "decay_steps", "beta1", "beta2",
                            "epsilon") if model[k] is not None]
        fake = Section("model", cfg.model_section.line, cfg.model_section.file,
                       {k: cfg.model_section.entries[k] for k in keys})
        cfg.optimizer_props = P.parse_section(fake, OPTIMIZER_SCHEMAS[cfg.optimizer])
        cfg.optimizer_section = cfg.model_section
        return
    if section is None:
        return
    type_entry = section.get("type")
    cfg.optimizer = (type_entry.value.lower() if type_entry else "adam")
    if cfg.optimizer not in OPTIMIZER_SCHEMAS:
        raise section.error(f"unknown optimizer {type_entry.value!r}"
                            f"{P.did_you_mean(cfg.optimizer, OPTIMIZER_SCHEMAS)}; "
                            f"expected one of {', '.join(OPTIMIZER_SCHEMAS)}", "type")
    schema = OPTIMIZER_SCHEMAS[cfg.optimizer]
    for key in list(section.entries):   # another optimizer's key
        takes = [name for name, other in OPTIMIZER_SCHEMAS.items() if key in other]
        if key == "type" or key in schema or not takes:
            continue
        why = f"a key of {', '.join(takes)}, not of {cfg.optimizer}"
        if type_entry is None or not type_entry.source or section.entries[key].source:
            raise section.error(why, key)
        # --set changed the type: the file's keys for the one it had go, with a warning
        cfg.warnings.append(str(section.error(f"{why} (--set made it {cfg.optimizer}): "
                                              "ignored", key)))
        del section.entries[key]
    cfg.optimizer_props = P.parse_section(section, schema, ignore=("type",))
    cfg.optimizer_section = section
    sched = sections.get("learningratescheduler")
    if sched is not None:
        type_entry = sched.get("type")
        if type_entry is None:
            raise sched.error("missing required key 'type'")
        kind = type_entry.value.lower()
        if kind not in SCHEDULER_SCHEMAS:
            raise sched.error(f"unknown scheduler {type_entry.value!r}"
                              f"{P.did_you_mean(kind, SCHEDULER_SCHEMAS)}; expected one of "
                              f"{', '.join(SCHEDULER_SCHEMAS)}", "type")
        cfg.scheduler = kind
        cfg.scheduler_props = P.parse_section(sched, SCHEDULER_SCHEMAS[kind], ignore=("type",))
        if kind == "step":
            lrs, its = cfg.scheduler_props["learning_rate"], cfg.scheduler_props["iteration"]
            if len(lrs) != len(its) + 1:
                raise sched.error(f"step needs one more learning rate than iterations, got "
                                  f"{len(lrs)} and {len(its)}", "learning_rate")
            if any(b <= a for a, b in zip(its, its[1:])):
                raise sched.error("iterations must increase", "iteration")
        if cfg.optimizer_props["decay_rate"] or cfg.optimizer_props["decay_steps"]:
            raise section.error("decay keys here conflict with [LearningRateScheduler]",
                                "decay_rate" if "decay_rate" in section.entries else "decay_steps")
    elif (cfg.optimizer_props["decay_rate"] is None) != (cfg.optimizer_props["decay_steps"] is None):
        missing = "decay_steps" if cfg.optimizer_props["decay_steps"] is None else "decay_rate"
        raise section.error(f"exponential decay needs both decay_rate and decay_steps; "
                            f"{missing} is missing")


_SET_SCHEMA: P.Schema = {"type": P.Prop(P.enum("file", "dir", "csv"), "file"),
                         "path": P.Prop(P.text, required=True),
                         "label_column": P.Prop(P.text),
                         "buffer_size": P.Prop(P.positive_int, 1)}


def _data(cfg: ModelConfig, sections: dict[str, Section]) -> None:
    legacy = sections.get("dataset")
    if legacy is not None:
        keys = {"traindata": "train", "validdata": "valid", "testdata": "test"}
        if "traindata" not in legacy.entries:
            raise legacy.error("missing required key 'TrainData'")
        for key, split in keys.items():
            if key in legacy.entries:
                cfg.data[split] = DataSource(legacy.entries[key].value, legacy, key)
    for split in SPLITS:
        s = sections.get(f"{split}_set")
        if s is not None:
            values = P.parse_section(s, _SET_SCHEMA)
            if values["label_column"] is not None and values["type"] != "csv":
                raise s.error("label_column is for type = csv", "label_column")
            cfg.data[split] = DataSource(s.entries["path"].value, s, "path", values["type"],
                                         values["label_column"])


# [Model] keys NNTrainer has that change nothing here, with the value that is harmless.
IGNORED_MODEL_KEYS = {"memory_optimization": True, "loss_scale": None, "label_layers": None}
OLD_OPTIMIZER_KEYS = ("learning_rate", "decay_rate", "decay_steps", "beta1", "beta2", "epsilon")


def _no_effect(cfg: ModelConfig, section: Section, key: str, why: str) -> None:
    """A key that is read but changes nothing: an error when typed with --set (whoever
    typed it expects it to act), else a warning, since NNTrainer's files have such keys."""
    error = section.error(f"has no effect: {why}", key)
    if section.entries[key].source:
        raise error
    cfg.warnings.append(str(error))


def _check_effects(cfg: ModelConfig, sections: dict[str, Section]) -> None:
    """Keys shadowed by others, by NNTrainer's precedence, or ignored here."""
    opt, model = sections.get("optimizer"), cfg.model_section
    if opt is not None and "learning_rate" in opt.entries and cfg.scheduler:
        _no_effect(cfg, opt, "learning_rate", "[LearningRateScheduler] sets the learning rate "
                   "(NNTrainer ignores this one too); set it there, e.g. --set "
                   "learningratescheduler.learning_rate=...")
    if cfg.model["optimizer"] is None:
        for key in OLD_OPTIMIZER_KEYS:
            if key in model.entries:
                _no_effect(cfg, model, key, "[Model] takes optimizer settings only together "
                           "with 'optimizer = ...'; set it in [Optimizer]")
    for old, new in (("fsu_path", "memory_swap_path"), ("fsu_lookahead", "memory_swap_lookahead")):
        if old in model.entries and new in model.entries:
            _no_effect(cfg, model, old, f"{new} is also given, and it wins")
    legacy = sections.get("dataset")
    for key, split in (("traindata", "train"), ("validdata", "valid"), ("testdata", "test")):
        if legacy is not None and key in legacy.entries and f"{split}_set" in sections:
            _no_effect(cfg, legacy, key, f"[{split}_set] is also given, and it wins")
    if cfg.model["save_best_path"] and "valid" not in cfg.data:
        _no_effect(cfg, model, "save_best_path", "no validation set ([valid_set]) to find "
                   "the best epoch by")
    for key, harmless in IGNORED_MODEL_KEYS.items():
        if key in model.entries and cfg.model[key] != harmless:
            _no_effect(cfg, model, key, "not supported here, ignored")


def load_config(path: str, overrides: list[str] = ()) -> ModelConfig:
    sections = read_model_file(path)
    apply_overrides(sections, list(overrides))
    by_name = {s.name: s for s in sections}
    model_section = by_name.get("model")
    if model_section is None:
        close = difflib.get_close_matches(
            "model", [n for n, sec in by_name.items() if "type" not in sec.entries], n=1,
            cutoff=0.6)
        if close:   # a misspelt [Model]: point at it
            raise by_name[close[0]].error("no [Model] section: is this one meant to be it?")
        raise ConfigError("no [Model] section", file=path, line=1)
    model = P.parse_section(model_section, MODEL_SCHEMA)
    cfg = ModelConfig(path=path, sections=sections, model=model, model_section=model_section)
    _optimizer(cfg, by_name)
    _data(cfg, by_name)
    _check_effects(cfg, by_name)
    layers = [s for s in sections if s.name not in SPECIAL]
    if not layers:
        raise ConfigError("no layer sections: a model needs at least one layer", file=path)
    cfg.layers = _splice_backbones(layers, path)
    return cfg
