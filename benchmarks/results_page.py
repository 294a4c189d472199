"""Writing one benchmark's section of the results page, keeping the others."""

from __future__ import annotations

from pathlib import Path

RESULTS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def write_section(path: Path, heading: str, section: str) -> None:
    """Replace the section that starts with ``heading`` in ``path``, or append it.

    A section runs from its ``## `` heading to the next ``## `` heading.
    """
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    start = text.find(heading)
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        tail = "" if end == -1 else "\n" + text[end + 1 :]
        text = text[:start] + section + tail
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
