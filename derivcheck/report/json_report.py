"""JSON output of a run.

Schema (version 1)::

    {
      "schema": "derivcheck-run", "schema_version": 1,
      "derivcheck_version": "0.1.0",
      "summary": {"cases": 5, "agree": 4, "disagree": 0, "kink": 1, "error": 0, "skipped": 0},
      "cases": [
        {"name", "file", "description", "verdict": "agree"|"disagree"|"kink"|"error"|"skipped",
         "engines": [...], "errors": [...], "kinks": [...], "meta": {...},
         "skipped": "why" (only on skipped cases: a ``device = "cuda"`` case without CUDA),
         "quantities": [
           {"name", "verdict": "agree"|"disagree"|"kink"|"nonfinite"|"error",
            "engines": [...], "max_rel_error", "odd_engine", "message",
            "worst": {"index", "label", "values": {engine: value}, "pair", "error", "tolerance"},
            "scale", "kinks", "pairs": [...], "skipped", "excluded", "nonfinite", "notes"}]}]
    }

Floats that are NaN or infinite are written as the strings ``"nan"``, ``"inf"``,
``"-inf"`` so the file is strict JSON. No timestamps: the same seed gives the same bytes.
The file is written atomically (a temporary file renamed into place).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..runner import CaseResult, verdict_counts

SCHEMA_VERSION = 1


def run_to_dict(results: Sequence[CaseResult]) -> dict[str, Any]:
    """The JSON document for a run (see the module docstring)."""
    from .. import __version__

    summary: dict[str, int] = {"cases": len(results), **verdict_counts(results)}
    return {
        "schema": "derivcheck-run",
        "schema_version": SCHEMA_VERSION,
        "derivcheck_version": __version__,
        "summary": summary,
        "cases": [r.to_dict() for r in results],
    }


def write_atomic(path: str | Path, content: str | bytes) -> None:
    """Write `content` (text or bytes) to `path` through a temporary file and a rename:
    readers see the old file or the new one, never half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        if isinstance(content, bytes):
            with os.fdopen(fd, "wb") as binary:
                binary.write(content)
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(content)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a report should be readable like any file
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, results: Sequence[CaseResult]) -> None:
    """Write the run as JSON to `path` atomically."""
    write_atomic(path, json.dumps(run_to_dict(results), indent=2, sort_keys=False) + "\n")
