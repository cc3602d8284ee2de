"""Compare engines' values of one quantity: tolerances, agreement, the odd engine out.

The tolerance model, for engines ``a`` and ``b`` at entry ``i``::

    tol_i = rtol * (max(|a_i|, |b_i|) + scale) + safety * (err_a_i + err_b_i)

- ``rtol`` is ``exact_factor * eps`` of the *less precise* of the two engines' dtypes
  (``4500 * eps``: about 1e-12 for float64, 5e-4 for float32), or a case's override;
- ``scale`` is the magnitude (max-norm) of the quantity or of its group (all parameter
  gradients together), so entries far smaller than the rest are judged on an absolute
  floor instead of demanding relative accuracy that rounding cannot give;
- ``err_*`` is the engine's own per-entry error estimate (finite differences report their
  estimated truncation + rounding error; exact engines report none), times ``safety``.

The relative error reported for a pair is ``max_i |a_i - b_i| / scale``; a quantity reports
the maximum over all pairs, and separately over pairs of exact engines and over pairs
involving an approximate engine (one that reports an error estimate).

Entries at a non-differentiable point (``kink_mask``) are not compared; entries an engine
excludes itself (a finite-difference step across a kink) are not compared for that engine.
Verdicts: ``nonfinite`` (NaN/Inf in some engine), ``disagree``, ``kink`` (agreement
everywhere it could be checked, but some entries sit at a kink), ``agree``, ``skipped``
(fewer than two of the chosen engines can compute the quantity, each saying why: nothing to
compare, nothing wrong) and ``error`` (fewer than two engines produced it, and not because
they cannot: an engine crashed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from derivcheck.values import EngineValue

VERDICTS = ("agree", "disagree", "kink", "nonfinite", "error", "skipped", "inconclusive")
"""``inconclusive`` comes from checks of the user's own code only (see
:func:`derivcheck.check.evidence.judge`): agreement with a reference too weak to prove it."""

_EPS = {"float64": float(np.finfo(np.float64).eps), "float32": float(np.finfo(np.float32).eps), "float16": float(np.finfo(np.float16).eps), "bfloat16": 2.0**-7}
_TINY = 1e-300


@dataclass(frozen=True)
class Tolerance:
    """Knobs of the tolerance model (see the module docstring).

    - `rtol`: fixed relative tolerance for every pair; ``None`` (default) derives it from
      the dtypes as ``exact_factor * eps``.
    - `exact_factor`: multiplier of machine epsilon (default 4500: ~1e-12 in float64).
    - `fd_safety`: multiplier of approximate engines' own error estimates (default 10).
    """

    rtol: float | None = None
    exact_factor: float = 4500.0
    fd_safety: float = 10.0
    exact_factors: tuple[tuple[str, float], ...] = ()
    """Per-dtype overrides of `exact_factor` (by the less precise dtype of a pair), e.g.
    ``(("float32", 256.0),)``: a column that measures its own rounding noise can be held
    tighter than the references that do not."""

    def rtol_for(self, dtype_a: str, dtype_b: str) -> float:
        if self.rtol is not None:
            return self.rtol
        coarse = dtype_a if _EPS[dtype_a] >= _EPS[dtype_b] else dtype_b
        factor = dict(self.exact_factors).get(coarse, self.exact_factor)
        return factor * _EPS[coarse]


@dataclass
class PairResult:
    """Agreement of two engines on one quantity."""

    a: str
    b: str
    agree: bool
    max_abs_error: float
    max_rel_error: float
    compared: int
    rtol: float
    failing: int = 0
    approximate: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "agree": self.agree,
            "max_abs_error": _num(self.max_abs_error),
            "max_rel_error": _num(self.max_rel_error),
            "compared": self.compared,
            "failing": self.failing,
            "rtol": self.rtol,
            "approximate": self.approximate,
        }


@dataclass
class Worst:
    """The entry furthest outside (or, when all agree, closest to) its tolerance."""

    index: tuple[int, ...]
    label: str
    values: dict[str, float]
    pair: tuple[str, str]
    error: float
    tolerance: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": list(self.index),
            "label": self.label,
            "values": {k: _num(v) for k, v in self.values.items()},
            "pair": list(self.pair),
            "error": _num(self.error),
            "tolerance": _num(self.tolerance),
        }


@dataclass
class QuantityResult:
    """The verdict on one quantity, with everything needed to explain it."""

    name: str
    verdict: str
    engines: list[str]
    pairs: list[PairResult] = field(default_factory=list)
    odd_engine: str | None = None
    max_rel_error: float = 0.0
    max_rel_error_exact: float | None = None
    max_rel_error_approx: float | None = None
    worst: Worst | None = None
    scale: float = 0.0
    kinks: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    nonfinite: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    studies: dict[str, dict] = field(default_factory=dict)
    message: str = ""
    precision: float | None = None
    """With `references` given to :func:`compare_quantity`: the relative precision to
    which the engines under test were shown to agree with a reference -- the largest
    bound over the compared entries, divided by the quantity's size (its `scale`, or the
    `precision_scale` given, whichever is larger), for each engine under test against its
    best reference. ``None`` when nothing was compared against a reference."""
    reference_precision: float | None = None
    """The same for the reference's own error estimate alone, typical over the entries
    (the median): how sharp the measuring stick was."""
    widest_bound: float | None = None
    """The absolute bound behind `precision` (its widest entry)."""
    limited_by: str = ""
    """What sets `precision` at its widest entry: ``"reference"`` (the reference's error
    estimate), ``"tested"`` (the tested engine's rounding noise) or ``"dtype"`` (the
    dtype's rtol)."""

    @property
    def ok(self) -> bool:
        return self.verdict in ("agree", "kink", "skipped")

    @property
    def margin(self) -> float | None:
        """error / tolerance at the worst entry: below 1 agrees, the closer to 1 the nearer
        the check came to failing; ``None`` when nothing was compared."""
        if self.worst is None or not self.worst.tolerance > 0 or not np.isfinite(self.worst.error):
            return None
        return float(self.worst.error / self.worst.tolerance)

    def agreement_matrix(self) -> dict[str, dict[str, bool]]:
        """``matrix[a][b]`` is whether engines a and b agree."""
        matrix: dict[str, dict[str, bool]] = {e: {e: True} for e in self.engines}
        for pair in self.pairs:
            matrix[pair.a][pair.b] = matrix[pair.b][pair.a] = pair.agree
        return matrix

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "verdict": self.verdict,
            "engines": list(self.engines),
            "max_rel_error": _num(self.max_rel_error),
            "max_rel_error_exact": None if self.max_rel_error_exact is None else _num(self.max_rel_error_exact),
            "max_rel_error_approx": None if self.max_rel_error_approx is None else _num(self.max_rel_error_approx),
            "odd_engine": self.odd_engine,
            "message": self.message,
            "worst": self.worst.to_dict() if self.worst else None,
            "scale": _num(self.scale),
            "kinks": self.kinks,
            "pairs": [p.to_dict() for p in self.pairs],
            "skipped": dict(self.skipped),
            "excluded": dict(self.excluded),
            "nonfinite": list(self.nonfinite),
            "notes": dict(self.notes),
            "studies": {e: dict(v) for e, v in self.studies.items()},
        } | (
            {}
            if self.precision is None
            else {"precision": _num(self.precision), "reference_precision": _num(self.reference_precision or 0.0), "widest_bound": _num(self.widest_bound or 0.0), "limited_by": self.limited_by}
        )


def _num(value: float) -> float | str:
    """JSON-safe float: NaN and infinities become strings."""
    value = float(value)
    if np.isnan(value):
        return "nan"
    if np.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _first_nonfinite(values: np.ndarray, label: Callable[[tuple[int, ...]], str]) -> str | None:
    bad = ~np.isfinite(values)
    if not bad.any():
        return None
    index = tuple(int(i) for i in np.argwhere(bad)[0]) if values.ndim else ()
    kind = "NaN" if np.isnan(values[index]) else "Inf"
    return f"{kind} at {label(index)} ({int(bad.sum())} non-finite entr{'y' if bad.sum() == 1 else 'ies'})"


def compare_quantity(
    name: str,
    values: Mapping[str, EngineValue],
    *,
    tolerance: Tolerance = Tolerance(),
    scale: float | None = None,
    kink_mask: np.ndarray | None = None,
    label: Callable[[tuple[int, ...]], str] = lambda index: str(list(index)),
    skipped: Mapping[str, str] | None = None,
    references: Sequence[str] | None = None,
    precision_scale: float = 0.0,
) -> QuantityResult:
    """Compare every pair of engines on one quantity and give a verdict.

    **Arguments:**

    - `values`: each engine's :class:`~derivcheck.values.EngineValue`, all the same shape.
    - `tolerance`: the :class:`Tolerance` model.
    - `scale`: magnitude used for the absolute floor and the relative error; default: the
      largest finite magnitude among the engines' values.
    - `kink_mask`: boolean array, True where the derivative is undefined (not compared).
    - `label`: names an index for messages (e.g. ``"0.weight[3, 1]"``).
    - `skipped`: engines that did not compute the quantity, with their reasons.
    - `references`: engines that are references (finite differences, SymPy) rather than
      code under test; given, the result states its `precision` (see
      :class:`QuantityResult`).
    - `precision_scale`: the size derivatives of this function have (e.g. its outputs'
      size over its inputs'), a floor under `scale` for `precision`: a derivative that is
      zero up to rounding has a scale of rounding noise, against which any bound is wide.

    **Returns:** a :class:`QuantityResult`.
    """
    engines = list(values)
    result = QuantityResult(name=name, verdict="agree", engines=engines, skipped=dict(skipped or {}))
    result.notes = {e: v.note for e, v in values.items() if v.note}
    result.studies = {e: v.study for e, v in values.items() if v.study}
    if len(engines) < 2:
        if result.skipped:
            # the chosen engines cannot all compute it (a subset by --engines): a fact, not a failure
            result.verdict = "skipped"
            only = f"only {engines[0]} computes" if engines else "none of the chosen engines computes"
            result.message = f"{only} this quantity ({'; '.join(f'{e}: {r}' for e, r in result.skipped.items())}), so there is nothing to compare it with"
        else:
            result.verdict = "error"
            result.message = "fewer than two engines computed this quantity, so nothing was compared"
        return result
    shape = np.shape(values[engines[0]].values)
    for engine, value in values.items():
        if np.shape(value.values) != shape:
            raise ValueError(f"{name}: engine {engine} returned shape {np.shape(value.values)}, expected {shape}")
    arrays = {e: np.asarray(v.values, dtype=np.float64) for e, v in values.items()}
    finite = {e: np.isfinite(a) for e, a in arrays.items()}
    compare_mask = np.ones(shape, dtype=bool)
    if kink_mask is not None:
        compare_mask &= ~np.broadcast_to(kink_mask, shape)
        result.kinks = int(np.broadcast_to(kink_mask, shape).sum())
    for engine, array in arrays.items():  # entries that are not compared cannot be non-finite failures
        problem = _first_nonfinite(np.where(compare_mask, array, 0.0), label)
        if problem:
            result.nonfinite.append(f"{engine}: {problem}")
    usable = {}
    for engine, value in values.items():
        mask = compare_mask & finite[engine]
        if value.excluded is not None and value.excluded.any():
            count = int((value.excluded & compare_mask).sum())
            if count:
                result.excluded[engine] = f"{count} entr{'y' if count == 1 else 'ies'} not compared: {value.excluded_reason}"
            mask = mask & ~value.excluded
        usable[engine] = mask

    if scale is None:
        magnitudes = [np.abs(arrays[e][usable[e]]).max() for e in engines if usable[e].any()]
        scale = float(max(magnitudes)) if magnitudes else 0.0
    result.scale = scale

    best_ratio = -np.inf
    bounds: dict[tuple[str, str], _PairBounds] = {}
    for a, b in combinations(engines, 2):
        va, vb = values[a], values[b]
        valid = usable[a] & usable[b]
        rtol = tolerance.rtol_for(va.dtype, vb.dtype)
        with np.errstate(invalid="ignore", over="ignore"):  # only valid (finite, compared) entries count
            diff = np.where(valid, np.abs(arrays[a] - arrays[b]), 0.0)
            tol = rtol * (np.maximum(np.abs(arrays[a]), np.abs(arrays[b])) + scale) + _TINY
        for v in (va, vb):
            if v.error_estimate is not None:
                tol = tol + tolerance.fd_safety * np.abs(v.error_estimate)
        diff_valid = np.where(valid, diff, 0.0)
        failing = valid & (diff > tol)
        if valid.any():
            bounds[(a, b)] = _pair_bounds(tol, valid, va, vb, rtol, np.maximum(np.abs(arrays[a]), np.abs(arrays[b])) + scale, tolerance.fd_safety)
        max_abs = float(diff_valid.max()) if valid.any() else 0.0
        approximate = va.error_estimate is not None or vb.error_estimate is not None
        pair = PairResult(a, b, not failing.any(), max_abs, max_abs / max(scale, _TINY), int(valid.sum()), rtol, int(failing.sum()), approximate)
        result.pairs.append(pair)
        if valid.any():
            ratio = np.where(valid, diff / tol, -np.inf)
            flat = int(np.argmax(ratio))
            # A disagreeing pair always outranks an agreeing one when choosing the worst entry.
            score = float(ratio.flat[flat]) + (1e300 if failing.any() else 0.0)
            if score > best_ratio:
                best_ratio = score
                index = tuple(int(i) for i in np.unravel_index(flat, shape)) if shape else ()
                result.worst = Worst(
                    index=index,
                    label=label(index),
                    values={e: float(arrays[e][index]) for e in engines},
                    pair=(a, b),
                    error=float(diff[index]),
                    tolerance=float(tol[index]),
                )
    result.max_rel_error = max((p.max_rel_error for p in result.pairs), default=0.0)
    exact = [p.max_rel_error for p in result.pairs if not p.approximate]
    approx = [p.max_rel_error for p in result.pairs if p.approximate]
    result.max_rel_error_exact = max(exact) if exact else None
    result.max_rel_error_approx = max(approx) if approx else None
    result.odd_engine = _odd_engine(engines, result.pairs)
    compared_any = any(p.compared for p in result.pairs)
    if references is not None:
        size = max(scale, precision_scale)
        result.precision, result.reference_precision, result.limited_by = _precision(engines, references, bounds, size)
        if result.precision is not None:
            result.widest_bound = result.precision * size

    if result.nonfinite:
        result.verdict = "nonfinite"
        result.message = "; ".join(result.nonfinite)
    elif any(not p.agree for p in result.pairs):
        result.verdict = "disagree"
        result.message = _disagreement_message(result)
    elif result.kinks or not compared_any:
        result.verdict = "kink"
        result.message = (
            f"{result.kinks} entr{'y sits' if result.kinks == 1 else 'ies sit'} at a non-differentiable point (not compared)"
            if result.kinks
            else "; ".join(result.excluded.values()) or "no entry could be compared"
        )
    else:
        result.message = "all engines agree"
    return result


@dataclass
class _PairBounds:
    """A pair's tolerance at each compared entry, and its parts: the dtype's rtol term and
    each engine's (safety-scaled) error estimate (keys ``"dtype"``, ``"a"``, ``"b"``)."""

    bound: np.ndarray
    parts: dict[str, np.ndarray]


def _pair_bounds(tol: np.ndarray, valid: np.ndarray, va: EngineValue, vb: EngineValue, rtol: float, size: np.ndarray, safety: float) -> _PairBounds:
    parts = {"dtype": (rtol * size)[valid]}
    for key, v in (("a", va), ("b", vb)):
        error = np.zeros(tol.shape) if v.error_estimate is None else np.abs(np.broadcast_to(np.asarray(v.error_estimate, dtype=np.float64), tol.shape))
        parts[key] = safety * error[valid]
    return _PairBounds(tol[valid], parts)


def _precision(engines: list[str], references: Sequence[str], bounds: dict[tuple[str, str], _PairBounds], scale: float) -> tuple[float | None, float | None, str]:
    """``(precision, reference precision, limited by)`` (see :class:`QuantityResult`): for
    each engine under test, the reference it agrees with most tightly (the smallest
    median bound); of those, the widest."""
    worst: tuple[float, float, str] | None = None
    for tested in (e for e in engines if e not in references):
        best: tuple[float, float, float, str] | None = None
        for (a, b), pair in bounds.items():
            if tested not in (a, b) or (b if a == tested else a) not in references:
                continue
            mine, theirs = ("a", "b") if a == tested else ("b", "a")
            i = int(np.argmax(pair.bound))
            at = {"dtype": pair.parts["dtype"][i], "tested": pair.parts[mine][i], "reference": pair.parts[theirs][i]}
            candidate = (float(np.median(pair.bound)), float(pair.bound[i]), float(np.median(pair.parts[theirs])), max(at, key=lambda k: at[k]))
            if best is None or candidate[0] < best[0]:
                best = candidate
        if best is not None and (worst is None or best[1] > worst[0]):
            worst = (best[1], best[2], best[3])
    if worst is None:
        return None, None, ""
    if scale > 0:
        return worst[0] / scale, worst[1] / scale, worst[2]
    # every compared entry zero in every engine, and no scale to relate to: shown zero
    return 0.0, 0.0, worst[2]


def _odd_engine(engines: list[str], pairs: list[PairResult]) -> str | None:
    """The single engine that disagrees with every other while the rest agree, if any."""
    if len(engines) < 3 or all(p.agree for p in pairs):
        return None
    candidates = []
    for engine in engines:
        with_it = [p for p in pairs if engine in (p.a, p.b)]
        without = [p for p in pairs if engine not in (p.a, p.b)]
        if all(not p.agree for p in with_it) and all(p.agree for p in without):
            candidates.append(engine)
    return candidates[0] if len(candidates) == 1 else None


def _disagreement_message(result: QuantityResult) -> str:
    worst = result.worst
    where = f" worst at {worst.label}" if worst else ""
    if result.odd_engine:
        others = ", ".join(e for e in result.engines if e != result.odd_engine)
        head = f"{result.odd_engine} disagrees with {others} (which agree with each other);"
    elif len(result.engines) == 2:
        head = f"{result.engines[0]} and {result.engines[1]} disagree (two engines cannot tell which is wrong);"
    else:
        bad = ", ".join(f"{p.a}/{p.b}" for p in result.pairs if not p.agree)
        head = f"no single engine is the odd one out; disagreeing pairs: {bad};"
    if worst:
        shown = ", ".join(f"{e}={v:.10g}" for e, v in worst.values.items())
        where += f": {shown}; |{worst.pair[0]}-{worst.pair[1]}|={worst.error:.3g} > tol {worst.tolerance:.3g}"
    return head + where
