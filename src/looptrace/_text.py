"""Text that comes from the traced program: made a string, and made safe for a terminal.

A task name, a thread name, ``sys.argv``, a file or function name, an exception message:
the program chooses them, so they may be any object (``sys.argv`` holding a ``Path`` or
``None``, a task whose ``get_name()`` returns an object whose ``__str__`` raises) and any
characters (ANSI escapes that set the window title, clear the screen or forge a summary
line). :func:`printable` never raises; :func:`terminal_safe` leaves nothing a terminal
would act on.
"""

from __future__ import annotations

import os
import re

__all__ = ["printable", "printable_argv", "terminal_safe"]


def printable(value: object) -> str:
    """``str(value)``, never raising: a name chosen by the program may be anything."""
    if type(value) is str:
        return value
    if isinstance(value, bytes):
        return os.fsdecode(value)
    try:
        text = str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"
    # A str subclass could override anything; keep only its characters.
    return str.__str__(text) if isinstance(text, str) else f"<{type(value).__name__}>"


def printable_argv(argv: object) -> tuple[str, ...]:
    """``sys.argv`` as strings, whatever the program left there (deleted, None, Paths)."""
    if isinstance(argv, str | bytes):
        return (printable(argv),)
    try:
        items = list(argv)  # type: ignore[call-overload]
    except Exception:  # None, an int, something whose iteration raises
        return ()
    return tuple(printable(item) for item in items)


# C0 and C1 control characters, DEL, and the Unicode ones a terminal or a reader is fooled
# by: bidirectional overrides (which reorder what is shown), line and paragraph separators.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NEWLINES = re.compile("[\n\t]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_safe(value: object, *, multiline: bool = False) -> str:
    """The text with every control character shown as an escape (``\\x1b``), so nothing
    from the program can move the cursor, recolour, retitle or forge a line. Newlines and
    tabs are escaped too unless ``multiline``."""
    text = printable(value)
    text = _UNSAFE.sub(_escape, text)
    if not multiline:
        text = _NEWLINES.sub(_escape, text)
    return text
