"""install/uninstall: idempotent, all-or-nothing, restores only what is ours, never raises
into the program."""

from __future__ import annotations

import asyncio
import logging
import time
from asyncio import events

import pytest

import looptrace
from looptrace import _api, _seams
from looptrace._hooks import doors as doors_module
from looptrace._hooks import tracer as tracer_module


async def block_once() -> int:
    await asyncio.sleep(0)
    time.sleep(0.08)
    await asyncio.sleep(0)
    return 42


def test_double_install_is_idempotent_and_warns_on_other_options(
        caplog: pytest.LogCaptureFixture) -> None:
    """A second install() changes nothing; with other options it says so."""
    looptrace.install(threshold_ms=50)
    try:
        patched = events.Handle._run
        looptrace.install(threshold_ms=50)
        assert events.Handle._run is patched
        with caplog.at_level(logging.WARNING, logger="looptrace"):
            looptrace.install(threshold_ms=10)
        assert "already installed" in caplog.text
        assert looptrace.snapshot().threshold_ms == 50
    finally:
        looptrace.uninstall()


def test_uninstall_without_install_returns_none() -> None:
    """uninstall() when nothing is installed is harmless."""
    assert looptrace.uninstall() is None
    assert looptrace.uninstall() is None


def test_snapshot_before_any_install_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """snapshot() with no recording says what to do."""
    monkeypatch.setattr(_api, "_last_session", None)
    with pytest.raises(RuntimeError, match=r"looptrace.install\(\)"):
        looptrace.snapshot()


def test_snapshot_after_uninstall_is_the_final_report() -> None:
    """The final report stays available after uninstall()."""
    looptrace.install(threshold_ms=50)
    asyncio.run(block_once())
    final = looptrace.uninstall()
    assert final is not None
    assert looptrace.snapshot() is final
    assert len(final.blocks) == 1


def test_a_failure_during_install_is_rolled_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """If install fails half-way, nothing stays patched and the error propagates."""

    def fail(self: object) -> None:
        raise RuntimeError("injected failure while opening doors")

    monkeypatch.setattr(doors_module.Doors, "open", fail)
    with pytest.raises(RuntimeError, match="injected failure"):
        looptrace.install()
    assert not looptrace.is_installed()
    # the autouse fixture checks that Handle._run and every door are the originals


def test_a_late_failure_during_install_is_rolled_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure after the doors and probes are in place is rolled back as well."""
    original_start = tracer_module.Watchdog.start

    def fail(self: object) -> None:
        raise OSError("cannot start a thread")

    monkeypatch.setattr(tracer_module.Watchdog, "start", fail)
    with pytest.raises(OSError):
        looptrace.install()
    assert not looptrace.is_installed()
    monkeypatch.setattr(tracer_module.Watchdog, "start", original_start)


def test_a_faulty_hook_is_counted_disabled_and_logged_once(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """An error inside the step hook's slow path never reaches the program: the result is
    unchanged, the fault is counted in the report and logged once, the hook is off."""

    def broken(callback: object) -> object:
        raise KeyError("injected")

    owner, attribute, _ = _seams.resolve("steps-internal")  # task_of, in the long steps
    monkeypatch.setattr(owner, attribute, broken)
    with caplog.at_level(logging.WARNING, logger="looptrace"), \
            looptrace.installed(threshold_ms=50) as tracing:
        assert asyncio.run(block_once()) == 42
        assert asyncio.run(block_once()) == 42
    session = tracing.snapshot()
    (fault,) = session.faults
    assert fault.hook == "steps" and fault.count == 1 and "KeyError" in fault.error
    assert caplog.text.count("the steps hook failed") == 1
    assert session.blocks == ()


def test_uninstall_leaves_a_foreign_patch_in_place(caplog: pytest.LogCaptureFixture) -> None:
    """If someone patched over looptrace, uninstall keeps their patch and warns."""
    original = events.Handle._run
    looptrace.install()
    ours = events.Handle._run

    def theirs(self: events.Handle) -> None:
        ours(self)

    events.Handle._run = theirs  # type: ignore[method-assign]
    try:
        with caplog.at_level(logging.WARNING, logger="looptrace"):
            looptrace.uninstall()
        assert events.Handle._run is theirs
        assert "replaced by someone else" in caplog.text
        # our hook is switched off even where it stays reachable
        assert asyncio.run(block_once()) == 42
    finally:
        events.Handle._run = original  # type: ignore[method-assign]


def test_installed_inside_an_installation_leaves_it_installed() -> None:
    """A nested installed() block records with the outer installation and keeps it."""
    looptrace.install(threshold_ms=50)
    try:
        with looptrace.installed() as tracing:
            asyncio.run(block_once())
        assert looptrace.is_installed()
        assert len(tracing.snapshot().blocks) == 1
    finally:
        looptrace.uninstall()


def test_invalid_options_name_the_option() -> None:
    """Bad options are TypeError/ValueError naming the option, before anything changes."""
    with pytest.raises(ValueError, match="threshold_ms"):
        looptrace.install(threshold_ms=-1)
    with pytest.raises(TypeError, match="threshold_ms"):
        looptrace.install(threshold_ms="fast")
    with pytest.raises(ValueError, match="mode"):
        looptrace.install(mode="everything")
    with pytest.raises(TypeError, match="unknown option 'treshold_ms'"):
        looptrace.install(treshold_ms=5)
    with pytest.raises(TypeError, match="probes"):
        looptrace.install(probes="yes")
    with pytest.raises(ValueError, match="otlp"):
        looptrace.install(otlp="localhost:4318")
    assert not looptrace.is_installed()


def test_environment_sets_options_and_arguments_win(monkeypatch: pytest.MonkeyPatch) -> None:
    """LOOPTRACE_* variables set options; explicit arguments win over them."""
    monkeypatch.setenv("LOOPTRACE_THRESHOLD_MS", "25")
    monkeypatch.setenv("LOOPTRACE_MODE", "full")
    with looptrace.installed() as tracing:
        pass
    assert tracing.snapshot().threshold_ms == 25
    assert tracing.snapshot().mode == "full"
    with looptrace.installed(threshold_ms=60) as tracing:
        pass
    assert tracing.snapshot().threshold_ms == 60


@pytest.mark.parametrize(("variable", "value"), [
    ("LOOPTRACE_THRESHOLD_MS", "soon"),
    ("LOOPTRACE_THRESHOLD_MS", "-4"),
    ("LOOPTRACE_PROBES", "maybe"),
    ("LOOPTRACE_MAX_BLOCKS", "1.5"),
    ("LOOPTRACE_MODE", "turbo"),
])
def test_a_malformed_environment_variable_is_named(
        monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    """A bad LOOPTRACE_* value is a ValueError naming the variable."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=variable):
        looptrace.install()
    assert not looptrace.is_installed()


def test_import_looptrace_imports_no_integration() -> None:
    """import looptrace pulls in neither OpenTelemetry, structlog nor pytest."""
    import subprocess
    import sys

    code = ("import sys, looptrace; looptrace.install(); looptrace.uninstall(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('opentelemetry', 'structlog', 'pytest', '_pytest')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
