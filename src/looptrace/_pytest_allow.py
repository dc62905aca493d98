"""Allow-list rules of the pytest plugin: which blocks a test may have over its budget.

A rule is a string, matched (``fnmatch`` wildcards allowed, case-sensitive) against:

- the blocking call: ``"time.sleep"``, ``"http.client.*"``;
- the site's function: ``"legacy_fetch"``, ``"Client.*"``;
- the site's file, optionally with a line: ``"app/db.py"``, ``"app/db.py:42"``,
  ``"*/vendor/*.py"``. A relative path matches the end of the absolute path, by whole
  path components.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from .session import BlockEvent


@dataclass(frozen=True, slots=True)
class AllowRule:
    text: str
    path: str | None
    line: int | None

    @classmethod
    def parse(cls, text: str) -> AllowRule:
        path: str | None = None
        line: int | None = None
        head, sep, tail = text.rpartition(":")
        if sep and tail.isdigit() and head:
            path, line = head, int(tail)
        elif "/" in text or "\\" in text or text.endswith((".py", ".pyw")):
            path = text
        return cls(text, path.replace("\\", "/") if path is not None else None, line)

    def matches(self, block: BlockEvent) -> bool:
        if block.call is not None and fnmatchcase(block.call, self.text):
            return True
        site = block.site
        if site is None:
            return False
        if self.path is None:
            return fnmatchcase(site.function, self.text)
        if self.line is not None and site.line != self.line:
            return False
        file = site.file.replace("\\", "/")
        if self.path.startswith("/"):
            return fnmatchcase(file, self.path)
        return fnmatchcase(file, self.path) or fnmatchcase(file, "*/" + self.path)


def parse_rules(value: object, *, where: str) -> tuple[AllowRule, ...]:
    """``allow=`` as given to the marker: a string or a list of strings."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Iterable):
        raise TypeError(f"{where}: allow= must be a list of strings, got {value!r}")
    rules = []
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise TypeError(f"{where}: allow= entries must be non-empty strings "
                            "(a call such as 'time.sleep', a function, or 'path.py:LINE'), "
                            f"got {item!r}")
        rules.append(AllowRule.parse(item.strip()))
    return tuple(rules)


def first_match(rules: Iterable[AllowRule], block: BlockEvent) -> AllowRule | None:
    return next((rule for rule in rules if rule.matches(block)), None)
