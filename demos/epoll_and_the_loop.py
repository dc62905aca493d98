"""select → epoll → the event loop.

1. The cost of one wait grows with the number of sockets watched. ``select.select`` gets
   the whole set on every call: Python builds a bit set of every descriptor, the kernel
   scans all of them, Python scans the answer. ``epoll`` is told about each socket once
   (``register``); the kernel keeps that interest list and hands back only the sockets that
   are ready, so a wait costs the same for 10 sockets or 10,000.
2. ``select`` cannot watch a descriptor numbered FD_SETSIZE (1024) or above at all.
3. A wait for messages on many sockets, written by hand on ``selectors.EpollSelector``
   (sleep in epoll, wake for each event, run its callback), and the same wait through
   asyncio, whose loop is exactly that. looptrace's select-wait figures for the asyncio
   loop: how long it slept, how often it woke, how many events woke it.

    python demos/epoll_and_the_loop.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import select
import selectors
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _servers import Recorded, Sender, milliseconds, recorded

FD_SETSIZE = 1024


@dataclass
class WaitCost:
    """Microseconds per wait (one socket ready) with ``watched`` sockets."""

    watched: int
    select_us: float
    epoll_us: float


@dataclass
class Wakeups:
    """How a wait for messages went: time asleep in the kernel, wakeups, events."""

    wall_s: float
    slept_s: float
    wakeups: int
    events: int


def raise_descriptor_limit(needed: int) -> int:
    """Raise this process's open-file limit towards ``needed``; return the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    return soft


@contextmanager
def udp_sockets(count: int) -> Iterator[list[socket.socket]]:
    """``count`` UDP sockets bound to 127.0.0.1 (one descriptor each); a datagram sent to
    one makes it readable."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def fastest_us(call: Callable[[], object], calls: int) -> float:
    """Microseconds per call, from the fastest of ten batches (a batch the scheduler
    interrupted says nothing about the call)."""
    batch = max(calls // 10, 1)
    best = float("inf")
    for _ in range(10):
        started = time.perf_counter()
        for _ in range(batch):
            call()
        best = min(best, time.perf_counter() - started)
    return best / batch * 1e6


def cost_of_one_wait(watched: int, calls: int) -> WaitCost:
    """Time ``select.select`` and ``epoll.poll`` on ``watched`` sockets, one of them ready."""
    with udp_sockets(watched) as all_sockets, socket.socket(socket.AF_INET,
                                                            socket.SOCK_DGRAM) as sender:
        # (in a process that already has many files open, select must leave some out)
        sockets = [sock for sock in all_sockets if sock.fileno() < FD_SETSIZE]
        sender.sendto(b"!", sockets[0].getsockname())  # one ready socket for both calls
        time.sleep(0.01)
        assert len(select.select(sockets, [], [], 0)[0]) == 1
        # the whole set, every time:
        select_us = fastest_us(lambda: select.select(sockets, [], [], 0), calls)
        with select.epoll() as epoll:
            for sock in all_sockets:
                epoll.register(sock.fileno(), select.EPOLLIN)  # once: the kernel keeps it
            assert len(epoll.poll(0)) == 1
            epoll_us = fastest_us(lambda: epoll.poll(0), calls)
    return WaitCost(len(sockets), select_us, epoll_us)


def beyond_fd_setsize() -> str:
    """What select and epoll say about a socket numbered above FD_SETSIZE."""
    if raise_descriptor_limit(FD_SETSIZE + 64) <= FD_SETSIZE + 8:
        return "(skipped: this process may not open more than 1024 files)"
    with udp_sockets(FD_SETSIZE + 8) as sockets:
        high = sockets[-1]
        try:
            select.select([high], [], [], 0)
            said = "select accepted it"
        except ValueError as exc:
            said = f"select.select raised ValueError: {exc}"
        with select.epoll() as epoll:
            epoll.register(high.fileno(), select.EPOLLIN)
            said += "; epoll.register accepted it"
        return f"socket fd {high.fileno()}: {said}"


def datagram_sender(sockets: list[socket.socket], count: int, interval_s: float) -> Sender:
    """Another program: one datagram to a random socket every ``interval_s``, once told to
    go."""
    addresses = [sock.getsockname() for sock in random.Random(4).choices(sockets, k=count)]
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def send(number: int) -> None:
        out.sendto(b"!", addresses[number])
        if number == count - 1:
            out.close()

    return Sender(send, count, interval_s)


def wait_by_hand(sockets: list[socket.socket], sender: Sender, count: int) -> Wakeups:
    """The event loop's core, written out: sleep in epoll, run the ready sockets' callbacks."""
    received = 0

    def on_readable(sock: socket.socket) -> None:
        nonlocal received
        received += len(sock.recv(64))

    with selectors.EpollSelector() as selector:
        for sock in sockets:
            selector.register(sock, selectors.EVENT_READ, on_readable)
        sender.go()
        slept = 0.0
        wakeups = events = 0
        started = time.perf_counter()
        while received < count:
            before = time.perf_counter()
            ready = selector.select()  # sleep until the kernel reports a ready socket
            slept += time.perf_counter() - before
            wakeups += 1
            events += len(ready)
            for key, _ in ready:
                key.data(key.fileobj)
        wall = time.perf_counter() - started
    return Wakeups(wall, slept, wakeups, events)


async def wait_with_asyncio(sockets: list[socket.socket], sender: Sender, count: int) -> float:
    """The same wait through asyncio: the loop owns the epoll; we give it callbacks."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    received = 0

    def on_readable(sock: socket.socket) -> None:
        nonlocal received
        received += len(sock.recv(64))
        if received >= count and not done.done():
            done.set_result(None)

    for number, sock in enumerate(sockets, 1):
        loop.add_reader(sock, on_readable, sock)  # one epoll_ctl(ADD) each
        if number % 100 == 0:
            await asyncio.sleep(0)  # a thousand registrations are tens of ms: let others run
    started = time.perf_counter()
    sender.go()
    await done
    wall = time.perf_counter() - started
    for number, sock in enumerate(sockets, 1):
        loop.remove_reader(sock)
        if number % 100 == 0:
            await asyncio.sleep(0)
    return wall


@dataclass
class Results:
    costs: list[WaitCost]
    beyond: str
    by_hand: Wakeups
    asyncio_wall_s: float
    asyncio_record: Recorded


def run(sizes: list[int], calls: int, sockets: int, count: int, interval_s: float) -> Results:
    """Measure the three parts; the last one under looptrace."""
    raise_descriptor_limit(max(*sizes, sockets) + 64)
    costs = [cost_of_one_wait(size, calls) for size in sizes]
    beyond = beyond_fd_setsize()
    with udp_sockets(sockets) as watched:
        sender = datagram_sender(watched, count, interval_s)
        by_hand = wait_by_hand(watched, sender, count)
        sender.join()
        sender = datagram_sender(watched, count, interval_s)
        with recorded("asyncio") as record:
            wall = asyncio.run(wait_with_asyncio(watched, sender, count))
            record.wall_s = wall
        sender.join()
    return Results(costs, beyond, by_hand, wall, record)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="select -> epoll -> the event loop")
    parser.add_argument("--quick", action="store_true", help="fewer calls (for the tests)")
    args = parser.parse_args(argv)
    calls, count, interval_s = (300, 10, 0.02) if args.quick else (2000, 20, 0.05)
    results = run([10, 100, 1000], calls, 1000, count, interval_s)

    print(f"1. One wait with one socket ready, per call (best of 10 batches of {calls // 10}):")
    print("   watched   select.select   epoll.poll")
    for cost in results.costs:
        print(f"   {cost.watched:7d}   {cost.select_us:10.1f} us   {cost.epoll_us:7.1f} us")
    first, last = results.costs[0], results.costs[-1]
    print(f"   {last.watched // first.watched}x the sockets: select "
          f"{last.select_us / first.select_us:.0f}x slower, "
          f"epoll {last.epoll_us / first.epoll_us:.1f}x.")
    print(f"\n2. Beyond FD_SETSIZE ({FD_SETSIZE}): {results.beyond}")

    by_hand = results.by_hand
    print(f"\n3. {count} messages, {interval_s * 1000:.0f} ms apart, on random sockets "
          f"among {1000}:")
    print(f"   by hand on EpollSelector: {by_hand.wall_s:.2f} s, slept "
          f"{by_hand.slept_s / by_hand.wall_s * 100:.1f}% of it in epoll, "
          f"{by_hand.wakeups} wakeups, {by_hand.events} events")
    record = results.asyncio_record
    loop = record.loop
    if loop is not None and loop.io_wait_ms is not None:
        print(f"   asyncio: {results.asyncio_wall_s:.2f} s; looptrace: the loop slept "
              f"{milliseconds(loop.io_wait_ms)} in {loop.kind.removeprefix('selector:')} over "
              f"{loop.select_calls} select calls, woken by {loop.events} events")
    print("   looptrace: " + record.verdict())
    print("              " + record.loop_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
