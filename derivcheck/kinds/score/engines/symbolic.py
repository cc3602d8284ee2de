"""Score problems in the symbolic engine: SymPy writes ``log p_t`` in closed form and derives the rest.

``log p_t(x) = log sum_k pi_k (2 pi)^(-d/2) det(C_k)^(-1/2) exp(-(x - m_k)^T C_k^-1 (x - m_k) / 2)``
with ``m_k = sqrt(abar_t) mu_k``, ``C_k = abar_t Sigma_k + (1 - abar_t) I`` -- SymPy inverts
``C_k`` and takes its determinant itself (40-digit Floats, ``abar_t`` from SymPy's own
schedule). The score, its Jacobian, the two steps and their Jacobians are ``sympy.diff``
of these expressions (the steps written in terms of the score, then differentiated whole),
compiled with ``lambdify(cse=True)``. Nothing here uses a hand-written derivative.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from derivcheck._lazy import sympy as sp

from derivcheck import compile_cache
from derivcheck.expr import NUMPY_MODULES, make_symbol
from derivcheck.schedules import Schedule, sympy_schedule
from derivcheck.kinds.score.density import (
    DDPM_JACOBIAN, DDPM_STEP, EPS_STAR, LOG_P, PF_DIVERGENCE, PF_JACOBIAN, PF_STEP, SCORE, SCORE_JACOBIAN,
    Mixture, ScoreProblem,
)  # fmt: skip
from derivcheck.values import EngineResult, EngineValue

_DIGITS = 40


def _float(value: float) -> sp.Float:
    return sp.Float(repr(float(value)), _DIGITS)


def component_terms(mixture: Mixture, k: int, abar: sp.Expr, x: list[sp.Symbol]) -> tuple[sp.Expr, sp.Expr]:
    """``(exponent, normaliser)`` of component `k` of the noised mixture:
    ``-(x - m)^T C^-1 (x - m) / 2`` and ``(2 pi)^(-d/2) det(C)^(-1/2)``."""
    d = mixture.dim
    sigma = sp.Matrix(d, d, [_float(v) for v in mixture.covariances[k].ravel()])
    cov = abar * sigma + (1 - abar) * sp.eye(d)
    diff = sp.Matrix(x) - sp.sqrt(abar) * sp.Matrix([_float(v) for v in mixture.means[k]])
    return -(diff.T * cov.inv() * diff)[0, 0] / 2, (2 * sp.pi) ** sp.Rational(-d, 2) / sp.sqrt(cov.det())


def log_density_expr(mixture: Mixture, abar: sp.Expr, x: list[sp.Symbol]) -> sp.Expr:
    """SymPy's ``log p_t(x)`` of the mixture noised with `abar`."""
    terms = []
    for k in range(mixture.components):
        exponent, norm = component_terms(mixture, k, abar, x)
        terms.append(_float(mixture.weights[k]) * norm * sp.exp(exponent))
    return sp.log(sp.Add(*terms))


def _derive(mixture: Mixture, schedule: Schedule, t: int) -> tuple[list[str], Any]:
    """Quantity names (in order) and one compiled function of ``(x rows, z rows)``
    returning all their entries flat."""
    beta_all, abar_all = sympy_schedule(schedule)
    beta, abar = beta_all[t], abar_all[t]
    d = mixture.dim
    x = [make_symbol(f"x{i}") for i in range(d)]
    z = [make_symbol(f"z{i}") for i in range(d)]
    log_p = log_density_expr(mixture, abar, x)
    score = [sp.diff(log_p, xi) for xi in x]
    exprs: dict[str, list[sp.Expr]] = {LOG_P: [log_p], SCORE: score, SCORE_JACOBIAN: [sp.diff(s, xj) for s in score for xj in x]}
    if t > 0:
        b = sp.sqrt(1 - abar)
        eps = [-b * s for s in score]
        ddpm = [(xi - beta / b * e) / sp.sqrt(1 - beta) + sp.sqrt(beta) * zi for xi, e, zi in zip(x, eps, z)]
        pf = [xi + beta / 2 * (xi + s) for xi, s in zip(x, score)]
        drift = [-beta / 2 * (xi + s) for xi, s in zip(x, score)]
        exprs[EPS_STAR] = eps
        exprs[DDPM_STEP] = ddpm
        exprs[DDPM_JACOBIAN] = [sp.diff(s, xj) for s in ddpm for xj in x]
        exprs[PF_STEP] = pf
        exprs[PF_JACOBIAN] = [sp.diff(s, xj) for s in pf for xj in x]
        exprs[PF_DIVERGENCE] = [sp.Add(*[sp.diff(f, xi) for f, xi in zip(drift, x)])]
    names = list(exprs)
    flat = [e for name in names for e in exprs[name]]
    return names, sp.lambdify([x, z], flat, modules=NUMPY_MODULES, cse=True)


class _Derived:
    """The compiled quantities of one mixture, schedule and t, storable in the compile cache."""

    def __init__(self, names: list[str], function: Any):
        self.names, self.function = names, function

    def to_record(self) -> dict[str, Any]:
        return {"functions": {"score": compile_cache.function_source(self.function)}, "names": list(self.names)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "_Derived":
        return cls([str(n) for n in record["names"]], compile_cache.restore(record, "score"))


_CACHE: dict[tuple[Any, ...], tuple[list[str], Any]] = {}
_CACHE_SIZE = 64


def _compiled(problem: ScoreProblem) -> tuple[list[str], Any]:
    """:func:`_derive`, once per mixture, schedule and t in a process, and through the
    on-disk compile cache (kind ``score``) across processes."""
    m = problem.mixture
    key = (m.weights.tobytes(), m.means.shape, m.means.tobytes(), m.covariances.tobytes(), problem.schedule, problem.t)
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        content = repr(("score", m.weights.tolist(), m.means.tolist(), m.covariances.tolist(), repr(problem.schedule), int(problem.t)))
        derived = compile_cache.cached("score", content, lambda: _Derived(*_derive(m, problem.schedule, problem.t)), _Derived.from_record)
        _CACHE[key] = (derived.names, derived.function)
    return _CACHE[key]


def compute_score(problem: ScoreProblem, quantities: Sequence[str]) -> EngineResult:
    names, function = _compiled(problem)
    n = problem.points.shape[0]
    raw = function(list(problem.points.T), list(problem.z.T))
    out: EngineResult = {}
    offset = 0
    for name in names:
        shape = problem.shape_of(name)
        count = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        block = [np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)) for v in raw[offset : offset + count]]
        offset += count
        if name in quantities:
            out[name] = EngineValue(np.stack(block, axis=1).reshape(shape), note="SymPy closed form, lambdify(cse=True)")
    return out
