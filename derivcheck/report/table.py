"""The terminal summary: one row per case and quantity, then details of what failed."""

from __future__ import annotations

from collections.abc import Sequence

from tabulate import tabulate

from derivcheck.runner import CaseResult, preferred_gradient_norms


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def summary_table(results: Sequence[CaseResult]) -> str:
    """One row per case and quantity: verdict, the largest relative error among exact
    engines and among pairs with finite differences, the odd engine out, engine count."""
    rows = []
    for case in results:
        for q in case.quantities:
            rows.append([case.name, q.name, q.verdict, _fmt(q.max_rel_error_exact), _fmt(q.max_rel_error_approx), q.odd_engine or "", len(q.engines)])
        if not case.quantities:
            rows.append([case.name, "-", case.verdict, "", "", "", 0])
    headers = ["case", "quantity", "verdict", "rel err exact", "rel err FD", "odd engine", "engines"]
    return tabulate(rows, headers=headers, tablefmt="simple")


def worst_margin(case: CaseResult) -> tuple[float, str] | None:
    """The largest error/tolerance over a case's quantities, and where it is."""
    found = [(q.margin, q) for q in case.quantities if q.margin is not None]
    if not found:
        return None
    margin, q = max(found, key=lambda pair: pair[0])
    where = q.name if q.worst is None else f"{q.name}, {q.worst.pair[0]} vs {q.worst.pair[1]}"
    return margin, where


def case_overview(results: Sequence[CaseResult]) -> str:
    """One line per case: verdict, how many quantities (and how many could not be compared
    by the chosen engines), and the worst margin = error/tolerance (1 is the line a check
    fails at) with the quantity and engine pair it sits at."""
    rows = []
    for case in results:
        counted = [q for q in case.quantities if q.verdict != "skipped"]
        skipped = len(case.quantities) - len(counted)
        quantities = f"{len(counted)}" + (f" (+{skipped} skipped)" if skipped else "")
        worst = worst_margin(case)
        rows.append([case.name, case.verdict, quantities, "-" if worst is None else f"{worst[0]:.2g}", "" if worst is None else worst[1]])
    return tabulate(rows, headers=["case", "verdict", "quantities", "worst margin", "at"], tablefmt="simple")


def details(results: Sequence[CaseResult], verbose: bool = False) -> str:
    """Explanations for every quantity that did not simply agree (all of them if `verbose`)."""
    lines: list[str] = []
    for case in results:
        if case.skipped:
            lines.append(f"{case.name}: SKIPPED - {case.skipped}")
        for error in case.errors:
            lines.append(f"{case.name}: ERROR {error}")
        for q in case.quantities:
            if q.verdict == "agree" and not verbose:
                continue
            lines.append(f"{case.name} / {q.name}: {q.verdict.upper()} - {q.message}")
            for engine, reason in q.excluded.items():
                lines.append(f"    {engine}: {reason}")
            for engine, reason in q.skipped.items():
                lines.append(f"    {engine}: skipped ({reason})")
            if verbose or q.verdict == "disagree":
                pair_rows = [[p.a, p.b, "yes" if p.agree else "NO", _fmt(p.max_rel_error), p.failing, p.compared, _fmt(p.rtol)] for p in q.pairs]
                table = tabulate(pair_rows, headers=["engine", "vs", "agree", "max rel err", "failing", "compared", "rtol"], tablefmt="simple")
                lines.extend("    " + line for line in table.splitlines())
        preferred = preferred_gradient_norms(case)
        if preferred and verbose:
            engine, norms = preferred
            legend = "; L_r = residual loss, L_b = boundary loss" if "L_r" in norms else ""
            lines.append(f"{case.name}: gradient norm per parameter tensor ({engine}){legend}")
            params = list(next(iter(norms.values())))
            rows = [[p] + [f"{norms[t].get(p, float('nan')):.3e}" for t in sorted(norms)] for p in params]
            table = tabulate(rows, headers=["parameter"] + sorted(norms), tablefmt="simple")
            lines.extend("    " + line for line in table.splitlines())
        steps = case.meta.get("time_step_gradient_norms")
        if steps and verbose:
            lines.append(f"{case.name}: ||dL/dx_t|| per time step (t = 1 is the first step)")
            engines = list(steps)
            step_rows: list[list[object]] = [[t + 1] + [f"{steps[e][t]:.3e}" for e in engines] for t in range(len(steps[engines[0]]))]
            lines.extend("    " + line for line in tabulate(step_rows, headers=["t"] + engines, tablefmt="simple").splitlines())
        if case.kinks and any(q.verdict == "kink" for q in case.quantities):
            lines.append(f"{case.name}: kinks at " + "; ".join(case.kinks[:5]) + (" ..." if len(case.kinks) > 5 else ""))
    return "\n".join(lines)


def terminal_report(results: Sequence[CaseResult], verbose: bool = False) -> str:
    """What ``derivcheck run`` prints: the one-line-per-case overview, then the quantity
    table and the details of the cases that need attention (anything but agree; kinks are
    listed, not failed). `verbose` prints every case's table and every engine pair."""
    parts = [case_overview(results)]
    shown = list(results) if verbose else [r for r in results if r.verdict != "agree"]
    if shown:
        table = summary_table(shown)
        parts.append(table if verbose else "cases that did not simply agree:\n" + table)
    text = details(shown, verbose=verbose)
    if text:
        parts.append(text)
    return "\n\n".join(parts)
