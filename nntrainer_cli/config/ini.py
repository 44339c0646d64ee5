"""Read an INI file the way NNTrainer's iniparser does, keeping file and line for errors.

Section names and keys are lower-cased, values keep their case; `#` and `;` start
comments (also after an unquoted value); quotes around a value are stripped and
anything after the closing quote is dropped; a trailing backslash joins lines.
Unlike iniparser, a section that appears twice is an error, and so is a key that
appears twice in one section: either is almost always a copy-paste mistake, and
merging (or the last one winning) would hide it.
"""

from __future__ import annotations

from nntrainer_cli.errors import ConfigError

from .sections import Entry, Section


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
        if key in current.entries:
            raise ConfigError(f"'{key}' appears twice in [{current.name}] (first at line "
                              f"{current.entries[key].line})", file=file, line=lineno,
                              section=current.name, key=key)
        current.entries[key] = Entry(key, _value(raw), lineno)
    return sections
