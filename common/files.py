"""Writing run outputs whole or not at all; reading JSONL inputs line by line."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator


def write_atomic(path: Path, text: str) -> None:
    """Write a whole file or nothing (a reader never sees half a report)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def jsonl_rows(path: Path, what: str) -> Iterator[tuple[int, Any]]:
    """(line number, decoded row) of each non-blank line; a line that is not JSON is one UserError naming it."""
    from common.cli import UserError

    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}, line {number}: not JSON ({err.msg}); each line must be {what}") from None
