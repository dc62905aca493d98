"""The named seams of fault injection (``looptrace._seams``) resolve, so a renamed internal
fails here, at once, instead of quietly turning a fault test into a test of nothing."""

from __future__ import annotations

import pytest

from looptrace import _seams


@pytest.mark.parametrize("name", sorted(_seams.SEAMS))
def test_every_seam_resolves_to_a_function(name: str) -> None:
    """Each seam names a callable that exists now."""
    _, _, current = _seams.resolve(name)
    assert callable(current)


def test_replace_and_restore() -> None:
    """``replace`` puts the replacement in place and its undo puts the original back."""
    owner, attribute, original = _seams.resolve("watchdog-sampling")

    def replacement() -> None:
        raise AssertionError("never called")

    undo = _seams.replace("watchdog-sampling", replacement)
    try:
        assert getattr(owner, attribute) is replacement
    finally:
        undo()
    assert getattr(owner, attribute) is original


def test_an_unknown_or_stale_seam_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown name, and a seam whose attribute went away, raise LookupError naming it."""
    with pytest.raises(LookupError, match="no fault seam named 'nowhere'"):
        _seams.resolve("nowhere")
    monkeypatch.setitem(_seams.SEAMS, "stale", ("looptrace._hooks.watchdog", "gone_function"))
    with pytest.raises(LookupError, match=r"looptrace._hooks.watchdog.gone_function"):
        _seams.resolve("stale")
