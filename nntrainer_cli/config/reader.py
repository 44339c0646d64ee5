"""Reading a model file from disk: bytes checked to be text, then parsed as INI or (by
extension) YAML into the same sections."""

from __future__ import annotations

import os
import stat

from nntrainer_cli.errors import ConfigError

from .ini import parse_ini
from .sections import Section
from .yaml_file import parse_yaml


MODEL_EXTENSIONS = (".ini", ".yaml", ".yml")   # what a model file is named; YAML by the last two
MAX_MODEL_BYTES = 16 << 20   # NNTrainer's biggest model files are a few KiB

WEIGHTS = "a weights file, not a model config: give it with --init-weights"
NOT_CONFIGS = {".onnx": "an ONNX model, not a model config: `nntrainer import {name} -o "
                        "model.ini` writes one",
               ".bin": WEIGHTS, ".safetensors": WEIGHTS,
               ".ckpt": "a checkpoint, not a model config: `train MODEL --resume` reads it"}


def read_model_file(path: str) -> list[Section]:
    """Sections of an INI or (by extension) YAML model file."""
    hint = NOT_CONFIGS.get(os.path.splitext(path)[1].lower())
    if hint:
        raise ConfigError(hint.format(name=os.path.basename(path)), file=path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # before open: a FIFO would block it
            raise ConfigError("not a regular file", file=path)
        with open(path, "rb") as f:
            data = f.read(MAX_MODEL_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError("no such file", file=path) from None
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", file=path) from None
    if len(data) > MAX_MODEL_BYTES:
        raise ConfigError(f"over {MAX_MODEL_BYTES >> 20} MiB: not a model file", file=path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ConfigError("not a text file (invalid UTF-8)", file=path, line=line) from None
    text = text.removeprefix("\ufeff")  # a byte-order mark, as editors on Windows write
    if "\x00" in text:
        line = text[:text.index("\x00")].count("\n") + 1
        raise ConfigError("not a text file (NUL byte)", file=path, line=line)
    if path.lower().endswith((".yaml", ".yml")):
        sections = parse_yaml(text, path)
    else:
        sections = parse_ini(text, path)
    if not sections:
        raise ConfigError("the file is empty: no [Model] and no layer sections", file=path)
    return sections
