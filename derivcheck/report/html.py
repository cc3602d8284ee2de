"""A self-contained HTML report: inline CSS, plots embedded as data URIs, no network.

The page opens with a case overview -- one row per case: verdict, engines, quantities, the
worst margin (error / tolerance at the entry closest to failing: 1 is where a check fails)
and a link to the case's section -- then the margins plot, then one section per case whose
agreeing quantities sit in a collapsed ``<details>`` list. Element ids are valid
``#fragment`` targets (``case-`` and the name's letters, digits, ``-`` and ``_``).
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence
from typing import Any

from derivcheck.runner import CaseResult, verdict_counts
from derivcheck.report.markdown import _ordered

CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1b1f24; max-width: 80rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #d0d7de; padding: 0.25rem 0.6rem; text-align: left; }
th { background: #f6f8fa; }
td.num { text-align: right; font-family: ui-monospace, monospace; }
.agree { color: #1a7f37; } .disagree, .nonfinite, .error { color: #cf222e; font-weight: bold; } .kink { color: #9a6700; } .skipped { color: #57606a; }
.message { font-family: ui-monospace, monospace; font-size: 0.85rem; background: #f6f8fa; padding: 0.5rem; white-space: pre-wrap; }
img { max-width: 100%; border: 1px solid #d0d7de; margin: 0.5rem 0; }
details { margin: 0.5rem 0; } summary { cursor: pointer; }
section { border-top: 1px solid #d0d7de; margin-top: 1.5rem; }
"""


def _esc(text: Any) -> str:
    return html.escape(str(text))


def case_ids(results: Sequence[CaseResult]) -> list[str]:
    """A valid, distinct fragment id per case: ``helmholtz-mms [exact]`` -> ``case-helmholtz-mms-exact``."""
    ids: list[str] = []
    for case in results:
        base = "case-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", case.name).strip("-") or "unnamed")
        name, number = base, 2
        while name in ids:
            name = f"{base}-{number}"
            number += 1
        ids.append(name)
    return ids


def _margin(value: float | None) -> str:
    return "-" if value is None else f"{value:.2g}"


def _img(title: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<figure><img alt="{_esc(title)}" src="data:image/png;base64,{data}"><figcaption>{_esc(title)}</figcaption></figure>'


def render_html(
    results: Sequence[CaseResult],
    env: Mapping[str, Any],
    plots: Mapping[str, bytes] | None = None,
    missing_plots: str = "",
    *,
    owners: Mapping[str, int] | None = None,
    overview_plots: Mapping[str, bytes] | None = None,
) -> str:
    """The page; `owners` maps each plot title to the index of its case in `results`
    (without it a plot goes with the case whose name its title starts with);
    `overview_plots` (the margins plot) go below the overview."""
    from derivcheck.report.table import worst_margin

    counts = verdict_counts(results)
    ids = case_ids(results)
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8"><title>derivcheck report</title>', f"<style>{CSS}</style></head><body>"]
    out.append("<h1>derivcheck report</h1>")
    out.append(f"<p><strong>{len(results)} case(s)</strong>: " + ", ".join(f'<span class="{v}">{n} {v}</span>' for v, n in counts.items() if n) + "</p>")
    out.append(
        '<h2 id="overview">Cases</h2><table id="summary"><thead><tr>' + "".join(f"<th>{h}</th>" for h in ("case", "verdict", "engines", "quantities", "worst margin", "at")) + "</tr></thead><tbody>"
    )
    for case, anchor in zip(results, ids):
        worst = worst_margin(case)
        compared = sum(1 for q in case.quantities if q.verdict != "skipped")
        skipped = len(case.quantities) - compared
        cells = [
            f'<td><a href="#{anchor}">{_esc(case.name)}</a></td>',
            f'<td class="{case.verdict}">{case.verdict}</td>',
            f"<td>{_esc(', '.join(case.engines))}</td>",
            f'<td class="num">{compared}{f" (+{skipped} skipped)" if skipped else ""}</td>',
            f'<td class="num">{_margin(worst[0] if worst else None)}</td>',
            f"<td>{_esc(worst[1]) if worst else ''}</td>",
        ]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    out.append("<p>margin = error / tolerance at the entry closest to failing; a check fails above 1.</p>")
    for title, png in (overview_plots or {}).items():
        out.append(_img(title, png))
    for index, (case, anchor) in enumerate(zip(results, ids)):
        out.append(f'<section id="{anchor}"><h2>{_esc(case.name)} — <span class="{case.verdict}">{case.verdict}</span> <a href="#overview" title="back to the overview">↑</a></h2>')
        if case.description:
            out.append(f"<p>{_esc(case.description)}</p>")
        if case.skipped:
            out.append(f'<p class="skipped">skipped: {_esc(case.skipped)}</p>')
        for error in case.errors:
            out.append(f'<p class="error">{_esc(error)}</p>')
        if case.kinks:
            out.append(f"<p>kinks at: {_esc('; '.join(case.kinks[:10]))}</p>")
        for q in _ordered(case.quantities):
            if q.verdict in ("agree", "skipped"):
                continue
            out.append(f'<h3>{_esc(q.name)}: <span class="{q.verdict}">{q.verdict}</span></h3><div class="message">{_esc(q.message)}</div>')
            if q.worst:
                out.append(f"<table><tr><th>engine</th><th>value at {_esc(q.worst.label)}</th></tr>")
                out += [f'<tr><td>{_esc(e)}</td><td class="num">{v:.12g}</td></tr>' for e, v in q.worst.values.items()]
                out.append(f"</table><p>error {q.worst.error:.3e} between {_esc(q.worst.pair[0])} and {_esc(q.worst.pair[1])}; tolerance {q.worst.tolerance:.3e}</p>")
        agreeing = [q for q in case.quantities if q.verdict == "agree"]
        if agreeing:
            out.append(f"<details><summary>{len(agreeing)} quantit{'y agrees' if len(agreeing) == 1 else 'ies agree'}</summary><table><thead><tr>")
            out.append("".join(f"<th>{h}</th>" for h in ("quantity", "engines", "max rel error", "margin", "closest pair")) + "</tr></thead><tbody>")
            for q in agreeing:
                pair = f"{q.worst.pair[0]} vs {q.worst.pair[1]}" if q.worst else ""
                out.append(
                    f'<tr><td>{_esc(q.name)}</td><td class="num">{len(q.engines)}</td><td class="num">{q.max_rel_error:.1e}</td><td class="num">{_margin(q.margin)}</td><td>{_esc(pair)}</td></tr>'
                )
            out.append("</tbody></table></details>")
        skipped_q = [q for q in case.quantities if q.verdict == "skipped"]
        if skipped_q:
            out.append(f'<details><summary class="skipped">{len(skipped_q)} skipped (fewer than two chosen engines compute them)</summary><ul>')
            out += [f"<li>{_esc(q.name)}: {_esc(q.message)}</li>" for q in skipped_q]
            out.append("</ul></details>")
        for title, png in (plots or {}).items():
            if (owners[title] == index) if owners is not None and title in owners else title.startswith(f"{case.name}: "):
                out.append(_img(title, png))
        out.append("</section>")
    if not plots and missing_plots:
        out.append(f"<h2>Plots</h2><p>{_esc(missing_plots)}</p>")
    out.append('<h2 id="environment">Environment</h2><table>')
    out += [f"<tr><th>{_esc(k)}</th><td>{_esc(', '.join(v) if isinstance(v, list) else v)}</td></tr>" for k, v in env.items()]
    out.append("</table></body></html>")
    return "\n".join(out) + "\n"
