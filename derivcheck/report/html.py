"""A self-contained HTML report: inline CSS, plots embedded as data URIs, no network."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from typing import Any

from derivcheck.runner import CaseResult, verdict_counts
from derivcheck.report.markdown import _ordered, summary_rows

CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1b1f24; max-width: 80rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #d0d7de; padding: 0.25rem 0.6rem; text-align: left; }
th { background: #f6f8fa; }
td.num { text-align: right; font-family: ui-monospace, monospace; }
.agree { color: #1a7f37; } .disagree, .nonfinite, .error { color: #cf222e; font-weight: bold; } .kink { color: #9a6700; }
.message { font-family: ui-monospace, monospace; font-size: 0.85rem; background: #f6f8fa; padding: 0.5rem; white-space: pre-wrap; }
img { max-width: 100%; border: 1px solid #d0d7de; margin: 0.5rem 0; }
"""


def _esc(text: Any) -> str:
    return html.escape(str(text))


def render_html(results: Sequence[CaseResult], env: Mapping[str, Any], plots: Mapping[str, bytes] | None = None, missing_plots: str = "", *, owners: Mapping[str, int] | None = None) -> str:
    """The page; `owners` maps each plot title to the index of its case in `results`
    (without it a plot goes with the case whose name its title starts with)."""
    counts = verdict_counts(results)
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8"><title>derivcheck report</title>', f"<style>{CSS}</style></head><body>"]
    out.append("<h1>derivcheck report</h1>")
    out.append(f"<p><strong>{len(results)} case(s)</strong>: " + ", ".join(f'<span class="{v}">{n} {v}</span>' for v, n in counts.items() if n) + "</p>")
    out.append(
        '<h2>Summary</h2><table id="summary"><thead><tr>'
        + "".join(f"<th>{h}</th>" for h in ("case", "quantity", "engines", "verdict", "max rel error", "worst error", "tolerance there"))
        + "</tr></thead><tbody>"
    )
    for row in summary_rows(results):
        cells = [f"<td>{_esc(row[0])}</td>", f"<td>{_esc(row[1])}</td>", f'<td class="num">{row[2]}</td>', f'<td class="{row[3]}">{row[3]}</td>'] + [f'<td class="num">{c}</td>' for c in row[4:]]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    for index, case in enumerate(results):
        out.append(f'<h2 id="{_esc(case.name)}">{_esc(case.name)} — <span class="{case.verdict}">{case.verdict}</span></h2>')
        if case.description:
            out.append(f"<p>{_esc(case.description)}</p>")
        for error in case.errors:
            out.append(f'<p class="error">{_esc(error)}</p>')
        if case.kinks:
            out.append(f"<p>kinks at: {_esc('; '.join(case.kinks[:10]))}</p>")
        for q in _ordered(case.quantities):
            if q.verdict == "agree":
                continue
            out.append(f'<h3>{_esc(q.name)}: <span class="{q.verdict}">{q.verdict}</span></h3><div class="message">{_esc(q.message)}</div>')
            if q.worst:
                out.append(f"<table><tr><th>engine</th><th>value at {_esc(q.worst.label)}</th></tr>")
                out += [f'<tr><td>{_esc(e)}</td><td class="num">{v:.12g}</td></tr>' for e, v in q.worst.values.items()]
                out.append(f"</table><p>error {q.worst.error:.3e} between {_esc(q.worst.pair[0])} and {_esc(q.worst.pair[1])}; tolerance {q.worst.tolerance:.3e}</p>")
        agreeing = [q.name for q in case.quantities if q.verdict == "agree"]
        if agreeing:
            out.append(f"<p>{len(agreeing)} quantities agree: {_esc(', '.join(agreeing))}</p>")
        for title, png in (plots or {}).items():
            if (owners[title] == index) if owners is not None and title in owners else title.startswith(f"{case.name}: "):
                data = base64.b64encode(png).decode("ascii")
                out.append(f'<figure><img alt="{_esc(title)}" src="data:image/png;base64,{data}"><figcaption>{_esc(title)}</figcaption></figure>')
    if not plots and missing_plots:
        out.append(f"<h2>Plots</h2><p>{_esc(missing_plots)}</p>")
    out.append("<h2>Environment</h2><table>")
    out += [f"<tr><th>{_esc(k)}</th><td>{_esc(', '.join(v) if isinstance(v, list) else v)}</td></tr>" for k, v in env.items()]
    out.append("</table></body></html>")
    return "\n".join(out) + "\n"
