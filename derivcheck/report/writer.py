"""``derivcheck report``: write report.md, index.html, report.json and plots/ at once.

Everything is rendered in memory first; only then is each file written through a
temporary file and an atomic rename. An interrupted run therefore leaves every file
either as it was or complete -- never half written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from derivcheck.runner import CaseResult
from derivcheck.report import plots as plotting
from derivcheck.report.environment import environment
from derivcheck.report.html import render_html
from derivcheck.escaping import json_safe
from derivcheck.outputs import write_atomic
from derivcheck.report.json_report import run_to_dict
from derivcheck.report.markdown import render_markdown


def _slug(title: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", title).strip("-.").lower()[:120] + ".png"


def _plot_names(titles: list[str]) -> dict[str, str]:
    """A file name per plot title, distinct even where titles differ only in case or in
    characters a file name cannot hold (cases ``Net`` and ``net``)."""
    names: dict[str, str] = {}
    used: set[str] = set()
    for title in titles:
        name = _slug(title)
        stem, number = name[: -len(".png")], 2
        while name in used:
            name = f"{stem}-{number}.png"
            number += 1
        used.add(name)
        names[title] = name
    return names


def render_report(results: Sequence[CaseResult], *, with_plots: bool = True) -> dict[str, str | bytes]:
    """All files of the report by relative path, rendered in memory."""
    env = environment(results)
    pngs: dict[str, bytes] = {}
    owners: dict[str, int] = {}  # plot title -> index of its case in `results`
    missing = ""
    overview: bytes | None = None
    if with_plots:
        if plotting.available():
            for index, case in enumerate(results):
                for title, png in plotting.case_plots(case).items():
                    shown, number = title, 2
                    while shown in pngs:  # two cases of the same name: keep both plots
                        shown = f"{title} ({number})"
                        number += 1
                    pngs[shown] = png
                    owners[shown] = index
            overview = plotting.margins(list(results))
        else:
            missing = plotting.MISSING
    names = _plot_names(([plotting.MARGINS_TITLE] if overview is not None else []) + list(pngs))
    files: dict[str, str | bytes] = {f"plots/{names[title]}": png for title, png in pngs.items()}
    if overview is not None:
        files[f"plots/{names[plotting.MARGINS_TITLE]}"] = overview
    document = run_to_dict(results)
    document["environment"] = env
    files["report.json"] = json.dumps(json_safe(document), indent=2, allow_nan=False) + "\n"
    files["report.md"] = render_markdown(results, env, {title: f"plots/{names[title]}" for title in pngs}, missing)
    files["index.html"] = render_html(results, env, pngs, missing, owners=owners, overview_plots={plotting.MARGINS_TITLE: overview} if overview is not None else None)
    return files


def write_report(results: Sequence[CaseResult], out_dir: str | Path, *, with_plots: bool = True) -> list[Path]:
    """Render, then write every file atomically; returns the paths written."""
    files = render_report(results, with_plots=with_plots)
    root = Path(out_dir)
    written = []
    for relative, content in files.items():
        path = root / relative
        write_atomic(path, content)
        written.append(path)
    return written
