"""Steps behave exactly as without looptrace: results, errors, their reports and tracebacks.

The C hook runs stdlib handles itself (without entering the interpreter for
``Handle._run``); these tests hold it to asyncio's own behaviour, on every hook kind.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable
from typing import Any

import pytest

import looptrace

HOOKS = {"c-hooks": {}, "python-hooks": {"accelerator": False}, "full-mode": {"mode": "full"},
         "full-mode-python": {"mode": "full", "accelerator": False}}


@pytest.fixture(params=sorted(HOOKS))
def hooks(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The install() options of each step hook."""
    return HOOKS[request.param]


def compare(scenario: Callable[[], Any], options: dict[str, Any]) -> tuple[Any, Any]:
    """Run a scenario without looptrace, then under it: return both results."""
    baseline = scenario()
    with looptrace.installed(**options):
        traced = scenario()
    return baseline, traced


def capture_exception_context(schedule: Callable[[asyncio.AbstractEventLoop], Any]
                              ) -> dict[str, Any]:
    """Run a loop whose exception handler records the context it is given."""
    seen: dict[str, Any] = {}

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            seen.update(context)
            exc = context.get("exception")
            seen["frames"] = [(f.name, f.line) for f in traceback.extract_tb(exc.__traceback__)]

        loop.set_exception_handler(handler)
        seen["scheduled"] = schedule(loop)
        await asyncio.sleep(0.01)

    asyncio.run(main())
    return seen


def failing_callback(a: int, b: int) -> None:
    raise ZeroDivisionError(a / b)


def reported(schedule: Callable[[asyncio.AbstractEventLoop], Any]) -> Callable[[], Any]:
    """A scenario: what the exception handler is given, comparable across runs."""

    def scenario() -> Any:
        seen = capture_exception_context(schedule)
        return (seen["message"], type(seen["exception"]), str(seen["exception"]),
                seen["handle"] is seen["scheduled"], seen["frames"])

    return scenario


def test_a_failing_callback_is_reported_exactly_as_asyncio_does(hooks: dict[str, Any]) -> None:
    """Same message, same exception, the very same handle, the same traceback frames."""
    baseline, traced = compare(
        reported(lambda loop: loop.call_soon(failing_callback, 1, 0)), hooks)
    assert traced == baseline
    assert baseline[3] is True
    assert [name for name, _ in baseline[4]] == ["_run", "failing_callback"]


def test_a_failing_timer_callback_is_reported_the_same(hooks: dict[str, Any]) -> None:
    """TimerHandle steps too."""
    baseline, traced = compare(
        reported(lambda loop: loop.call_later(0, failing_callback, 2, 0)), hooks)
    assert traced == baseline


def test_the_exception_handler_runs_in_the_handles_context(hooks: dict[str, Any]) -> None:
    """The exception handler sees the context variables of the failing callback's context
    (Python 3.12+ runs it there), as without looptrace."""
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="outside")

    def scenario() -> Any:
        seen: list[str] = []

        async def main() -> None:
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(lambda loop, context: seen.append(var.get()))
            context = contextvars.copy_context()
            context.run(var.set, "callback's")
            loop.call_soon(failing_callback, 1, 0, context=context)
            await asyncio.sleep(0.01)

        asyncio.run(main())
        return seen

    baseline, traced = compare(scenario, hooks)
    assert traced == baseline


def test_the_default_handler_logs_the_same_traceback(
        hooks: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    """asyncio's own logging of a failing callback prints the same traceback lines."""

    def scenario() -> Any:
        caplog.clear()

        async def main() -> None:
            asyncio.get_running_loop().call_soon(failing_callback, 3, 0)
            await asyncio.sleep(0.01)

        with caplog.at_level(logging.ERROR, logger="asyncio"):
            asyncio.run(main())
        (record,) = [r for r in caplog.records if r.name == "asyncio"]
        assert record.exc_info is not None
        return record.getMessage(), "".join(traceback.format_exception(*record.exc_info))

    baseline, traced = compare(scenario, hooks)
    assert traced == baseline
    assert "looptrace" not in traced[1]


def test_results_arguments_and_contexts_are_passed_through(hooks: dict[str, Any]) -> None:
    """Many arguments, keyword-bound partials, context variables: as without looptrace."""
    import contextvars
    import functools

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    got: list[Any] = []

    def record(*args: Any, **kwargs: Any) -> None:
        got.append((args, kwargs, var.get()))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        context.run(var.set, "in-context")
        loop.call_soon(record, *range(12), context=context)
        loop.call_soon(functools.partial(record, 1, key="value"))
        loop.call_soon(record)
        await asyncio.sleep(0.01)

    with looptrace.installed(**hooks):
        asyncio.run(main())
    assert got == [(tuple(range(12)), {}, "in-context"), ((1,), {"key": "value"}, "unset"),
                   ((), {}, "unset")]


def test_a_callback_that_cancels_its_own_handle_then_fails(hooks: dict[str, Any]) -> None:
    """Cancelling the running handle from inside its callback, then raising: reported as
    asyncio reports it."""

    def scenario() -> Any:
        handles: list[asyncio.Handle] = []
        seen: list[Any] = []

        def cancel_self() -> None:
            handles[0].cancel()
            seen.append("ran")
            raise ValueError("after cancel")

        async def main() -> None:
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(
                lambda loop, context: seen.append((context["message"],
                                                   repr(context["exception"]))))
            handles.append(loop.call_soon(cancel_self))
            await asyncio.sleep(0.01)

        asyncio.run(main())
        return seen

    baseline, traced = compare(scenario, hooks)
    assert traced == baseline
    assert len(baseline) == 2


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
def test_system_exit_and_keyboard_interrupt_escape_the_loop(
        hooks: dict[str, Any], exc_type: type[BaseException]) -> None:
    """As in asyncio, these two are not reported: they stop the loop and propagate."""

    def stop() -> None:
        raise exc_type(5)

    async def main() -> None:
        asyncio.get_running_loop().call_soon(stop)
        await asyncio.sleep(1)

    with looptrace.installed(**hooks), pytest.raises(exc_type):
        asyncio.run(main())


def test_task_errors_and_cancellation_are_unchanged(hooks: dict[str, Any]) -> None:
    """Tasks raise, get cancelled and return values exactly as without looptrace."""

    async def fails() -> None:
        await asyncio.sleep(0)
        raise LookupError("missing")

    async def sleeps() -> None:
        await asyncio.sleep(10)

    async def main() -> list[Any]:
        task = asyncio.create_task(sleeps())
        await asyncio.sleep(0)
        task.cancel()
        return await asyncio.gather(fails(), task, asyncio.sleep(0, "ok"),
                                    return_exceptions=True)

    with looptrace.installed(**hooks):
        first, second, third = asyncio.run(main())
    assert isinstance(first, LookupError) and str(first) == "missing"
    assert isinstance(second, asyncio.CancelledError)
    assert third == "ok"
