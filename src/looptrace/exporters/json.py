"""The JSON report (schema ``looptrace.report/1``, see ``docs/report.md``)."""

from __future__ import annotations

from looptrace.session import Session


def render(session: Session) -> str:
    return session.to_json() + "\n"
