"""GitHub-flavoured Markdown report (fit for a CI job summary or a pull-request comment)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from derivcheck.compare import QuantityResult
from derivcheck.escaping import markdown
from derivcheck.runner import CaseResult, preferred_gradient_norms, verdict_counts

ICONS = {"agree": "✅ agree", "disagree": "❌ disagree", "kink": "⚠️ kink", "nonfinite": "❌ nonfinite", "error": "💥 error", "skipped": "⏭️ skipped"}


def _e(value: float | None) -> str:
    return "–" if value is None else f"{value:.2e}"


def _cell(text: str) -> str:
    """Untrusted text as literal Markdown (see :func:`derivcheck.escaping.markdown`)."""
    return markdown(text)


def _ordered(quantities: Sequence[QuantityResult]) -> list[QuantityResult]:
    """Disagreements first, then the rest in their own order."""
    rank = {"disagree": 0, "nonfinite": 1, "error": 2, "kink": 3, "agree": 4, "skipped": 5}
    return sorted(quantities, key=lambda q: rank.get(q.verdict, 5))


def summary_rows(results: Sequence[CaseResult]) -> list[list[str]]:
    """One row per case and quantity: case, quantity, engines, verdict, max error, tolerance."""
    rows = []
    for case in results:
        for q in case.quantities:
            tol = q.worst.tolerance if q.worst else None
            err = q.worst.error if q.worst else None
            rows.append([case.name, q.name, str(len(q.engines)), q.verdict, _e(q.max_rel_error), _e(err), _e(tol)])
        if not case.quantities:
            rows.append([case.name, "-", "0", case.verdict, "", "", ""])
    return rows


def render_markdown(results: Sequence[CaseResult], env: Mapping[str, Any], plots: Mapping[str, str] | None = None, missing_plots: str = "") -> str:
    """The whole report as Markdown. `plots` maps plot titles to file names (relative)."""
    counts = verdict_counts(results)
    lines = ["# derivcheck report", ""]
    lines.append(f"**{len(results)} case(s)**: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n))
    lines += ["", "## Summary", "", "| case | quantity | engines | verdict | max rel error | worst error | tolerance there |", "|---|---|---|---|---|---|---|"]
    for row in summary_rows(results):
        row[3] = ICONS.get(row[3], row[3])
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    for case in results:
        lines += ["", f"## {_cell(case.name)} — {ICONS.get(case.verdict, case.verdict)}", ""]
        if case.description:
            lines += [_cell(case.description), ""]
        if case.skipped:
            lines.append(f"- **skipped**: {_cell(case.skipped)}")
        for error in case.errors:
            lines.append(f"- **error**: {_cell(error)}")
        if case.kinks:
            lines.append("- kinks at: " + _cell("; ".join(case.kinks[:10])))
        for q in _ordered(case.quantities):
            if q.verdict == "agree":
                continue
            lines += [f"### {_cell(q.name)}: {q.verdict}", "", _cell(q.message), ""]
            if q.worst:
                lines += ["| engine | value at " + _cell(q.worst.label) + " |", "|---|---|"]
                lines += [f"| {_cell(e)} | {v:.12g} |" for e, v in q.worst.values.items()]
                lines += ["", f"error {q.worst.error:.3e} between {_cell(q.worst.pair[0])} and {_cell(q.worst.pair[1])}, tolerance {q.worst.tolerance:.3e}", ""]
            for engine, reason in {**q.excluded, **{k: f"skipped: {v}" for k, v in q.skipped.items()}}.items():
                lines.append(f"- {_cell(engine)}: {_cell(reason)}")
        agreeing = [q for q in case.quantities if q.verdict == "agree"]
        if agreeing:
            lines += ["", f"{len(agreeing)} quantit{'y' if len(agreeing) == 1 else 'ies'} agree: " + _cell(", ".join(q.name for q in agreeing)), ""]
        preferred = preferred_gradient_norms(case)
        if preferred:
            engine, norms = preferred
            terms = sorted(norms)
            lines += [f"Gradient norm per parameter tensor ({engine}):", "", "| parameter | " + " | ".join(terms) + " |", "|---" * (len(terms) + 1) + "|"]
            for param in norms[terms[0]]:
                lines.append(f"| {_cell(param)} | " + " | ".join(f"{norms[t][param]:.3e}" for t in terms) + " |")
            lines.append("")
        steps = case.meta.get("time_step_gradient_norms")
        if steps:
            engines = list(steps)
            lines += ["Gradient norm per time step, ||dL/dx_t||:", "", "| t | " + " | ".join(engines) + " |", "|---" * (len(engines) + 1) + "|"]
            lines += [f"| {t + 1} | " + " | ".join(f"{steps[e][t]:.3e}" for e in engines) + " |" for t in range(len(steps[engines[0]]))]
            lines.append("")
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{_cell(title)}]({name})" for title, name in plots.items()]
    elif missing_plots:
        lines += ["", "## Plots", "", missing_plots]
    lines += ["", "## Environment", "", "| | |", "|---|---|"]
    lines += [f"| {_cell(k)} | {_cell(', '.join(v) if isinstance(v, list) else str(v))} |" for k, v in env.items()]
    return "\n".join(lines) + "\n"
