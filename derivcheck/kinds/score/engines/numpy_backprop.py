"""Score problems in the numpy engine: hand-written formulas for mixtures of Gaussians.

With ``P_k = C_k^-1`` (``C_k = a^2 Sigma_k + b^2 I`` the noised covariance), component
scores ``g_k = -P_k (x - a mu_k)`` and posterior responsibilities ``r_k(x)``::

    score = sum_k r_k g_k
    d score / dx = sum_k r_k (g_k g_k^T - P_k) - score score^T

``eps*`` is *not* taken from the score: it is the posterior mean of the noise, by Gaussian
conditioning of the joint ``(eps, x_t)`` within each component, weighted by ``r_k``. The
steps use it (the DDPM step as written in Ho et al.) and the Hessian above for Jacobians.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from derivcheck.schedules import numpy_schedule
from derivcheck.kinds.score.density import (
    DDPM_JACOBIAN, DDPM_STEP, EPS_STAR, LOG_P, PF_DIVERGENCE, PF_JACOBIAN, PF_STEP, SCORE, SCORE_JACOBIAN,
    ScoreProblem, numpy_log_density,
)  # fmt: skip
from derivcheck.values import EngineResult, EngineValue


def mixture_score(problem: ScoreProblem, abar: float, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(score (N, d), hessian (N, d, d), responsibilities (N, K), noised covariances (K, d, d))``."""
    mix = problem.mixture
    covs = abar * mix.covariances + (1.0 - abar) * np.eye(mix.dim)
    precisions = np.linalg.inv(covs)
    diff = x[:, None, :] - np.sqrt(abar) * mix.means[None]
    g = -np.einsum("kij,nkj->nki", precisions, diff)
    quad = -np.einsum("nki,nki->nk", diff, g)
    logits = np.log(mix.weights) - 0.5 * (quad + np.linalg.slogdet(covs)[1])
    r = np.exp(logits - logits.max(axis=1, keepdims=True))
    r /= r.sum(axis=1, keepdims=True)
    score = np.einsum("nk,nki->ni", r, g)
    hessian = np.einsum("nk,nki,nkj->nij", r, g, g) - np.einsum("nk,kij->nij", r, precisions) - score[:, :, None] * score[:, None, :]
    return score, hessian, r, covs


def posterior_noise_mean(problem: ScoreProblem, abar: float, x: np.ndarray, r: np.ndarray) -> np.ndarray:
    """``E[eps | x_t]`` ``(N, d)``: in component k, ``(eps, x_t)`` is jointly Gaussian with
    ``Cov(eps, x_t) = b I``, ``Var(x_t) = a^2 Sigma_k + b^2 I``, ``E x_t = a mu_k``."""
    mix = problem.mixture
    a, b = np.sqrt(abar), np.sqrt(1.0 - abar)
    out = np.zeros_like(x)
    for k in range(mix.components):
        var_x = a * a * mix.covariances[k] + b * b * np.eye(mix.dim)
        cov_eps_x = b * np.eye(mix.dim)
        out += r[:, k : k + 1] * (cov_eps_x @ np.linalg.solve(var_x, (x - a * mix.means[k]).T)).T
    return out


def ddpm_step(x: np.ndarray, eps: np.ndarray, d_eps: np.ndarray, beta: float, abar: float, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(x_{t-1}, d x_{t-1} / d x_t)`` of the ancestral step with noise predictor `eps`."""
    b, root_alpha = np.sqrt(1.0 - abar), np.sqrt(1.0 - beta)
    step = (x - beta / b * eps) / root_alpha + np.sqrt(beta) * z
    jac = (np.eye(x.shape[1]) - beta / b * d_eps) / root_alpha
    return step, jac


def pf_ode_step(x: np.ndarray, score: np.ndarray, hessian: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x_{t-1}, its Jacobian, divergence of the drift -beta/2 (x + score))``."""
    eye = np.eye(x.shape[1])
    step = x + 0.5 * beta * (x + score)
    jac = eye + 0.5 * beta * (eye + hessian)
    divergence = -0.5 * beta * (x.shape[1] + np.trace(hessian, axis1=1, axis2=2))
    return step, jac, divergence


def compute_score(problem: ScoreProblem, quantities: Sequence[str]) -> EngineResult:
    beta_all, abar_all = numpy_schedule(problem.schedule)
    beta, abar = float(beta_all[problem.t]), float(abar_all[problem.t])
    x = problem.points
    score, hessian, r, _ = mixture_score(problem, abar, x)
    values = {LOG_P: numpy_log_density(problem.mixture, abar, x), SCORE: score, SCORE_JACOBIAN: hessian}
    if problem.t > 0:
        eps = posterior_noise_mean(problem, abar, x, r)
        d_eps = -np.sqrt(1.0 - abar) * hessian  # Tweedie: d E[eps|x] / dx = -b * Hessian of log p_t
        values[EPS_STAR] = eps
        values[DDPM_STEP], values[DDPM_JACOBIAN] = ddpm_step(x, eps, d_eps, beta, abar, problem.z)
        values[PF_STEP], values[PF_JACOBIAN], values[PF_DIVERGENCE] = pf_ode_step(x, score, hessian, beta)
    return {q: EngineValue(np.asarray(values[q]), note="hand-written mixture formulas") for q in quantities if q in values}
