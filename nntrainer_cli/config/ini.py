"""Read an INI file the way NNTrainer's iniparser does, keeping file and line for errors.

Section names and keys are lower-cased, values keep their case; `#` and `;` start
comments (also after an unquoted value); quotes around a value are stripped and
anything after the closing quote is dropped; a trailing backslash joins lines.
Unlike iniparser, a section that appears twice is an error: it is almost always a
copy-paste mistake, and merging would hide it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from nntrainer_cli.errors import ConfigError


@dataclass
class Entry:
    key: str
    value: str
    line: int
    source: str | None = None   # set when the value came from elsewhere (e.g. --set)

    def path(self, base_dir: str) -> str:
        """The value as a path: relative to the model file's folder `base_dir` (as in
        NNTrainer), or to the current directory when it was typed on the command line."""
        path = os.path.expanduser(self.value)
        return os.path.abspath(path if self.source else os.path.join(base_dir, path))


@dataclass
class Section:
    name: str
    line: int
    file: str
    entries: dict[str, Entry] = field(default_factory=dict)

    def get(self, key: str) -> Entry | None:
        return self.entries.get(key)

    def error(self, message: str, key: str | None = None) -> ConfigError:
        entry = self.entries.get(key) if key else None
        if entry is not None and entry.source:
            return ConfigError(message, file=entry.source, section=self.name, key=key)
        return ConfigError(message, file=self.file, line=entry.line if entry else self.line,
                           section=self.name, key=key)


def _value(raw: str) -> str:
    raw = raw.strip()
    if raw[:1] in ('"', "'"):
        quote, out, i = raw[0], [], 1
        while i < len(raw) and raw[i] != quote:
            if raw[i] == "\\" and i + 1 < len(raw):
                i += 1
            out.append(raw[i])
            i += 1
        return "".join(out)
    for mark in "#;":
        cut = raw.find(mark)
        if cut >= 0:
            raw = raw[:cut]
    return raw.strip()


def parse_ini(text: str, file: str) -> list[Section]:
    """Sections in file order."""
    sections: list[Section] = []
    by_name: dict[str, Section] = {}
    current: Section | None = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        lineno = i + 1
        line = lines[i].strip()
        i += 1
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + lines[i].strip()
            i += 1
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and "]" in line:
            name = line[1:line.index("]")].strip().lower()
            if name in by_name:
                raise ConfigError(f"section [{name}] appears twice (first at line "
                                  f"{by_name[name].line})", file=file, line=lineno, section=name)
            current = Section(name, lineno, file)
            sections.append(current)
            by_name[name] = current
            continue
        if "=" not in line:
            raise ConfigError(f"cannot read this line: expected '[section]' or 'key = value', "
                              f"got {line[:60]!r}", file=file, line=lineno,
                              section=current.name if current else None)
        key, raw = line.split("=", 1)
        key = key.strip().lower()
        if not key:
            raise ConfigError("a line starts with '=': the key is missing", file=file,
                              line=lineno, section=current.name if current else None)
        if current is None:
            raise ConfigError(f"'{key}' comes before any [section]", file=file, line=lineno)
        current.entries[key] = Entry(key, _value(raw), lineno)
    return sections


def read_model_file(path: str) -> list[Section]:
    """Sections of an INI or (by extension) YAML model file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ConfigError("no such file", file=path) from None
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", file=path) from None
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
        from .yaml_file import parse_yaml
        sections = parse_yaml(text, path)
    else:
        sections = parse_ini(text, path)
    if not sections:
        raise ConfigError("the file is empty: no [Model] and no layer sections", file=path)
    return sections
