"""Plots for reports (matplotlib, the optional ``plots`` extra: ``pip install 'derivcheck[plots]'``).

- the finite-difference step-size study of each derivative: ``|D(h) - D(h/2)|`` against h on
  log-log axes, with reference slopes ``h^2`` (truncation) and ``1/h^n`` (rounding) and the
  chosen step marked;
- per-parameter gradient norms of the PINN loss terms (the vanishing/exploding view);
- for PDE cases, the residual and the largest difference between engines over the domain
  (the first two variables), as colour maps of the evaluated points.

Every function returns PNG bytes; nothing touches the disk.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from derivcheck.runner import CaseResult, preferred_gradient_norms

MISSING = "Plots need matplotlib: pip install 'derivcheck[plots]' (or pip install matplotlib)."


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width: float = 6.0, height: float = 4.0) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), dpi=90)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def step_study(case: CaseResult) -> bytes | None:
    """Step-size studies of the case's derivatives (None when there are none)."""
    studies = [(q.name, q.studies["finite_diff"]) for q in case.quantities if "finite_diff" in q.studies]
    if not studies:
        return None
    fig, ax = _figure()
    for name, study in studies[:8]:
        h, err = np.array(study["h"]), np.maximum(np.array(study["error"]), 1e-300)
        line = ax.loglog(h, err, marker=".", label=name)[0]
        chosen = study["chosen"]
        ax.axvline(chosen, color=line.get_color(), linestyle=":", linewidth=0.8)
    h_ref = np.array([1e-3, 1e-1])
    ax.loglog(h_ref, 1e-2 * (h_ref / 1e-1) ** 2, "k--", linewidth=0.8, label="slope 2 (truncation)")
    h_ref = np.array([1e-7, 1e-5])
    ax.loglog(h_ref, 1e-9 * (1e-5 / h_ref) ** 2, "k-.", linewidth=0.8, label="slope -2 (rounding, 2nd derivative)")
    ax.set_xlabel("step h")
    ax.set_ylabel("|D(h) - D(h/2)|")
    ax.set_title(f"{case.name}: FD step study (dotted: chosen h)", fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)


def gradient_norms(case: CaseResult) -> bytes | None:
    preferred = preferred_gradient_norms(case)
    if preferred is None:
        return None
    engine, norms = preferred
    terms = sorted(norms)
    params = list(norms[terms[0]])
    fig, ax = _figure()
    width = 0.8 / len(terms)
    for i, term in enumerate(terms):
        ax.bar(np.arange(len(params)) + i * width, [norms[term][p] for p in params], width, label=term)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(params)) + 0.4 - width / 2, params, rotation=45, fontsize=7)
    ax.set_ylabel("gradient 2-norm")
    ax.set_title(f"{case.name}: gradient norm per parameter ({engine})")
    ax.legend()
    return _png(fig)


def residual_maps(case: CaseResult) -> bytes | None:
    """Residual and largest engine difference at the points (first two coordinates)."""
    points = case.arrays.get("points")
    values = case.arrays.get("residual") or {}
    if points is None or points.shape[1] < 2 or len(values) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stack = np.stack(list(values.values()))
    reference = np.median(stack, axis=0)
    spread = np.max(np.abs(stack - reference), axis=0)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=90)
    for ax, data, title in ((axes[0], reference, "residual (median of engines)"), (axes[1], spread, "max |engine - median|")):
        scatter = ax.scatter(points[:, 0], points[:, 1], c=data, cmap="viridis", s=30)
        fig.colorbar(scatter, ax=ax)
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"{case.name} over the domain")
    return _png(fig)


MARGINS_TITLE = "margins: error / tolerance of every quantity"


def margins(results: list[CaseResult] | tuple[CaseResult, ...]) -> bytes | None:
    """Every compared quantity's margin (error / tolerance at its worst entry) on a log
    axis, one column per case, with the 1.0 line where a check fails: the picture of how
    close each check came to failing (None when nothing was compared)."""
    columns = [(case.name, [q.margin for q in case.quantities if q.margin is not None]) for case in results]
    if not any(values for _, values in columns):
        return None
    import matplotlib.pyplot as plt

    fig, ax = _figure(max(6.0, 0.32 * len(columns) + 2), 4.5)
    rng = np.random.default_rng(0)  # a fixed jitter: the same run draws the same picture
    floor = 1e-6
    for i, (_, values) in enumerate(columns):
        if not values:
            continue
        shown = np.maximum(np.asarray(values, dtype=float), floor)
        colours = ["#cf222e" if v > 1 else "#1a7f37" for v in values]
        ax.scatter(i + rng.uniform(-0.18, 0.18, size=len(shown)), shown, s=12, c=colours, alpha=0.8, linewidths=0)
    ax.axhline(1.0, color="#cf222e", linestyle="--", linewidth=1)
    ax.text(len(columns) - 0.5, 1.15, "fails above 1", color="#cf222e", ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels([name for name, _ in columns], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("error / tolerance")
    ax.set_title(f"How close each check came to failing ({sum(len(v) for _, v in columns)} quantities; floor {floor:g})", fontsize=9)
    plt.setp(ax.get_yticklabels(), fontsize=8)
    return _png(fig)


def case_plots(case: CaseResult) -> dict[str, bytes]:
    """All plots of one case by title."""
    out = {}
    for title, make in (("step study", step_study), ("gradient norms", gradient_norms), ("residual map", residual_maps)):
        png = make(case)
        if png is not None:
            out[f"{case.name}: {title}"] = png
    return out
