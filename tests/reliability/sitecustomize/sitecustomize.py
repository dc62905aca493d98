"""Installs looptrace when the interpreter starts: put this directory on PYTHONPATH.

Used to run CPython's own asyncio test suite with looptrace recording every loop of every
test process (``scripts/asyncio-suite.py``). ``LOOPTRACE_*`` variables set the options.
With ``ASYNCIO_SUITE_REPORTS=DIR``, each process writes its report to ``DIR/<pid>.json``
at exit, so the suite's runner can check that every process recorded and nothing failed
inside looptrace.
"""

import atexit
import os

import looptrace

looptrace.install()

_REPORTS = os.environ.get("ASYNCIO_SUITE_REPORTS")


def _save_report() -> None:
    session = looptrace.uninstall()
    if session is not None and _REPORTS:
        session.save(os.path.join(_REPORTS, f"{os.getpid()}.json"))


atexit.register(_save_report)  # runs before looptrace's own exit hook (registered earlier)
