"""Reading JSON Lines files with errors that name the file and the line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def iter_json_lines(path: Path, error_type: type[Exception] = ValueError) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, value)`` for every non-blank line of ``path``.

    Line numbers start at 1.

    Raises:
        error_type: A line is not valid JSON; the message starts with ``path:line:``.
    """
    with Path(path).open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield line_number, json.loads(line)
            except json.JSONDecodeError as error:
                raise error_type(f"{path}:{line_number}: invalid JSON: {error.msg}") from None
