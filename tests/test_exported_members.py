"""The public API is pinned: a name added to or removed from ``looptrace`` (or one of its
public modules) fails here until this list and the CHANGELOG say so (as httpx does).

Everything else in the package is private, whatever its spelling: modules whose name starts
with ``_``, and the renderers and sinks behind the documented front ends.
"""

from __future__ import annotations

import importlib

import pytest

import looptrace

PUBLIC = {
    "looptrace": [
        "CodeLocation",
        "ReportError",
        "Session",
        "Tracing",
        "__version__",
        "install",
        "installed",
        "is_installed",
        "loop_factory",
        "snapshot",
        "uninstall",
    ],
    "looptrace.structlog": ["add_loop_context", "add_trace_ids"],
}


def test_all_is_the_pinned_list() -> None:
    """``looptrace.__all__`` is exactly the pinned names, sorted, and every public-looking
    name of the package is in it (submodules aside: ``looptrace.session`` and the others
    are reached as modules)."""
    assert looptrace.__all__ == sorted(PUBLIC["looptrace"])
    names = sorted(name for name, value in vars(looptrace).items()
                   if not name.startswith("_") and not isinstance(value, type(importlib)))
    assert names == sorted(set(PUBLIC["looptrace"]) - {"__version__"})


@pytest.mark.parametrize("module_name", sorted(PUBLIC))
def test_exported_members(module_name: str) -> None:
    """Every public name of each public module is there, and nothing else is exported: a
    module's non-underscore attributes that are not modules, imports or the pinned names
    would be public by accident."""
    module = importlib.import_module(module_name)
    assert sorted(module.__all__) == sorted(PUBLIC[module_name])
    for name in module.__all__:
        assert hasattr(module, name), f"{module_name}.{name} is in __all__ but missing"
    own = {name for name, value in vars(module).items()
           if not name.startswith("_")
           and getattr(value, "__module__", module_name) == module_name
           and not isinstance(value, type(importlib))}
    assert own <= set(PUBLIC[module_name]) | _documented_extras(module_name), (
        f"{module_name} defines public names that are not pinned: "
        f"{sorted(own - set(PUBLIC[module_name]))}")


def _documented_extras(module_name: str) -> set[str]:
    """Public-looking names a module defines on purpose without exporting them."""
    return {"looptrace.structlog": {"EventDict"}}.get(module_name, set())


def test_public_names_have_docstrings() -> None:
    """Every pinned function and class says what it does (STYLE habit 8)."""
    for module_name, names in PUBLIC.items():
        module = importlib.import_module(module_name)
        for name in names:
            value = getattr(module, name)
            if callable(value):
                assert (value.__doc__ or "").strip(), f"{module_name}.{name} has no docstring"
