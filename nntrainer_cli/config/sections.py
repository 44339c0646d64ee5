"""What a model file holds once read, whatever its format: sections of keyed entries,
each remembering the file and line it came from so later errors can point at it."""

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
    col: int | None = None      # the key's column (YAML; INI keys start their line)

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
                           section=self.name, key=key, col=entry.col if entry else None)
