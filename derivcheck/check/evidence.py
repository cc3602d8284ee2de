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

from ..compare import QuantityResult, Tolerance, compare_quantity
from ..values import EngineValue

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
) -> QuantityResult:
    """Compare, then reword a disagreement for a check of the user's own code."""
    q = compare_quantity(name, values, tolerance=tolerance, kink_mask=kink_mask if kink_mask is not None and kink_mask.any() else None, label=label, scale=scale)
    if q.verdict == "disagree":
        q.message = explain(q)
    return q


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
