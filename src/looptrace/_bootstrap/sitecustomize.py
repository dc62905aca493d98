"""looptrace's bootstrap for the Python processes a traced program starts.

This directory is put first on ``PYTHONPATH`` by a traced process whose ``subprocesses``
option is on (``looptrace run`` by default), so that every interpreter it starts (uvicorn
and multiprocessing workers, ``subprocess.run([sys.executable, ...])``) runs this file at
start-up. It is not part of the ``looptrace`` package: Python imports it as the top-level
``sitecustomize`` module. It first imports the ``sitecustomize`` it hides (a
distribution's, a virtualenv's, OpenTelemetry's auto-instrumentation), then installs
looptrace with the options of ``LOOPTRACE_*``. Whatever goes wrong costs one line on
stderr, never the program; an interpreter that cannot import looptrace (another Python,
another virtualenv) runs as if this file were not there.
"""

import os
import sys


def _chain() -> None:
    """Import the next ``sitecustomize`` on ``sys.path``, the one this file hides."""
    here = os.path.dirname(os.path.abspath(__file__))
    this = sys.modules.pop("sitecustomize", None)
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    try:
        import importlib

        importlib.import_module("sitecustomize")
    except ImportError as exc:
        if exc.name != "sitecustomize":
            sys.stderr.write(f"looptrace: the hidden sitecustomize failed: {exc}\n")
    except Exception as exc:  # the other module's own failure: reported as Python would
        sys.stderr.write(f"looptrace: the hidden sitecustomize failed: "
                         f"{type(exc).__name__}: {exc}\n")
    finally:
        sys.path[:] = saved
        if "sitecustomize" not in sys.modules and this is not None:
            sys.modules["sitecustomize"] = this


def _install() -> None:
    try:
        from looptrace import _subprocesses
    except ImportError:
        return
    _subprocesses.bootstrap()


_chain()
_install()
