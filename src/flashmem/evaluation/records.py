"""Resumable per-question records: a JSONL file whose first line is a header naming the settings.

A run appends one JSON line per finished question and flushes it, so a killed run loses at most the
line it was writing (a torn last line is dropped on reopen). Reopening with the same settings hash
resumes; a different hash is refused, so two runs with different settings never mix in one file.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import FlashmemError

HEADER_TYPE = "flashmem-records"


def settings_hash(identity: dict) -> str:
    """Stable 16-hex digest of the settings that define what a record means."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_records(path: str | Path) -> tuple[dict, list[dict]]:
    """(header, records) of a records file; a torn last line (killed mid-write) is ignored."""
    header, records, _ = _scan(Path(path))
    return header, records


class RecordFile:
    """Append-only records for one run. `done` maps record id -> record already written."""

    def __init__(self, path: str | Path, identity: dict, settings: dict | None = None):
        self.path = Path(path)
        self.hash = settings_hash(identity)
        self.done: dict = {}
        if self.path.exists() and self.path.stat().st_size > 0:
            header, records, good_bytes = _scan(self.path)
            if header.get("settings_hash") != self.hash:
                raise FlashmemError(
                    f"{self.path} holds records made with other settings "
                    f"({_describe_difference(header.get('identity', {}), identity)}); "
                    "use another --out or delete that file to start over"
                )
            if good_bytes < self.path.stat().st_size:
                os.truncate(self.path, good_bytes)  # drop the torn line before appending after it
            self.done = {r["id"]: r for r in records}
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            header = {"type": HEADER_TYPE, "settings_hash": self.hash, "identity": identity,
                      "settings": settings or identity}
            self._write_lines([header])

    def append(self, records: list[dict]) -> None:
        self._write_lines(records)
        for record in records:
            self.done[record["id"]] = record

    def _write_lines(self, rows: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def _scan(path: Path) -> tuple[dict, list[dict], int]:
    """Header, complete records, and the byte length of the well-formed prefix."""
    if not path.is_file():
        raise FlashmemError(f"records file not found: {path}")
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    good, parsed = 0, []
    for i, line in enumerate(lines):
        complete = i < len(lines) - 1  # the piece after the last newline was never finished
        if not line.strip():
            good += len(line) + (1 if complete else 0)
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            row = None
        if row is None or not complete:
            if i >= len(lines) - 2:
                break  # the torn tail of a killed run
            raise FlashmemError(f"{path}: line {i + 1} is not valid JSON")
        parsed.append(row)
        good += len(line) + 1
    if not parsed or parsed[0].get("type") != HEADER_TYPE:
        raise FlashmemError(f"{path} is not a flashmem records file (no header line)")
    return parsed[0], parsed[1:], good


def _describe_difference(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if not keys:
        return "settings hash differs"
    shown = "; ".join(f"{k}: {_short(old.get(k))} vs now {_short(new.get(k))}" for k in keys[:4])
    return shown + (f"; and {len(keys) - 4} more" if len(keys) > 4 else "")


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
