"""Write model sections back out as INI or YAML (`nntrainer convert`). Keys come out
lower-cased and of the comments only the block at the top is carried over; everything
the trainer reads is, so a converted file plans and trains exactly like its source."""

from __future__ import annotations

import json
import os
import re

from .sections import Section
from .model import SPECIAL
from .yaml_file import LAYERS

PATH_KEYS = ("path", "backbone", "save_path", "save_best_path", "memory_swap_path", "fsu_path")
_PLAIN = re.compile(r"[A-Za-z0-9_./+\-(][A-Za-z0-9_./+\-:, ()]*")
_YAML_WORDS = {"null", "~", "yes", "no", "on", "off", "y", "n"}


def rebase(sections: list[Section], source: str, target: str) -> None:
    """Keep relative file paths pointing at the same files when the model file moves."""
    src = os.path.dirname(os.path.abspath(source))
    dst = os.path.dirname(os.path.abspath(target))
    if src == dst:
        return
    for s in sections:
        for key in PATH_KEYS:
            e = s.entries.get(key)
            if e is not None and e.value and not os.path.isabs(os.path.expanduser(e.value)):
                e.value = os.path.relpath(os.path.join(src, e.value), dst)


def leading_comments(path: str) -> list[str]:
    """The comment block at the top of a model file (its description), to carry over."""
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            text = line.strip()
            if not text.startswith(("#", ";")):
                break
            out.append("#" + text[1:])
    return out


def _header(comments: list[str]) -> str:
    return "".join(c + "\n" for c in comments) + ("\n" if comments else "")


def to_ini(sections: list[Section], comments: list[str] = ()) -> str:
    blocks = []
    for s in sections:
        lines = [f"[{s.name}]"] + [f"{k} = {_ini_value(e.value)}" for k, e in s.entries.items()]
        blocks.append("\n".join(lines))
    return _header(list(comments)) + "\n\n".join(blocks) + "\n"


def _ini_value(value: str) -> str:
    """Plain when the INI reader reads the same text back, else quoted, with `\\` and
    `"` escaped as the reader unescapes them."""
    if value and value == value.strip() and not any(c in value for c in "#;\"'\\"):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _yaml_value(value: str) -> str:
    """Plain when YAML reads the same text back, else double-quoted (JSON escapes)."""
    if _PLAIN.fullmatch(value) and ": " not in value and not value.endswith((":", " ")) \
            and value.lower() not in _YAML_WORDS:
        return value
    return json.dumps(value, ensure_ascii=False)   # \u escapes of surrogates would not read back


def _yaml_key(key: str) -> str:
    return key if _PLAIN.fullmatch(key) and ":" not in key else json.dumps(key, ensure_ascii=False)


def to_yaml(sections: list[Section], comments: list[str] = ()) -> str:
    out, layers = [], [s for s in sections if s.name not in SPECIAL]
    for s in sections:
        if s.name in SPECIAL:
            out.append(f"{_yaml_key(s.name)}:")
            out += [f"  {_yaml_key(k)}: {_yaml_value(e.value)}" for k, e in s.entries.items()]
    if layers:
        out.append(f"{LAYERS}:")
        for s in layers:
            if not s.name:  # NNTrainer's `[]` backbone sections
                raise s.error("a section without a name cannot be written as YAML, where a "
                              "layer's name is its key")
            out.append(f"  - name: {_yaml_value(s.name)}")   # the section name is the name
            out += [f"    {_yaml_key(k)}: {_yaml_value(e.value)}" for k, e in s.entries.items()
                    if k != "name"]
    return _header(list(comments)) + "\n".join(out) + "\n"
