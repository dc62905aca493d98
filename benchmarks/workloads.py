"""The workloads the overhead benchmark times, each a coroutine run on a fresh loop.

Each takes ``start``/``stop`` callables that switch the tool under test on and off right
around the timed region (setup such as connecting is never timed), and returns
``(operations, elapsed_ns)``. Sizes follow shared/research/perf-anchors.md so the figures
compare with the peers measured there.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from time import perf_counter_ns

Hook = Callable[[], None]


async def callback_chain(hops: int, start: Hook, stop: Hook) -> tuple[int, int]:
    """One callback that reschedules itself with ``call_soon``: each hop is one callback plus
    one loop iteration (with an ``epoll_wait(0)``)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    left = hops

    def hop() -> None:
        nonlocal left
        left -= 1
        if left:
            loop.call_soon(hop)
        else:
            done.set_result(None)

    start()
    began = perf_counter_ns()
    loop.call_soon(hop)
    await done
    elapsed = perf_counter_ns() - began
    stop()
    return hops, elapsed


async def pingpong_worker(steps: int) -> None:
    for _ in range(steps):
        await asyncio.sleep(0)


async def task_pingpong(tasks: int, steps: int, start: Hook, stop: Hook) -> tuple[int, int]:
    """``tasks`` tasks each doing ``steps`` × ``await asyncio.sleep(0)``, gathered: every
    ``sleep(0)`` is one task step."""
    start()
    began = perf_counter_ns()
    await asyncio.gather(*(asyncio.create_task(pingpong_worker(steps)) for _ in range(tasks)))
    elapsed = perf_counter_ns() - began
    stop()
    return tasks * steps, elapsed


async def _gated_worker(gate: asyncio.Event, steps: int) -> None:
    await gate.wait()
    for _ in range(steps):
        await asyncio.sleep(0)


async def started_pingpong(tasks: int, steps: int, start: Hook, stop: Hook
                           ) -> tuple[int, int]:
    """:func:`task_pingpong` with the tasks created and started before the timed region (all
    waiting on one event), so with 100,000 tasks the figure is the cost of a step, not of
    creating a task."""
    gate = asyncio.Event()
    workers = [asyncio.create_task(_gated_worker(gate, steps)) for _ in range(tasks)]
    await asyncio.sleep(0)  # every worker runs to its gate.wait()
    start()
    began = perf_counter_ns()
    gate.set()
    await asyncio.gather(*workers)
    elapsed = perf_counter_ns() - began
    stop()
    return tasks * steps, elapsed


ECHO_PAYLOAD = b"x" * 64


async def _echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def echo_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      round_trips: int) -> None:
    size = len(ECHO_PAYLOAD)
    for _ in range(round_trips):
        writer.write(ECHO_PAYLOAD)
        await writer.drain()
        await reader.readexactly(size)


async def socket_echo(clients: int, round_trips: int, start: Hook, stop: Hook
                      ) -> tuple[int, int]:
    """An asyncio streams echo server and ``clients`` connections in the same process, each
    doing ``round_trips`` round trips of 64 bytes over 127.0.0.1. Connecting is not timed."""
    server = await asyncio.start_server(_echo_handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(clients)]
    start()
    began = perf_counter_ns()
    await asyncio.gather(*(echo_client(r, w, round_trips) for r, w in connections))
    elapsed = perf_counter_ns() - began
    stop()
    for _, writer in connections:
        writer.close()
        await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return clients * round_trips, elapsed


async def part_a() -> dict[str, object]:
    await asyncio.sleep(0)
    return {"a": list(range(8))}


async def part_b() -> dict[str, object]:
    await asyncio.sleep(0)
    return {"b": "looptrace"}


def aiohttp_app() -> object:
    """``/hello`` (plain text) and ``/json`` (a JSON body built by two coroutines run with
    ``asyncio.gather``)."""
    from aiohttp import web

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="Hello, world")

    async def json_view(request: web.Request) -> web.Response:
        a, b = await asyncio.gather(part_a(), part_b())
        return web.Response(text=json.dumps({**a, **b}), content_type="application/json")

    app = web.Application()
    app.router.add_get("/hello", hello)
    app.router.add_get("/json", json_view)
    return app


async def aiohttp_server(ready: Callable[[int], None], stopping: asyncio.Event,
                         start: Hook, stop: Hook) -> None:
    """Serve :func:`aiohttp_app` on 127.0.0.1 until ``stopping`` is set; the load comes from
    a client in another process (wrk)."""
    from aiohttp import web

    runner = web.AppRunner(aiohttp_app(), access_log=None)  # type: ignore[arg-type]
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = runner.addresses[0][1]
    start()
    ready(port)
    await stopping.wait()
    stop()
    await runner.cleanup()


def threaded_pingpong(threads: int, tasks: int, steps: int, start: Hook, stop: Hook
                      ) -> tuple[int, int]:
    """``threads`` threads, each running its own loop with :func:`task_pingpong`, all at
    once: the per-step cost with several loops recorded together (they share the GIL, so the
    figure is total time over total steps)."""
    import threading

    barrier = threading.Barrier(threads + 1)

    def worker() -> None:
        async def main() -> None:
            barrier.wait()
            await asyncio.gather(*(asyncio.create_task(pingpong_worker(steps))
                                   for _ in range(tasks)))

        asyncio.run(main())

    pool = [threading.Thread(target=worker, name=f"loop-{i}") for i in range(threads)]
    for thread in pool:
        thread.start()
    start()
    began = perf_counter_ns()
    barrier.wait()
    for thread in pool:
        thread.join()
    elapsed = perf_counter_ns() - began
    stop()
    return threads * tasks * steps, elapsed


async def memory_soak(total_steps: int, tasks: int, steps_per_task: int, samples: int,
                      sample: Callable[[int], None]) -> tuple[int, int]:
    """``total_steps`` task steps with ``tasks`` tasks alive at once, each living for
    ``steps_per_task`` steps (so a task that ends is replaced: with a small
    ``steps_per_task`` this churns through many tasks). ``sample(steps_done)`` is called
    ``samples`` times, evenly spaced in steps."""
    done = 0
    every = max(total_steps // samples, 1)
    next_sample = every

    async def worker() -> None:
        nonlocal done, next_sample
        for _ in range(steps_per_task):
            await asyncio.sleep(0)
            done += 1
            if done >= next_sample:
                next_sample += every
                sample(done)

    began = perf_counter_ns()
    sample(0)
    started = 0
    running: set[asyncio.Task[None]] = set()
    wanted = total_steps // steps_per_task
    while started < wanted or running:
        while len(running) < tasks and started < wanted:
            task = asyncio.create_task(worker())
            running.add(task)
            task.add_done_callback(running.discard)
            started += 1
        await asyncio.sleep(0)
    elapsed = perf_counter_ns() - began
    return done, elapsed
