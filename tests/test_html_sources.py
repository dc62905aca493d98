"""The HTML report shows source lines only from the source that ran (issue 11, item 14).

Each report records a fingerprint (SHA-256) of every file its sites name, taken when the
report is made; the renderer shows a site's lines only from a Python source file that
still has that fingerprint. See ``looptrace._sources`` for the rule.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from looptrace.exporters import html
from looptrace.session import Session

LOOPTRACE = [sys.executable, "-m", "looptrace"]

PROGRAM = """
    import asyncio, time

    async def main():
        await asyncio.sleep(0)
        time.sleep(0.08)  # THE_BLOCKING_LINE

    asyncio.run(main())
"""


def _report(tmp_path: Path, source: str = PROGRAM, name: str = "prog.py") -> Path:
    script = tmp_path / name
    script.write_text(textwrap.dedent(source))
    report = tmp_path / "r.json"
    subprocess.run([*LOOPTRACE, "run", "--quiet", "--threshold-ms", "40", "--json",
                    str(report), str(script)], check=True, timeout=120, cwd=tmp_path)
    return report


def test_the_report_records_the_fingerprint_of_each_site_file(tmp_path: Path) -> None:
    """`sources` maps the site's file to the SHA-256 of the bytes that ran."""
    report = _report(tmp_path)
    data = json.loads(report.read_text())
    site = data["hotspots"][0]["site"]["file"]
    digest = hashlib.sha256((tmp_path / "prog.py").read_bytes()).hexdigest()
    assert data["sources"] == {site: f"sha256:{digest}"}
    page = html.render(Session.load(report))
    assert "THE_BLOCKING_LINE" in page


def test_a_changed_file_shows_no_lines(tmp_path: Path) -> None:
    """Rendered after the code changed: no lines (today's are not the ones that ran)."""
    report = _report(tmp_path)
    script = tmp_path / "prog.py"
    script.write_text(script.read_text().replace("THE_BLOCKING_LINE", "EDITED_LATER"))
    page = html.render(Session.load(report))
    assert "EDITED_LATER" not in page and "THE_BLOCKING_LINE" not in page
    assert "not the source that ran" in page


def test_a_crafted_report_cannot_embed_other_files(tmp_path: Path) -> None:
    """A report naming /etc/passwd (with its true fingerprint), or a Python file without
    one or with a wrong one, embeds nothing of them."""
    report = _report(tmp_path)
    data = json.loads(report.read_text())
    secret = tmp_path / "secret.py"
    secret.write_text("TOKEN = 'do-not-show'\n" * 5)
    targets = {
        "/etc/passwd": "sha256:" + hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest()
        if Path("/etc/passwd").exists() else None,
        str(secret): None,
        str(tmp_path / "secret.py "): None,
    }
    for target, fingerprint in targets.items():
        crafted = json.loads(json.dumps(data))
        crafted["hotspots"][0]["site"]["file"] = target
        crafted["hotspots"][0]["site"]["line"] = 1
        crafted["sources"] = {target: fingerprint} if fingerprint else {
            target: "sha256:" + "0" * 64}
        page = html.render(Session.from_dict(crafted))
        assert "root:" not in page and "do-not-show" not in page


def test_a_block_after_chdir_shows_its_own_file(tmp_path: Path) -> None:
    """Item 3: a program that changes directory, where a file of the same name waits:
    the site stays the file that ran, and the HTML shows its lines, not the other's."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "prog.py").write_text("UNRELATED = 1\n" * 20)
    report = _report(tmp_path, """
        import asyncio, os, time

        async def main():
            os.chdir("elsewhere")
            await asyncio.sleep(0)
            time.sleep(0.08)  # THE_BLOCKING_LINE

        asyncio.run(main())
    """)
    session = Session.load(report)
    site = session.hotspots[0].site
    assert site is not None and site.file == str(tmp_path / "prog.py")
    page = html.render(session)
    assert "THE_BLOCKING_LINE" in page and "UNRELATED" not in page
