"""Writing a report file: what ``open(path, "w")`` would do, without half-written files.

The one writer of every front end (``looptrace run``, ``looptrace report -o``,
``Session.save``, the pytest plugin):

- a regular file (or a path that does not exist yet) is written to a temporary file in the
  same directory and renamed over it, so a reader never sees half a report; the file keeps
  its permissions, and a symbolic link is written through (its target is replaced, the
  link stays);
- a FIFO, a device (``/dev/stdout``, ``/dev/null``, ``/dev/full``) or a socket is opened
  and written in place, as ``open(path, "w")`` would: never replaced by a plain file;
- a file in a directory we cannot create files in, but that we may write, is written in
  place too;
- any failure (a full disk, Ctrl-C) removes the temporary file and raises: the caller
  prints one line. ``OSError.strerror`` says what went wrong (``No space left on device``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import stat

__all__ = ["write_text"]

_counter = itertools.count()


def _in_place(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8", errors="backslashreplace") as f:
        f.write(text)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` as UTF-8 to ``path``. A name that was not UTF-8 (a lone surrogate in
    Python) is written as ``\\udcff``, which in a JSON string reads back the same."""
    target = os.path.realpath(os.fspath(path))  # through symbolic links, as open() goes
    try:
        mode: int | None = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        _in_place(target, text)  # a FIFO, a device: what open(path, "w") would do
        return
    directory = os.path.dirname(target)
    if mode is not None and not os.access(directory, os.W_OK | os.X_OK):
        _in_place(target, text)
        return
    tmp = os.path.join(directory, f".{os.path.basename(target)}.{os.getpid()}."
                                  f"{next(_counter)}.tmp")
    # O_EXCL: never write through someone's link at the temporary name; 0o666 lets the
    # umask decide, as open() does for a new file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                 0o666)
    try:
        with open(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
            f.write(text)
        if mode is not None:
            os.chmod(tmp, stat.S_IMODE(mode))
        os.replace(tmp, target)
    except BaseException:  # a full disk, Ctrl-C: leave nothing behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
