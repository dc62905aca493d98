"""The fault policy (``looptrace._faults``): a hook's error is counted, the hook switched
off once, one warning logged; a failure of the policy itself is counted too, never raised."""

from __future__ import annotations

import logging

import pytest

from looptrace._faults import HANDLING, FaultPolicy


def test_a_fault_is_counted_disables_its_hook_once_and_logs_once(
        caplog: pytest.LogCaptureFixture) -> None:
    """Three faults of one hook: one count of 3 (plus one counted by the hook itself), one
    call of its disabler, one warning."""
    policy = FaultPolicy()
    disabled: list[str] = []
    policy.on_fault("steps", lambda: disabled.append("steps"))
    with caplog.at_level(logging.WARNING, logger="looptrace"):
        for _ in range(3):
            policy.fault("steps", ValueError("boom"))
        policy.fault("steps", RuntimeError("counted by the hook"), 4)
    assert disabled == ["steps"]
    ((hook, count, error),) = [(f.hook, f.count, f.error) for f in policy.faults()]
    assert (hook, count, error) == ("steps", 7, "ValueError: boom")
    assert [r.getMessage() for r in caplog.records].count(
        "looptrace: the steps hook failed and is now disabled (the program is not "
        "affected): ValueError: boom") == 1


def test_a_failing_disabler_is_reported_not_raised() -> None:
    """A disabler that raises does not reach the caller; the report shows it under
    ``fault-handling`` beside the hook's own fault."""
    policy = FaultPolicy()

    def broken() -> None:
        raise OSError("cannot switch off")

    policy.on_fault("selector", broken)
    policy.fault("selector", ValueError("boom"))
    faults = {f.hook: (f.count, f.error) for f in policy.faults()}
    assert faults == {"selector": (1, "ValueError: boom"),
                      HANDLING: (1, "OSError: cannot switch off")}
