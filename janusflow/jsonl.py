"""JSON-lines files (one object a line), read with clear errors: the GenEval and LLaVA layouts,
evaluation keys and answers all use them."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import InputError


def read_jsonl(file: str | os.PathLike, what: str = "file") -> list[tuple[int, str, dict]]:
    """(line number, the line as written, object) for every non-empty line; InputError for a missing, non-UTF-8 or bad file."""
    path = Path(os.fspath(file))
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start})") from None
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{number}: not a JSON object ({e.msg})") from None
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{number}: not a JSON object")
        entries.append((number, line.strip(), obj))
    return entries


def write_jsonl(file: str | os.PathLike, objects: list[dict]) -> None:
    path = Path(os.fspath(file))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for obj in objects:
            f.write(json.dumps(obj) + "\n")
