"""Errors a user can act on. Each renders as one line naming where the problem is."""

from __future__ import annotations

import unicodedata
import zipfile


def visible(text: str) -> str:
    """`text` with invisible characters (zero-width space, control codes) escaped, so a
    key that looks right but is not can be seen to differ."""
    return "".join(c.encode("unicode_escape").decode() if unicodedata.category(c)[0] in "CZ"
                   and c != " " else c for c in text)


class UserError(Exception):
    """Bad input (config, data, flags): reported in one line, exit code 2."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 section: str | None = None, key: str | None = None, col: int | None = None):
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.col = col
        self.section = section
        self.key = key

    def where(self) -> str:
        parts = []
        if self.file:
            at = f":{self.line}" if self.line else ""
            at += f":{self.col}" if self.line and self.col else ""
            parts.append(self.file + at)
        if self.section is not None:
            parts.append(f"[{self.section}]")
        if self.key:
            parts.append(visible(self.key))
        return " ".join(parts)

    def __str__(self) -> str:
        where = self.where()
        return f"{where}: {self.message}" if where else self.message


class ConfigError(UserError):
    """A model file (or an override of it) says something we cannot accept."""


class DataError(UserError):
    """A data or weights file is missing, unreadable or does not fit the model."""


class TrainingError(Exception):
    """Training itself went wrong (e.g. the loss became NaN): exit code 1."""

    exit_code = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run stops cleanly, with exit code 143."""

    exit_code = 143


# What reading a damaged zip archive (.npz data, a checkpoint) raises besides
# BadZipFile: an unknown compression method or version, an "encrypted" flag bit.
ZIP_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError,
                   RuntimeError)
