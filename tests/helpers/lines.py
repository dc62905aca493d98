"""Find a line by a marker comment, so tests never hard-code line numbers."""

from pathlib import Path


def line_of(path: str, marker: str) -> int:
    for number, text in enumerate(Path(path).read_text().splitlines(), start=1):
        if marker in text:
            return number
    raise AssertionError(f"marker {marker!r} not found in {path}")
