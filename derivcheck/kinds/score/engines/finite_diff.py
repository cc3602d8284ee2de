"""Score problems in the finite-difference engine: differences of the float64 log-density.

Only ``log p_t`` (:func:`~derivcheck.kinds.score.density.numpy_log_density`) is ever evaluated. The
score is its central first difference, the score's Jacobian its second differences
(``[1, -2, 1] / h^2`` on the diagonal, the four-point ``(++ - +- - -+ + --) / 4 h_i h_j``
off it); both are ``O(h^2)``. With ``method = "richardson"`` (default) values at h, h/2,
h/4 are extrapolated and the error estimated as ``|R(h) - R(h/2)|``; with ``"central"``
the estimate is ``4/3 |D(h) - D(h/2)|``. A rounding bound ``10 eps |log p| / h^n`` is
added. Base steps ``eps^(1/5)`` (first) and ``eps^(1/6)`` (second derivatives), times
``max(1, |x_i|)``, or the case's ``finite_diff.step``.

The steps and the divergence are linear in the score and its Jacobian
(``ddpm = (x + beta score) / sqrt(alpha) + sigma z``, ``pf = x + beta/2 (x + score)``), so
they are assembled from the differences with their error estimates scaled alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from derivcheck.schedules import numpy_schedule
from derivcheck.kinds.score.density import (
    DDPM_JACOBIAN, DDPM_STEP, EPS_STAR, LOG_P, PF_DIVERGENCE, PF_JACOBIAN, PF_STEP, SCORE, SCORE_JACOBIAN,
    ScoreProblem, numpy_log_density,
)  # fmt: skip
from derivcheck.values import EngineResult, EngineValue

EPS = float(np.finfo(np.float64).eps)


def _extrapolate(quotient: Callable[[float], np.ndarray], method: str) -> tuple[np.ndarray, np.ndarray]:
    """Value and error estimate from a quotient of relative step multiplier."""
    if method == "central":
        d0, d1 = quotient(1.0), quotient(0.5)
        return d0, 4 / 3 * np.abs(d0 - d1)
    d0, d1, d2 = quotient(1.0), quotient(0.5), quotient(0.25)
    r1, r2 = (4 * d1 - d0) / 3, (4 * d2 - d1) / 3
    return r2, np.abs(r1 - r2)


def score_differences(problem: ScoreProblem, abar: float, method: str = "richardson", step: float | None = None) -> tuple[np.ndarray, ...]:
    """``(log p (N,), score (N, d), score error, hessian (N, d, d), hessian error)``."""
    x = problem.points
    n, d = x.shape

    def f(points: np.ndarray) -> np.ndarray:
        return numpy_log_density(problem.mixture, abar, points)

    f0 = f(x)
    h1 = (step or EPS ** (1 / 5)) * np.maximum(1.0, np.abs(x))
    h2 = (step or EPS ** (1 / 6)) * np.maximum(1.0, np.abs(x))
    smallest = 0.5 if method == "central" else 0.25

    def shifted(steps: dict[int, np.ndarray]) -> np.ndarray:
        moved = x.copy()
        for i, h in steps.items():
            moved[:, i] += h
        return f(moved)

    score, score_err = np.empty((n, d)), np.empty((n, d))
    hess, hess_err = np.empty((n, d, d)), np.empty((n, d, d))
    for i in range(d):
        value, err = _extrapolate(lambda m: (shifted({i: m * h1[:, i]}) - shifted({i: -m * h1[:, i]})) / (2 * m * h1[:, i]), method)
        score[:, i], score_err[:, i] = value, err + 10 * EPS * np.abs(f0) / (smallest * h1[:, i])
        for j in range(i, d):
            if i == j:

                def quotient(m: float) -> np.ndarray:
                    h = m * h2[:, i]
                    return (shifted({i: h}) - 2 * f0 + shifted({i: -h})) / h**2
            else:

                def quotient(m: float) -> np.ndarray:
                    hi, hj = m * h2[:, i], m * h2[:, j]
                    return (shifted({i: hi, j: hj}) - shifted({i: hi, j: -hj}) - shifted({i: -hi, j: hj}) + shifted({i: -hi, j: -hj})) / (4 * hi * hj)

            value, err = _extrapolate(quotient, method)
            err = err + 10 * EPS * np.abs(f0) / (smallest**2 * h2[:, i] * h2[:, j])
            hess[:, i, j] = hess[:, j, i] = value
            hess_err[:, i, j] = hess_err[:, j, i] = err
    return f0, score, score_err, hess, hess_err


def compute_score(problem: ScoreProblem, quantities: Sequence[str], method: str = "richardson", step: float | None = None) -> EngineResult:
    beta_all, abar_all = numpy_schedule(problem.schedule)
    beta, abar = float(beta_all[problem.t]), float(abar_all[problem.t])
    log_p, score, score_err, hess, hess_err = score_differences(problem, abar, method, step)
    x, eye = problem.points, np.eye(problem.points.shape[1])
    values: dict[str, tuple[np.ndarray, np.ndarray | None]] = {
        LOG_P: (log_p, None), SCORE: (score, score_err), SCORE_JACOBIAN: (hess, hess_err),
    }  # fmt: skip
    if problem.t > 0:
        b, root_alpha = np.sqrt(1.0 - abar), np.sqrt(1.0 - beta)
        values[EPS_STAR] = (-b * score, b * score_err)
        values[DDPM_STEP] = ((x + beta * score) / root_alpha + np.sqrt(beta) * problem.z, beta / root_alpha * score_err)
        values[DDPM_JACOBIAN] = ((eye + beta * hess) / root_alpha, beta / root_alpha * hess_err)
        values[PF_STEP] = (x + 0.5 * beta * (x + score), 0.5 * beta * score_err)
        values[PF_JACOBIAN] = (eye + 0.5 * beta * (eye + hess), 0.5 * beta * hess_err)
        values[PF_DIVERGENCE] = (-0.5 * beta * (x.shape[1] + np.trace(hess, axis1=1, axis2=2)), 0.5 * beta * np.trace(hess_err, axis1=1, axis2=2))
    note = f"{method} differences of log p_t (float64)"
    return {q: EngineValue(v, error_estimate=e, note=note if e is not None else "forward pass (numpy, float64)") for q, (v, e) in values.items() if q in quantities}
