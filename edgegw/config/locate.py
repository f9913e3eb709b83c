"""Where a config problem is: its line in the file, and list items named by their id.

tomllib gives values, not positions.

:func:`key_lines` reads a file that tomllib has already accepted and maps every key path it writes
(``("devices", 2, "driver")``, table headers and array elements included) to its line number, so
that a config error can say where to look. It reads only valid TOML (tomllib's own errors carry
their line), which keeps it small: keys, headers, strings, arrays and inline tables, nothing else.
"""

from __future__ import annotations

import math
import re
from typing import Any

Path = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR_END = re.compile(r"[,\]}\n#]")


class _Reader:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.lines: dict[Path, int] = {}
        self.tables: dict[Path, int] = {}  # array-of-tables path -> entries so far

    @property
    def line(self) -> int:
        return self.text.count("\n", 0, self.pos) + 1

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos:self.pos + n]

    def skip(self, newlines: bool) -> None:
        """Past spaces and comments (and newlines, where the grammar allows them)."""
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c in " \t\r" or (newlines and c == "\n"):
                self.pos += 1
            elif c == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            else:
                return

    def key(self) -> list[str]:
        parts = []
        while True:
            self.skip(False)
            if self.peek() in ('"', "'"):
                parts.append(self.string())
            else:
                m = _BARE_KEY.match(self.text, self.pos)
                assert m is not None, f"not a key at line {self.line}"
                parts.append(m.group())
                self.pos = m.end()
            self.skip(False)
            if self.peek() != ".":
                return parts
            self.pos += 1

    def string(self) -> str:
        quote = self.peek(3) if self.peek(3) in ('"""', "'''") else self.peek()
        start = self.pos + len(quote)
        at = start
        while True:
            end = self.text.find(quote, at)
            assert end >= 0, "unterminated string"
            if quote[0] == '"' and _escaped(self.text, end):
                at = end + 1
                continue
            while self.text[end + len(quote):end + len(quote) + 1] == quote[0] and len(quote) == 3:
                end += 1  # """a"""" ends with the last three quotes
            self.pos = end + len(quote)
            return self.text[start:end]

    def value(self, path: Path) -> None:
        self.lines.setdefault(path, self.line)
        c = self.peek()
        if c in ('"', "'"):
            self.string()
        elif c == "[":
            self.pos += 1
            i = 0
            while True:
                self.skip(True)
                if self.peek() == "]":
                    self.pos += 1
                    return
                self.value((*path, i))
                i += 1
                self.skip(True)
                if self.peek() == ",":
                    self.pos += 1
        elif c == "{":
            self.pos += 1
            while True:
                self.skip(False)
                if self.peek() == "}":
                    self.pos += 1
                    return
                self.pair(path)
                self.skip(False)
                if self.peek() == ",":
                    self.pos += 1
        else:
            m = _SCALAR_END.search(self.text, self.pos)
            self.pos = len(self.text) if m is None else m.start()

    def pair(self, table: Path) -> None:
        line = self.line
        path = (*table, *self.key())
        self.lines[path] = line
        assert self.peek() == "=", f"no = after a key at line {line}"
        self.pos += 1
        self.skip(False)
        self.value(path)

    def resolve(self, parts: list[str]) -> Path:
        """A header's dotted key, with the current index after every array of tables in it."""
        out: Path = ()
        for part in parts:
            out = (*out, part)
            if out in self.tables:
                out = (*out, self.tables[out] - 1)
        return out

    def header(self) -> Path:
        line = self.line
        if self.peek(2) == "[[":
            self.pos += 2
            parts = self.key()
            parent = self.resolve(parts[:-1])
            plain = (*parent, parts[-1])
            self.tables[plain] = self.tables.get(plain, 0) + 1
            self.lines.setdefault(plain, line)
            path = (*plain, self.tables[plain] - 1)
            self.pos += 2
        else:
            self.pos += 1
            path = self.resolve(self.key())
            self.pos += 1
        self.lines.setdefault(path, line)
        return path

    def read(self) -> dict[Path, int]:
        table: Path = ()
        while True:
            self.skip(True)
            if self.pos >= len(self.text):
                return self.lines
            if self.peek() == "[":
                table = self.header()
            else:
                self.pair(table)


def _escaped(text: str, at: int) -> bool:
    """Whether the character at ``at`` follows an odd number of backslashes."""
    n = 0
    while at - n - 1 >= 0 and text[at - n - 1] == "\\":
        n += 1
    return n % 2 == 1


def key_lines(text: str) -> dict[Path, int]:
    """Line number (from 1) of every key path written in ``text``, a document tomllib accepts."""
    return _Reader(text).read()


def key_path(loc: tuple[str | int, ...] | list[str | int]) -> str:
    """``("devices", 3, "driver")`` as ``devices[3].driver``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def line_of(lines: dict[Path, int], path: Path) -> int | None:
    """The line of ``path``, or of the nearest enclosing key or table written (a missing key is
    looked for in its table); None when nothing of it is in the file."""
    for n in range(len(path), 0, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return None


# Top-level lists whose items an installer knows by a name, not by their place in the file.
_ITEM_LABELS = {"devices": "id", "sources": "name", "uplinks": "name", "rules": "name", "actions": "name",
                "layouts": "name"}
_LEAD = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*(?:\[\d+\]|\.[A-Za-z0-9_-]+)*)(: |$)")
_ITEM = re.compile(r"\b(" + "|".join(_ITEM_LABELS) + r")\[(\d+)\]")
_PART = re.compile(r"\[(\d+)\]|\.?([A-Za-z0-9_-]+)")


def item_label(raw: dict[str, Any], table: str, index: int) -> str:
    """``id=river-03`` for devices[3] when that id is written and unique in the file, else ``3``."""
    key = _ITEM_LABELS.get(table)
    items = raw.get(table)
    if key is None or not isinstance(items, list) or not 0 <= index < len(items):
        return str(index)
    names = [item.get(key) if isinstance(item, dict) else None for item in items]
    name = names[index]
    if isinstance(name, str) and names.count(name) == 1 and re.fullmatch(r"[A-Za-z0-9_.:-]+", name):
        return f"{key}={name}"
    return str(index)


def place(problem: str, lines: dict[Path, int], raw: dict[str, Any]) -> tuple[str, float]:
    """``devices[3].driver: ...`` as ``line 12: devices[id=river-03].driver: ...``, and the line
    (infinity where there is none) to order the problems by.

    The line is the key's, or its table's when the key is missing; a problem that names no key of
    the file (a driver module that failed to load) keeps its text.
    """
    lead = _LEAD.match(problem)
    if lead is None:
        return problem, math.inf
    path: Path = tuple(int(m.group(1)) if m.group(1) else m.group(2) for m in _PART.finditer(lead.group(1)))
    line = line_of(lines, path) if path and path[0] in raw else None
    # Only the leading key path: the message may quote another file's problems (a field file's devices).
    named = _ITEM.sub(lambda m: f"{m.group(1)}[{item_label(raw, m.group(1), int(m.group(2)))}]", lead.group(1))
    named += problem[lead.end(1):]
    return (f"line {line}: {named}", line) if line is not None else (named, math.inf)

