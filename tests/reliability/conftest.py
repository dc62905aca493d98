"""Fixtures of the reliability tests (helpers are in ``reliability_helpers``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from reliability_helpers import fd_target, open_fds


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """The test leaves no thread running and no file descriptor open that it found closed
    (after looptrace's own threads had a moment to end)."""
    threads_before = set(threading.enumerate())
    fds_before = open_fds()
    yield
    deadline = 50
    while deadline and set(threading.enumerate()) - threads_before:
        threading.Event().wait(0.05)
        deadline -= 1
    leaked_threads = set(threading.enumerate()) - threads_before
    assert not leaked_threads, f"threads left running: {sorted(t.name for t in leaked_threads)}"
    leaked_fds = open_fds() - fds_before
    details = {fd: fd_target(fd) for fd in leaked_fds}
    assert not leaked_fds, f"file descriptors left open: {details}"
