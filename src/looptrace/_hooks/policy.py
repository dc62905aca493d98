"""The event-loop policy door (Python 3.11-3.15; policies are deprecated in 3.14 and gone in
3.16, which is why this lives alone in this module and nothing else depends on it).

Selector loops are caught whoever creates them, when they start running. A loop made by a
policy the application sets (``uvloop.install()`` for one) may never pass a door looptrace
sees, so the policy in place at install, and every policy set later, gets its
``new_event_loop`` wrapped *on the instance*: ``get_event_loop_policy()`` still returns the
application's own object, of its own class, and uninstall deletes one instance attribute.
"""

from __future__ import annotations

import asyncio
import functools
from asyncio import events
from collections.abc import Callable
from typing import Any

from ._patch import Patch, PatchSet

# 3.14 warns on the public names; pytest-asyncio and uvloop may call the private ones.
_SETTERS = ("set_event_loop_policy", "_set_event_loop_policy")


class PolicyDoor:
    def __init__(self, on_new_loop: Callable[[Any], None],
                 on_fault: Callable[[BaseException], None]) -> None:
        self._on_new_loop = on_new_loop
        self._on_fault = on_fault
        self._patches = PatchSet()
        self._instances: list[Patch] = []

    def open(self) -> None:
        for name in _SETTERS:
            original = getattr(events, name, None)
            if original is None:
                continue
            wrapper = self._wrap_setter(original)
            self._patches.apply(Patch(events, name, wrapper))
            if getattr(asyncio, name, None) is original:
                self._patches.apply(Patch(asyncio, name, wrapper))
        current = getattr(events, "_event_loop_policy", None)
        if current is not None:
            self._instrument(current)

    def close(self) -> None:
        while self._instances:
            self._instances.pop().revert()
        self._patches.revert_all()

    def _wrap_setter(self, original: Callable[[Any], None]) -> Callable[[Any], None]:
        door = self

        @functools.wraps(original)
        def set_event_loop_policy(policy: Any) -> None:
            original(policy)
            if policy is not None:
                try:
                    door._instrument(policy)
                except Exception as exc:  # never raise into the program; counted
                    door._on_fault(exc)

        return set_event_loop_policy

    def _instrument(self, policy: Any) -> None:
        if any(p.target is policy for p in self._instances):
            return
        if not hasattr(policy, "__dict__"):
            return  # a policy without instance attributes cannot be wrapped; leave it be
        original = policy.new_event_loop
        on_new_loop = self._on_new_loop

        @functools.wraps(original)
        def new_event_loop() -> Any:
            loop = original()
            on_new_loop(loop)
            return loop

        patch = Patch(policy, "new_event_loop", new_event_loop)
        patch.apply()
        self._instances.append(patch)
