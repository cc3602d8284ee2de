"""Score functions of Gaussian mixtures, noised by a DDPM schedule, and the sampling steps built on them.

The data density is a Gaussian mixture ``p(x) = sum_k pi_k N(x; mu_k, Sigma_k)`` (one
component: a Gaussian). Noising it to time ``t`` (``x_t = a x_0 + b eps``, ``a = sqrt(abar_t)``,
``b = sqrt(1 - abar_t)``) gives again a mixture::

    p_t(x) = sum_k pi_k N(x; a mu_k, a^2 Sigma_k + b^2 I)

Quantities at points ``x`` ``(N, d)`` of one time ``t`` (``t = 0``: the data density, only the
first three):

- ``log_p`` ``(N,)``, ``score`` = grad_x log p_t ``(N, d)``, ``score_jacobian`` = its
  Jacobian (the Hessian of log p_t) ``(N, d, d)``;
- ``eps_star`` ``(N, d)``: the optimal noise predictor ``E[eps | x_t]``. The numpy engine
  computes it by Gaussian conditioning per component (posterior-weighted
  ``Cov(eps, x_t) Var(x_t)^-1 (x_t - E x_t)``); the others as ``-b * score``. Their agreement
  is the identity denoising score matching rests on (Vincent 2011; Ho et al. 2020);
- ``ddpm_step`` ``(N, d)``: one reverse (ancestral) DDPM step with the optimal predictor,
  ``x_{t-1} = (x_t - beta_t / b * eps*) / sqrt(alpha_t) + sigma_t z`` with
  ``alpha_t = 1 - beta_t``, ``sigma_t = sqrt(beta_t)`` and a fixed seeded ``z``;
  ``ddpm_step_jacobian`` its derivative w.r.t. ``x_t`` ``(N, d, d)``;
- ``pf_ode_step`` ``(N, d)``: one Euler step, from ``t`` to ``t - 1``, of the probability-flow
  ODE ``dx/dtau = -beta(tau)/2 (x + score)`` (Song et al. 2021), i.e.
  ``x_{t-1} = x_t + beta_t / 2 (x_t + score(x_t))``; ``pf_ode_step_jacobian`` ``(N, d, d)``;
- ``pf_ode_divergence`` ``(N,)``: the divergence (trace of the Jacobian) of the ODE drift
  ``f(x) = -beta_t / 2 (x + score(x))``, the term a continuous normalizing flow integrates
  for likelihoods. Besides the exact engines, the torch engine's Hutchinson estimator
  ``E_v[v^T (df/dx) v]`` (Rademacher ``v``, vector-Jacobian products only) is compared with
  its own standard error as error estimate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from derivcheck.schedules import Schedule

LOG_P = "log_p"
SCORE = "score"
SCORE_JACOBIAN = "score_jacobian"
EPS_STAR = "eps_star"
DDPM_STEP = "ddpm_step"
DDPM_JACOBIAN = "ddpm_step_jacobian"
PF_STEP = "pf_ode_step"
PF_JACOBIAN = "pf_ode_step_jacobian"
PF_DIVERGENCE = "pf_ode_divergence"
HUTCHINSON = "hutchinson"
"""Key under which the torch engine returns its Hutchinson estimate of the divergence."""

DENSITY_QUANTITIES = (LOG_P, SCORE, SCORE_JACOBIAN)
NOISED_QUANTITIES = (EPS_STAR, DDPM_STEP, DDPM_JACOBIAN, PF_STEP, PF_JACOBIAN, PF_DIVERGENCE)
SCORE_QUANTITIES = DENSITY_QUANTITIES + NOISED_QUANTITIES
"""Every quantity of a score case, in report order."""


@dataclass(frozen=True)
class Mixture:
    """A Gaussian mixture: `weights` ``(K,)`` summing to 1, `means` ``(K, d)``,
    `covariances` ``(K, d, d)`` symmetric positive definite."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray

    @property
    def components(self) -> int:
        return int(self.weights.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def check(self) -> str | None:
        """``None`` when valid, else what is wrong."""
        w, m, c = self.weights, self.means, self.covariances
        if w.ndim != 1 or m.ndim != 2 or c.ndim != 3 or not (w.shape[0] == m.shape[0] == c.shape[0]) or c.shape[1:] != (m.shape[1], m.shape[1]):
            return f"shapes do not fit: weights {w.shape}, means {m.shape}, covariances {c.shape} (need (K,), (K, d), (K, d, d))"
        if not all(np.all(np.isfinite(a)) for a in (w, m, c)):
            return "weights, means and covariances must be finite"
        if np.any(w <= 0) or abs(w.sum() - 1) > 1e-9:
            return f"weights must be positive and sum to 1, got {w.tolist()}"
        for k, cov in enumerate(c):
            if not np.allclose(cov, cov.T, rtol=0, atol=1e-12 * max(1.0, np.abs(cov).max())):
                return f"covariance {k} is not symmetric"
            eig = np.linalg.eigvalsh(cov)
            if eig[0] <= 0:
                return f"covariance {k} is not positive definite (smallest eigenvalue {eig[0]:.3g})"
            if eig[-1] / eig[0] > 1e8:
                return f"covariance {k} is ill-conditioned (condition number {eig[-1] / eig[0]:.3g} > 1e8)"
        return None

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` seeded draws ``(n, d)``."""
        k = rng.choice(self.components, size=n, p=self.weights)
        chol = np.linalg.cholesky(self.covariances)
        return self.means[k] + np.einsum("nij,nj->ni", chol[k], rng.standard_normal((n, self.dim)))


@dataclass
class ScoreProblem:
    """The score quantities of `mixture` noised to time `t` of `schedule`, at `points`
    ``(N, d)``; `z` ``(N, d)`` is the DDPM step's noise; `hutchinson_samples` Rademacher
    vectors per point for the divergence estimate (``0``: none)."""

    mixture: Mixture
    schedule: Schedule
    t: int
    points: np.ndarray
    z: np.ndarray
    hutchinson_samples: int = 256
    seed: int = 0
    dtype: str = "float64"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def quantities(self) -> tuple[str, ...]:
        return SCORE_QUANTITIES if self.t > 0 else DENSITY_QUANTITIES

    def shape_of(self, quantity: str) -> tuple[int, ...]:
        n, d = self.points.shape
        if quantity in (LOG_P, PF_DIVERGENCE):
            return (n,)
        if quantity in (SCORE_JACOBIAN, DDPM_JACOBIAN, PF_JACOBIAN):
            return (n, d, d)
        return (n, d)


def numpy_log_density(mixture: Mixture, abar: float, x: np.ndarray) -> np.ndarray:
    """``log p_t(x)`` ``(N,)`` of the mixture noised with `abar` (the forward pass the
    finite-difference engine perturbs; log-sum-exp over components)."""
    a2, b2 = abar, 1.0 - abar
    covs = a2 * mixture.covariances + b2 * np.eye(mixture.dim)
    diff = x[:, None, :] - np.sqrt(abar) * mixture.means[None]
    solved = np.linalg.solve(covs[None], diff[..., None])[..., 0]
    quad = np.einsum("nki,nki->nk", diff, solved)
    logdet = np.linalg.slogdet(covs)[1]
    terms = np.log(mixture.weights) - 0.5 * (quad + logdet + mixture.dim * np.log(2 * np.pi))
    top = terms.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(terms - top).sum(axis=1, keepdims=True)))[:, 0]
