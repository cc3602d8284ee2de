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
           {"name", "verdict": "agree"|"disagree"|"kink"|"nonfinite"|"error"|"skipped",
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from derivcheck.escaping import json_safe
from derivcheck.outputs import write_atomic
from derivcheck.runner import CaseResult, verdict_counts

SCHEMA_VERSION = 1


def run_to_dict(results: Sequence[CaseResult]) -> dict[str, Any]:
    """The JSON document for a run (see the module docstring)."""
    from derivcheck._version import __version__

    summary: dict[str, int] = {"cases": len(results), **verdict_counts(results)}
    return {
        "schema": "derivcheck-run",
        "schema_version": SCHEMA_VERSION,
        "derivcheck_version": __version__,
        "summary": summary,
        "cases": [r.to_dict() for r in results],
    }


def write_json(path: str | Path, results: Sequence[CaseResult]) -> None:
    """Write the run as JSON to `path` atomically."""
    write_atomic(path, run_to_json(results))


def run_to_json(results: Sequence[CaseResult]) -> str:
    """The run as strict JSON text (no bare NaN or Infinity: see the module docstring)."""
    return json.dumps(json_safe(run_to_dict(results)), indent=2, sort_keys=False, allow_nan=False) + "\n"
