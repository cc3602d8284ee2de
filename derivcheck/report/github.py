"""GitHub Actions integration: the job summary and workflow-command annotations.

- When ``GITHUB_STEP_SUMMARY`` names a file, ``derivcheck run`` appends a Markdown summary
  to it: the count line, one row per case (verdict, quantities, worst margin) and, for each
  case that needs attention, what went wrong. It is shown on the run's summary page.
- ``--annotations github`` (:func:`workflow_annotations`) prints one ``::error file=...,title=...::message`` line per case
  that fails (and ``::warning`` for a case whose only news is a kink), so the case file is
  marked in the pull request's diff.

Escaping follows GitHub's workflow-command rules: ``%``, CR and LF in every part, and also
``:`` and ``,`` in property values; untrusted names are also made literal Markdown.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from derivcheck.escaping import markdown, one_line
from derivcheck.runner import CaseResult, verdict_counts

SUMMARY_LIMIT = 900_000
"""Bytes appended at most: GitHub refuses a step summary over 1 MiB."""

ICONS = {"agree": "✅", "disagree": "❌", "kink": "⚠️", "error": "💥", "skipped": "⏭️"}


def _data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _property(text: str) -> str:
    return _data(text).replace(":", "%3A").replace(",", "%2C")


def _relative(file: str | None) -> str | None:
    """The case file relative to the working folder (GitHub maps repository paths)."""
    if not file:
        return None
    path = Path(file)
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def _problem(case: CaseResult) -> str:
    """What went wrong in a case, in one paragraph."""
    if case.skipped:
        return case.skipped
    parts = list(case.errors)
    for q in case.quantities:
        if q.verdict in ("disagree", "nonfinite", "error") or (case.verdict == "kink" and q.verdict == "kink"):
            parts.append(f"{q.name}: {q.verdict} - {q.message}")
    return "; ".join(parts[:5]) + (f"; and {len(parts) - 5} more" if len(parts) > 5 else "")


def workflow_annotations(results: Sequence[CaseResult]) -> list[str]:
    """``::error`` lines for failing cases, ``::warning`` for kinks; none for the rest."""
    lines = []
    for case in results:
        if case.ok and case.verdict != "kink":
            continue
        level = "warning" if case.ok else "error"
        props = []
        file = _relative(case.file)
        if file:
            props.append(f"file={_property(file)}")
        props.append(f"title={_property(one_line(f'derivcheck {case.name}: {case.verdict}'))}")
        lines.append(f"::{level} {','.join(props)}::{_data(_problem(case))}")
    return lines


def _margin(case: CaseResult) -> str:
    from derivcheck.report.table import worst_margin

    worst = worst_margin(case)
    return "–" if worst is None else f"{worst[0]:.2g} ({markdown(worst[1])})"


def step_summary(results: Sequence[CaseResult]) -> str:
    """The Markdown appended to ``$GITHUB_STEP_SUMMARY``."""
    counts = verdict_counts(results)
    lines = ["## derivcheck", "", f"**{len(results)} case(s)**: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n), ""]
    lines += ["| case | verdict | quantities | worst margin (error / tolerance) |", "|---|---|---|---|"]
    for case in results:
        lines.append(f"| {markdown(case.name)} | {ICONS.get(case.verdict, '')} {case.verdict} | {sum(1 for q in case.quantities if q.verdict != 'skipped')} | {_margin(case)} |")
    attention = [case for case in results if not case.ok]
    if attention:
        lines += ["", "### Needs attention", ""]
        for case in attention:
            where = f" (`{markdown(_relative(case.file) or '')}`)" if case.file else ""
            lines.append(f"- **{markdown(case.name)}**{where}: {markdown(_problem(case))}")
    text = "\n".join(lines) + "\n\n"
    if len(text.encode()) > SUMMARY_LIMIT:
        text = text.encode()[:SUMMARY_LIMIT].decode(errors="ignore").rsplit("\n", 1)[0] + "\n\n(summary cut at GitHub's size limit; see the full report)\n\n"
    return text


def append_step_summary(results: Sequence[CaseResult]) -> Path | None:
    """Append :func:`step_summary` to ``$GITHUB_STEP_SUMMARY`` if it is set; the file written."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    path = Path(target)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(step_summary(results))
    return path
