"""Score problems in the torch engine: ``torch.distributions`` log-densities and autograd.

The noised density is the real ``MultivariateNormal`` (one component) or
``MixtureSameFamily(Categorical, MultivariateNormal)``; the score is
``torch.autograd.grad(log_prob.sum(), x, create_graph=True)``, the steps are torch
expressions of it, and every Jacobian is one more ``autograd.grad`` per output row through
that graph (second derivatives). The divergence is also estimated the way continuous
normalizing flows do (FFJORD): Hutchinson's ``E_v[v^T (df/dx) v]`` with Rademacher ``v``
and one vector-Jacobian product per sample, never the full Jacobian.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from derivcheck.schedules import torch_schedule
from derivcheck.kinds.score.density import (
    DDPM_JACOBIAN, DDPM_STEP, EPS_STAR, HUTCHINSON, LOG_P, PF_DIVERGENCE, PF_JACOBIAN, PF_STEP, SCORE, SCORE_JACOBIAN,
    ScoreProblem,
)  # fmt: skip
from derivcheck.values import EngineResult, EngineValue


def noised_distribution(problem: ScoreProblem, device: str = "cpu") -> tuple[Any, float, float]:
    """``(torch distribution of x_t, beta_t, abar_t)`` in float64 on `device`."""
    import torch
    from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

    beta_all, abar_all = torch_schedule(problem.schedule, device)
    beta, abar = beta_all[problem.t], abar_all[problem.t]
    mix = problem.mixture
    kw: dict[str, Any] = {"dtype": torch.float64, "device": device}
    means = torch.as_tensor(mix.means, **kw) * abar.sqrt()
    covs = abar * torch.as_tensor(mix.covariances, **kw) + (1 - abar) * torch.eye(mix.dim, **kw)
    dist: Any
    if mix.components == 1:
        dist = MultivariateNormal(means[0], covariance_matrix=covs[0])
    else:
        dist = MixtureSameFamily(Categorical(probs=torch.as_tensor(mix.weights, **kw)), MultivariateNormal(means, covariance_matrix=covs))
    return dist, float(beta), float(abar)


def _jacobian(outputs: Any, x: Any) -> Any:
    """``(N, d_out, d)`` rows of d outputs / d x through the graph (kept for more)."""
    import torch

    rows = [torch.autograd.grad(outputs[:, i].sum(), x, retain_graph=True, create_graph=True)[0] for i in range(outputs.shape[1])]
    return torch.stack(rows, dim=1)


def drift(dist: Any, beta: float, x: Any) -> Any:
    """The probability-flow drift ``-beta/2 (x + score(x))`` (differentiable in x)."""
    import torch

    score = torch.autograd.grad(dist.log_prob(x).sum(), x, create_graph=True)[0]
    return -0.5 * beta * (x + score)


def hutchinson_divergence(problem: ScoreProblem, samples: int, seed: int, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Hutchinson estimates of the drift's divergence at every point, ``(estimate (N,),
    standard error (N,))``, from `samples` Rademacher vectors per point (seeded)."""
    import torch

    dist, beta, _ = noised_distribution(problem, device)
    n, d = problem.points.shape
    generator = torch.Generator(device="cpu").manual_seed(seed)
    v = (torch.randint(0, 2, (samples, n, d), generator=generator, dtype=torch.float64) * 2 - 1).to(device)
    x = torch.as_tensor(problem.points, dtype=torch.float64, device=device).repeat(samples, 1).requires_grad_(True)
    f = drift(dist, beta, x)
    vjp = torch.autograd.grad(f, x, grad_outputs=v.reshape(samples * n, d))[0]
    draws = (vjp.reshape(samples, n, d) * v).sum(dim=2).detach().cpu().numpy()
    stderr = draws.std(axis=0, ddof=1) / np.sqrt(samples) if samples > 1 else np.full(n, np.inf)
    return draws.mean(axis=0), stderr


def compute_score(problem: ScoreProblem, quantities: Sequence[str], device: str = "cpu") -> EngineResult:
    import torch

    dist, beta, abar = noised_distribution(problem, device)
    x = torch.as_tensor(problem.points, dtype=torch.float64, device=device).requires_grad_(True)
    log_p = dist.log_prob(x)
    score = torch.autograd.grad(log_p.sum(), x, create_graph=True)[0]
    values: dict[str, Any] = {LOG_P: log_p, SCORE: score, SCORE_JACOBIAN: _jacobian(score, x)}
    if problem.t > 0:
        b = (1 - abar) ** 0.5
        eps = -b * score
        z = torch.as_tensor(problem.z, dtype=torch.float64, device=device)
        ddpm = (x - beta / b * eps) / (1 - beta) ** 0.5 + beta**0.5 * z
        pf = x + 0.5 * beta * (x + score)
        f = -0.5 * beta * (x + score)
        values[EPS_STAR] = eps
        values[DDPM_STEP], values[DDPM_JACOBIAN] = ddpm, _jacobian(ddpm, x)
        values[PF_STEP], values[PF_JACOBIAN] = pf, _jacobian(pf, x)
        values[PF_DIVERGENCE] = torch.diagonal(_jacobian(f, x), dim1=1, dim2=2).sum(dim=1)
    note = f"torch.distributions + autograd ({device})"
    out: EngineResult = {q: EngineValue(v.detach().cpu().numpy().copy(), note=note) for q, v in values.items() if q in quantities}
    if problem.t > 0 and PF_DIVERGENCE in quantities and problem.hutchinson_samples > 1:
        estimate, stderr = hutchinson_divergence(problem, problem.hutchinson_samples, problem.seed, device)
        out[HUTCHINSON] = EngineValue(estimate, error_estimate=stderr, note=f"Hutchinson, {problem.hutchinson_samples} Rademacher vectors (error estimate: standard error)")
    return out
