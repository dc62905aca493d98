"""The layers of the design (docs/how-it-works.md, "Layers") are a test, not a promise.

Every module of ``src/looptrace`` is parsed with :mod:`ast` (nothing is imported), and its
imports of looptrace modules are checked against the layer table below: a module may
import its own layer and the layers under it, never one above. A few rules cut across the
table (hooks and the recorder never import an output; an output never imports the hooks or
the recorder), private names are not reached across layers, and ``import looptrace`` is
checked in a fresh interpreter to pull in neither OpenTelemetry, structlog nor pytest.

An exception is allowed only in ``ALLOWED``, with the reason it is right.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "looptrace"

# Lowest first. A module's layer is the one of its longest matching prefix.
LAYERS: dict[str, int] = {
    # L0 types: plain values and settings every layer shares; stdlib only.
    "looptrace.events": 0,
    "looptrace._clock": 0,
    "looptrace._config": 0,
    "looptrace._version": 0,
    "looptrace._histogram": 0,
    "looptrace._files": 0,
    "looptrace._text": 0,  # names from the program made strings, escaped for terminals
    "looptrace._sources": 0,  # fingerprints of source files (stdlib only)
    # L1 recording: the hooks, the C accelerator, the recorder and its dispatch thread.
    "looptrace._hooks": 1,
    "looptrace._speedups": 1,
    "looptrace._recorder": 1,
    "looptrace._dispatch": 1,
    "looptrace._faults": 1,
    # L2 model: the report and what is computed from recorded values.
    "looptrace.session": 2,
    "looptrace.analysis": 2,
    "looptrace.hotspots": 2,
    "looptrace.pools": 2,  # executor rows and the pool verdict
    "looptrace._combine": 2,
    # L3 outputs: renderers of a Session (exporters/) and live sinks of blocks (sinks/).
    "looptrace.exporters": 3,
    "looptrace.sinks": 3,
    # L4 control: install/uninstall/snapshot; wires the recorder to the sinks.
    "looptrace._api": 4,
    "looptrace._seams": 4,  # names internals of every layer for fault injection (tests)
    # writing the outputs at exit, SIGTERM, child processes (issue 12)
    "looptrace._outputs": 4,
    "looptrace._sigterm": 4,
    "looptrace._subprocesses": 4,
    # L5 front ends.
    "looptrace": 5,  # the package's __init__: the public names
    "looptrace.__main__": 5,
    "looptrace.cli": 5,
    "looptrace._runner": 5,
    "looptrace._exit": 5,
    "looptrace.pytest_plugin": 5,
    "looptrace._pytest_allow": 5,
    "looptrace.structlog": 5,
    "looptrace.instrumentor": 5,
    "looptrace._bootstrap": 5,
}
RECORDING = ("looptrace._hooks", "looptrace._recorder", "looptrace._dispatch",
             "looptrace._speedups")
OUTPUTS = ("looptrace.exporters", "looptrace.sinks")

ALLOWED: dict[tuple[str, str], str] = {
    ("looptrace.cli", "looptrace._hooks.frames"):
        "the runner hides looptrace's own frames from the program's traceback with the "
        "same rule the sampler uses to skip them (one definition of 'looptrace's code')",
    ("looptrace._runner", "looptrace._hooks.frames"):
        "the same as cli -> _hooks.frames, once the runner is its own module",
}
"""(importer, imported) pairs that break a rule on purpose, with the reason."""


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    names: tuple[str, ...]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(encoding="utf-8"), str(p))
            for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    best = max((prefix for prefix in LAYERS
                if module == prefix or module.startswith(prefix + ".")), key=len, default=None)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return LAYERS[best]


def imports_of(module: str, tree: ast.Module, is_package: bool) -> Iterator[Import]:
    """Every import of a looptrace module, resolved to an absolute name. ``from . import
    x`` names the submodule ``x`` when there is one."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "looptrace":
                    yield Import(module, alias.name, node.lineno, ())
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "looptrace":
                continue
            names = tuple(alias.name for alias in node.names)
            submodules = [n for n in names if _is_module(f"{target}.{n}")]
            for name in submodules:
                yield Import(module, f"{target}.{name}", node.lineno, ())
            rest = tuple(n for n in names if n not in submodules)
            if rest or not submodules:
                yield Import(module, target, node.lineno, rest)


def _is_module(name: str) -> bool:
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists() \
        or any(path.parent.glob(f"{path.name}.*.so")) or path.with_suffix(".pyi").exists()


def all_imports() -> list[Import]:
    found = []
    for module, tree in modules().items():
        is_package = (SRC.joinpath(*module.split(".")) / "__init__.py").exists()
        found.extend(imports_of(module, tree, is_package))
    return found


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _violations(rule: str, found: list[tuple[Import, str]]) -> list[str]:
    return [f"{i.importer} (line {i.line}) imports {i.imported}: {why}"
            for i, why in found if (i.importer, i.imported) not in ALLOWED]


def test_every_module_is_in_a_layer() -> None:
    """A new module must say where it belongs before it can import anything."""
    for module in modules():
        layer_of(module)


def test_imports_only_flow_downward() -> None:
    """No module imports a module of a higher layer."""
    found = [(i, f"layer {layer_of(i.importer)} must not import layer {layer_of(i.imported)}")
             for i in all_imports() if layer_of(i.imported) > layer_of(i.importer)]
    assert _violations("downward", found) == []


def test_front_ends_reach_recording_only_through_api() -> None:
    """A front end (L5) asks ``_api`` about the installation; it does not import the hooks
    or the recorder, whose insides change with every new hook."""
    found = [(i, "a front end imports recording directly") for i in all_imports()
             if layer_of(i.importer) == 5 and _within(i.imported, RECORDING)]
    assert _violations("front ends", found) == []


def test_recording_never_imports_an_output_and_outputs_never_import_recording() -> None:
    """Hooks (and the recorder) never import exporters or sinks; an exporter renders a
    Session loaded from a file, so it never imports the hooks or the recorder either."""
    found = []
    for i in all_imports():
        if _within(i.importer, RECORDING) and _within(i.imported, OUTPUTS):
            found.append((i, "recording imports an output"))
        if _within(i.importer, OUTPUTS) and _within(i.imported, RECORDING):
            found.append((i, "an output imports recording"))
    assert _violations("outputs", found) == []


def test_exporters_render_a_session_only() -> None:
    """``exporters/`` holds renderers of a Session: none of them imports a live sink (the
    sinks may share the exporters' span mapping, not the other way round)."""
    found = [(i, "an exporter imports a live sink") for i in all_imports()
             if _within(i.importer, ("looptrace.exporters",))
             and _within(i.imported, ("looptrace.sinks",))]
    assert _violations("exporters", found) == []


def _private_module_names(tree: ast.Module, module: str) -> Iterator[tuple[str, str, int]]:
    """Private names of looptrace modules that ``module`` reads: ``alias._name`` where
    ``alias`` is an imported looptrace module, and ``from looptrace.x import _name``.
    Yields (the module that owns the name, the name, the line)."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            if target.split(".", maxsplit=1)[0] != "looptrace":
                continue
            for alias in node.names:
                if _is_module(f"{target}.{alias.name}"):
                    aliases[alias.asname or alias.name] = f"{target}.{alias.name}"
                elif _is_private(alias.name):
                    yield target, alias.name, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".", maxsplit=1)[0] == "looptrace" and alias.asname:
                    aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in aliases and _is_private(node.attr):
            yield aliases[node.value.id], node.attr, node.lineno


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    is_package = (SRC.joinpath(*module.split(".")) / "__init__.py").exists()
    package = module if is_package else module.rpartition(".")[0]
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _private_attributes() -> dict[str, set[str]]:
    """Private attribute and method names, by the modules whose classes define them."""
    owners: dict[str, set[str]] = {}
    for module, tree in modules().items():
        for node in ast.walk(tree):
            name = None
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                    and isinstance(node.value, ast.Name) and node.value.id == "self":
                name = node.attr
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    names = [item.name] if isinstance(
                        item, ast.FunctionDef | ast.AsyncFunctionDef) else [
                        t.id for t in getattr(item, "targets", [getattr(item, "target", None)])
                        if isinstance(t, ast.Name)]
                    for class_name in names:
                        if _is_private(class_name):
                            owners.setdefault(class_name, set()).add(module)
            if name is not None and _is_private(name):
                owners.setdefault(name, set()).add(module)
    return owners


def test_no_module_reaches_another_layers_private_names() -> None:
    """A private name (``_x``) of a module, or of an object a module's classes build, is
    read only inside that layer. Across layers a module asks through a public name (the
    recorder's loops through ``loop_records()``, the installation through ``_api``'s
    query functions), so the owner can change its insides without breaking a reader."""
    owners = _private_attributes()
    found: list[str] = []
    for module, tree in modules().items():
        for target, name, line in _private_module_names(tree, module):
            if target.split(".")[0] == "looptrace" and layer_of(target) != layer_of(module):
                found.append(f"{module} (line {line}) reads {target}.{name}")
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and _is_private(node.attr)):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            defined_by = owners.get(node.attr, set())
            if defined_by and module not in defined_by \
                    and all(layer_of(d) != layer_of(module) for d in defined_by):
                found.append(f"{module} (line {node.lineno}) reads .{node.attr} "
                             f"(private to {', '.join(sorted(defined_by))})")
    assert found == []


def test_import_looptrace_imports_no_integration() -> None:
    """``import looptrace`` (and a plain install/uninstall) stays cheap: it imports neither
    OpenTelemetry, structlog nor pytest, whatever is installed."""
    code = (
        "import sys, looptrace\n"
        "looptrace.install(); looptrace.uninstall()\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('opentelemetry', 'structlog', 'pytest', '_pytest'))\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("rule", ["downward", "outputs"])
def test_the_checks_catch_an_upward_import(rule: str) -> None:
    """The rules above fail on a violation (checked on a made-up import, so the test
    cannot pass by finding nothing to check)."""
    if rule == "downward":
        bad = Import("looptrace.events", "looptrace._api", 1, ())
        assert layer_of(bad.imported) > layer_of(bad.importer)
    else:
        bad = Import("looptrace._hooks.tracer", "looptrace.exporters.otel", 1, ())
        assert _within(bad.importer, RECORDING) and _within(bad.imported, OUTPUTS)
    assert _violations(rule, [(bad, "made up")]) != []


def test_the_check_catches_a_private_read_across_layers() -> None:
    """The private-name rule finds what structlog.py did before ``_api.loop_now``."""
    tree = ast.parse("from . import _api\nrecord = _api._current.recorder\n"
                     "from looptrace._api import _lock\n")
    found = sorted(_private_module_names(tree, "looptrace.structlog"))
    assert found == [("looptrace._api", "_current", 2), ("looptrace._api", "_lock", 3)]
