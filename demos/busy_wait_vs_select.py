"""Busy-waiting vs select: two ways to wait for data on a socket, and what asyncio does.

A sender on 127.0.0.1 sends a few short messages, one every so often. The receiver waits
for them three ways:

1. busy-wait: a non-blocking socket polled in a loop (``recv`` until it stops raising
   ``BlockingIOError``). It answers fast, but burns a whole CPU core doing nothing, and
   counts the polls.
2. ``select.select``: the thread sleeps in the kernel until the socket is readable. Almost
   no CPU time for the same wall time, but the thread is still stuck: in a coroutine, it
   blocks the event loop just the same.
3. asyncio (``loop.sock_recv``): the loop does the select for us, for every socket at once,
   and runs other tasks in between.

A ticker task (every 10 ms) runs beside the receiver to show who else got to run.

    python demos/busy_wait_vs_select.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import select
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _servers import Recorded, Sender, recorded, tcp_pair

TICK_S = 0.010


@dataclass
class Waited:
    """What one way of waiting cost the receiving thread."""

    wall_s: float
    cpu_s: float
    polls: int
    ticks: int


async def receive_busy_waiting(sock: socket.socket, count: int) -> int:
    """Variant 1: poll a non-blocking socket until every message has arrived."""
    sock.setblocking(False)
    received = polls = 0
    while received < count:
        polls += 1
        try:
            received += len(sock.recv(64)) // MESSAGE_SIZE  # BUSY: poll, poll, poll...
        except BlockingIOError:
            continue
    return polls


async def receive_with_select(sock: socket.socket, count: int) -> int:
    """Variant 2: sleep in select() until the socket is readable."""
    sock.setblocking(False)
    received = polls = 0
    while received < count:
        polls += 1
        select.select([sock], [], [])  # SELECT: the thread sleeps in the kernel
        received += len(sock.recv(64)) // MESSAGE_SIZE
    return polls


async def receive_with_asyncio(sock: socket.socket, count: int) -> int:
    """Variant 3: the event loop waits in epoll, for this socket and every other one."""
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    received = polls = 0
    while received < count:
        polls += 1
        received += len(await loop.sock_recv(sock, 64)) // MESSAGE_SIZE
    return polls


MESSAGE_SIZE = 8
VARIANTS: list[tuple[str, Callable[[socket.socket, int], Awaitable[int]]]] = [
    ("1. busy-wait on a non-blocking socket", receive_busy_waiting),
    ("2. select.select", receive_with_select),
    ("3. asyncio (loop.sock_recv)", receive_with_asyncio),
]


async def wait_with(receive: Callable[[socket.socket, int], Awaitable[int]],
                    receiver: socket.socket, sender: Sender, count: int) -> Waited:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(TICK_S)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # let the ticker start
    sender.go()
    wall, cpu = time.perf_counter(), time.thread_time()
    polls = await receive(receiver, count)
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    ticking.cancel()
    return Waited(wall, cpu, polls, ticks)


def send_message(sock: socket.socket, number: int) -> None:
    sock.sendall(b"m" * MESSAGE_SIZE)


def run(count: int, interval_s: float) -> list[tuple[Recorded, Waited]]:
    """Wait for ``count`` messages with each variant; what it cost, and looptrace's verdict."""
    results = []
    for label, receive in VARIANTS:
        receiver, sending_end = tcp_pair()
        with receiver, sending_end:
            sender = Sender(functools.partial(send_message, sending_end), count, interval_s)
            with recorded(label) as record:
                waited = asyncio.run(wait_with(receive, receiver, sender, count))
                record.wall_s = waited.wall_s
            sender.join()
        results.append((record, waited))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="busy-waiting vs select vs asyncio")
    parser.add_argument("--quick", action="store_true", help="a shorter wait (for the tests)")
    args = parser.parse_args(argv)
    count, interval_s = (4, 0.1) if args.quick else (5, 0.2)
    print(f"Waiting for {count} messages sent {interval_s * 1000:.0f} ms apart over 127.0.0.1, "
          f"while a ticker task wants to run every {TICK_S * 1000:.0f} ms.\n")
    for record, waited in run(count, interval_s):
        print(f"{record.label}: wall {waited.wall_s:.2f} s, CPU {waited.cpu_s:.2f} s "
              f"({waited.cpu_s / waited.wall_s * 100:.0f}% of a core), {waited.polls} polls, "
              f"ticker ran {waited.ticks}x")
        print("   looptrace: " + record.verdict().replace("\n", "\n              "))
        print("              " + record.loop_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
