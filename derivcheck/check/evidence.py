"""Comparisons of the user's derivatives with references, worded for the user.

:func:`compare` is :func:`derivcheck.compare.compare_quantity` with messages that say what
each engine *is* in a check of someone's own code: "your backward disagrees with finite
differences of your forward", not "two engines cannot tell which is wrong" -- finite
differences of the user's forward are the reference, so the derivative code is what is
blamed. Every disagreement names the worst entry, every engine's value there, the
difference and the bound it exceeded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from derivcheck.compare import QuantityResult, Tolerance, compare_quantity
from derivcheck.values import EngineValue

ENGINE_WORDS = {
    "autograd": "your backward (reverse-mode autograd)",
    "forward_ad": "your forward-mode derivative (jvp)",
    "finite_diff": "finite differences of your forward",
    "symbolic": "SymPy's derivative of expr",
    "backward": "your backward",
    "autograd (create_graph)": "your double backward (create_graph=True)",
    "user": "your operator",
    "torch": "derivcheck's autograd evaluation",
}
REFERENCES = ("finite_diff", "symbolic", "torch")
"""Engines that are references rather than code under test."""


OPERATOR_WORDS = {
    "symbolic": "SymPy's closed form",
    "finite_diff": "finite differences of the field",
    "torch": "derivcheck's own autograd evaluation",
    "user": "your operator",
}
"""How ``check_operator`` names its engines: there the references evaluate the operator."""


def words(engine: str, vocabulary: dict[str, str] | None = None) -> str:
    return (vocabulary or ENGINE_WORDS).get(engine, engine)


def compare(
    name: str,
    values: Mapping[str, EngineValue],
    *,
    tolerance: Tolerance,
    kink_mask: np.ndarray | None = None,
    label: Callable[[tuple[int, ...]], str] = lambda index: str(list(index)),
    scale: float | None = None,
    precision_scale: float = 0.0,
    threshold: float | None = None,
    advice: str = "",
) -> QuantityResult:
    """Compare, then reword a disagreement for a check of the user's own code.

    - `precision_scale`: the size derivatives of the function have (see
      :func:`~derivcheck.compare.compare_quantity`).
    - `threshold`: the largest relative error a reference may carry for agreement to
      count as proof (see :func:`judge`); ``None``: agreement always counts.
    - `advice`: what the user can do to get a verdict where the evidence is too weak.
    """
    q = compare_quantity(
        name,
        values,
        tolerance=tolerance,
        kink_mask=kink_mask if kink_mask is not None and kink_mask.any() else None,
        label=label,
        scale=scale,
        references=REFERENCES,
        precision_scale=precision_scale,
    )
    if q.verdict == "disagree":
        q.message = explain(q)
        tested = next((e for e in ("autograd", "backward") if e in values), None)
        if tested is not None:
            q.message += surrogate_hint(values, tested)
    elif threshold is not None:
        judge(q, threshold, advice)
    return q


AWAY_FROM_KINKS = "check at points away from kinks, jumps and domain edges (or at several random points)"


def judge(q: QuantityResult, threshold: float, advice: str = "") -> None:
    """Turn agreement that proves nothing into ``inconclusive`` (not ok), in place.

    Agreement proves a derivative right only where a wrong one would have shown. It does
    not when

    - nothing was compared with a reference: every entry sits at a kink, a jump or a
      domain edge, within rounding distance (narrower stencils found no smooth side);
    - the reference itself is imprecise: its typical error (the median over the entries,
      relative to the derivative's size) exceeds `threshold` -- a forward that is not
      accurate to its dtype (a float32 part inside a float64 function), finite differences
      in float32 because no float64 copy of the function could run.

    A bound widened by the *tested* code's own rounding noise (a float32 gradient of an
    ill-conditioned function) is a fact of its dtype and stays agreement, with its
    precision stated. `advice` says how to get a verdict.
    """
    if q.verdict not in ("agree", "kink"):
        return
    away = f" To get a verdict: {AWAY_FROM_KINKS}."
    if q.precision is None:
        q.verdict = "inconclusive"
        q.message = "nothing was compared with a reference: every entry sits at a kink, a jump or the edge of the function's domain, within rounding distance of it." + away
    elif q.reference_precision is not None and q.reference_precision > threshold:
        q.verdict = "inconclusive"
        q.message = (
            f"the reference is too imprecise to prove agreement: its typical error is {q.reference_precision:.2g} of the derivative's size, above the {threshold:.0e} "
            f"a wrong derivative must stand out from (this check's widest bound: {q.precision:.2g} relative)."
            f" To get a verdict: {advice or AWAY_FROM_KINKS}."
        )


def surrogate_hint(values: Mapping[str, EngineValue], tested: str) -> str:
    """A deliberate non-derivative, recognised: the `tested` engine (your backward) is a
    constant multiple of the finite differences everywhere (gradient reversal, a gradient
    multiplier), or the finite differences are zero wherever they measure while the
    backward is not (a straight-through estimator). ``""`` when neither."""
    if tested not in values or "finite_diff" not in values:
        return ""
    mine = np.asarray(values[tested].values, dtype=np.float64).ravel()
    fd = values["finite_diff"]
    ref = np.asarray(fd.values, dtype=np.float64).ravel()
    err = np.zeros_like(ref) if fd.error_estimate is None else np.abs(np.asarray(fd.error_estimate, dtype=np.float64)).ravel()
    keep = np.isfinite(mine) & np.isfinite(ref)
    if fd.excluded is not None:
        keep &= ~np.asarray(fd.excluded).ravel()
    mine, ref, err = mine[keep], ref[keep], err[keep]
    if mine.size == 0:
        return ""
    measured = np.abs(ref) > 100 * err + 1e-300
    if not measured.any():
        if np.max(np.abs(mine), initial=0.0) > 0:
            return " -- finite differences find your forward flat (zero slope wherever they can measure it) while your backward passes gradients: a straight-through estimator or another surrogate gradient? Its backward is not the derivative of its forward, which is what derivcheck checks"
        return ""
    ratios = mine[measured] / ref[measured]
    c = float(np.median(ratios))
    consistent = np.all(np.abs(ratios - c) <= 1e-6 * abs(c) + 1e-12) and np.all(np.abs(mine[~measured]) <= abs(c) * 100 * err[~measured] + 1e-300)
    if consistent and abs(c - 1) > 1e-6:
        return f" -- your backward is {c:.6g} times the derivative at every entry: a gradient reversal or gradient multiplier? Its backward is not the derivative of its forward, which is what derivcheck checks"
    return ""


def explain(q: QuantityResult, vocabulary: dict[str, str] | None = None) -> str:
    """A disagreement in the user's terms: who disagrees with what, where, by how much."""

    def words(engine: str) -> str:  # noqa: F811 - the vocabulary of this check
        return (vocabulary or ENGINE_WORDS).get(engine, engine)

    worst = q.worst
    engines = q.engines
    if q.odd_engine:
        others = [e for e in engines if e != q.odd_engine]
        if q.odd_engine in REFERENCES:
            tested = " and ".join(words(e) for e in others)
            head = f"{words(q.odd_engine)} disagree{'s' if q.odd_engine == 'symbolic' else ''} with {tested}, which agree with each other: your derivative code is self-consistent but does not differentiate your forward (a detached or non-torch part of the forward, or a backward and jvp wrong the same way)"
        else:
            head = f"{words(q.odd_engine)} disagrees with " + ", ".join(words(e) for e in others[:-1]) + (" and " if len(others) > 1 else "") + words(others[-1]) + ", which agree with each other"
    elif len(engines) == 2:
        a, b = engines
        tested, reference = (b, a) if a in REFERENCES else (a, b)
        head = f"{words(tested)} disagrees with {words(reference)}"
    else:
        bad = ", ".join(f"{p.a}/{p.b}" for p in q.pairs if not p.agree)
        head = f"the engines disagree with no single odd one out (disagreeing pairs: {bad})"
    if worst is None:
        return head
    shown = ", ".join(f"{e}={v:.10g}" for e, v in worst.values.items())
    return f"{head}; worst at {worst.label}: {shown}; |{worst.pair[0]} - {worst.pair[1]}| = {worst.error:.3g} > bound {worst.tolerance:.3g}"
