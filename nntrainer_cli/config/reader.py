"""Reading a model file from disk: bytes checked to be text, then parsed as INI or (by
extension) YAML into the same sections."""

from __future__ import annotations

from nntrainer_cli.errors import ConfigError

from .ini import parse_ini
from .sections import Section
from .yaml_file import parse_yaml


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
        sections = parse_yaml(text, path)
    else:
        sections = parse_ini(text, path)
    if not sections:
        raise ConfigError("the file is empty: no [Model] and no layer sections", file=path)
    return sections
