"""One patched attribute: apply, revert, and revert only what is still ours."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("looptrace")

_MISSING = object()


class Patch:
    """Replace ``target.name`` with ``replacement``; :meth:`revert` puts the original back.

    If someone else replaced the attribute after us, :meth:`revert` leaves theirs in place
    and warns once: removing their patch would break them, and restoring ours would break
    the original. ``target`` is a module, a class or an instance with a ``__dict__``.
    """

    __slots__ = ("applied", "name", "original", "replacement", "target")

    def __init__(self, target: Any, name: str, replacement: Any) -> None:
        self.target = target
        self.name = name
        self.replacement = replacement
        self.original: Any = _MISSING
        self.applied = False

    def current(self) -> Any:
        """The attribute as the target holds it now, or ``None``."""
        return vars(self.target).get(self.name)

    def apply(self) -> None:
        if self.applied:
            return
        # Own attribute or inherited one: reverting must restore exactly that state.
        self.original = vars(self.target).get(self.name, _MISSING)
        setattr(self.target, self.name, self.replacement)
        self.applied = True

    def revert(self) -> bool:
        """Undo :meth:`apply`; return False when the attribute is no longer ours."""
        if not self.applied:
            return True
        self.applied = False
        if self.current() is not self.replacement:
            logger.warning(
                "looptrace: %s.%s was replaced by someone else after looptrace installed; "
                "leaving it in place", getattr(self.target, "__name__", self.target), self.name,
            )
            return False
        if self.original is _MISSING:
            delattr(self.target, self.name)
        else:
            setattr(self.target, self.name, self.original)
        return True


class PatchSet:
    """Patches applied all-or-nothing and reverted in reverse order."""

    __slots__ = ("_patches",)

    def __init__(self) -> None:
        self._patches: list[Patch] = []

    def apply(self, patch: Patch) -> None:
        patch.apply()
        self._patches.append(patch)

    def revert_all(self) -> None:
        while self._patches:
            self._patches.pop().revert()

    def __len__(self) -> int:
        return len(self._patches)
