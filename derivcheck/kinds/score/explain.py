"""``derivcheck explain`` for score cases: the score formula derived step by step.

At the first sampled point of the case's middle time ``t > 0`` (or of ``t = 0`` when that is
all it has):

1. the density and its log, SymPy's expression for one component, ``log p`` checked
   (SymPy vs numpy log-sum-exp vs ``torch.distributions``);
2. the noised density ``p_t`` (mean ``a mu_k``, covariance ``a^2 Sigma_k + b^2 I``) with
   ``abar_t`` from the three schedule implementations;
3. the score: per component ``-C_k^-1 (x - a mu_k)`` (SymPy's derivative shown), mixed by
   the responsibilities; checked SymPy vs hand formula vs autograd vs finite differences;
4. the optimal noise predictor ``E[eps | x_t] = -sqrt(1 - abar_t) score`` (conditioning vs
   the score);
5. the reverse DDPM step and the probability-flow step, their Jacobians (``c I + c' H``),
   and the divergence as the Jacobian's trace, with Hutchinson's estimate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from derivcheck._lazy import sympy as sp

from derivcheck.explain_steps import Check, Explanation, Step, _compare, schedule_check
from derivcheck.values import computed


def explain_score(case: Any) -> Explanation:
    """The derivation of a :class:`~derivcheck.kinds.score.case.ScoreCase` (module docstring)."""
    from derivcheck.kinds.score.engines import finite_diff as score_fd, numpy_backprop as score_numpy, symbolic as score_symbolic, torch_autograd as score_torch
    from derivcheck.expr import make_symbol
    from derivcheck.schedules import numpy_schedule
    from derivcheck.kinds.score.density import DDPM_JACOBIAN, DDPM_STEP, EPS_STAR, LOG_P, PF_DIVERGENCE, PF_JACOBIAN, PF_STEP, SCORE, SCORE_JACOBIAN, SCORE_QUANTITIES

    problems = case.problems()
    noised = [p for p in problems if p.t > 0]
    full = noised[len(noised) // 2] if noised else problems[0]
    problem = type(full)(full.mixture, full.schedule, full.t, full.points[:1], full.z[:1], full.hutchinson_samples, full.seed)
    mix, t = problem.mixture, problem.t
    beta_all, abar_all = numpy_schedule(problem.schedule)
    beta, abar = float(beta_all[t]), float(abar_all[t])
    x = problem.points[0]
    quantities = [q for q in SCORE_QUANTITIES if q in problem.quantities]
    values: dict[str, dict[str, Any]] = {  # every engine computes every score quantity
        "SymPy": score_symbolic.compute_score(problem, quantities),
        "numpy formula": score_numpy.compute_score(problem, quantities),
        "torch autograd": score_torch.compute_score(problem, quantities),
        "finite differences": score_fd.compute_score(problem, quantities),
    }

    def check(label: str, quantity: str, engines: tuple[str, ...] = ("SymPy", "numpy formula", "torch autograd")) -> Check:
        return _compare(label, {e: values[e][quantity].values for e in engines})

    def fd_check(label: str, quantity: str) -> Check:
        fd = values["finite differences"][quantity]
        gap = float(np.max(np.abs(fd.values - values["SymPy"][quantity].values)))
        bound = 10 * float(np.max(fd.error_estimate)) + 1e-12
        return Check(label, gap <= bound, f"finite differences vs SymPy: gap {gap:.1e} within 10x the estimated error {bound:.1e}")

    kind = "Gaussian" if mix.components == 1 else f"mixture of {mix.components} Gaussians"
    intro = f"Score of a {kind} in {mix.dim}-D, noised to t = {t} ({problem.schedule.describe()}); values at the point x = {np.round(x, 4).tolist()} drawn from p_t."
    steps: list[Step] = []

    density = Step("The density and its log")
    density.text.append("p(x) = sum_k pi_k N(x; mu_k, Sigma_k),   log N(x; m, C) = -1/2 (x - m)^T C^-1 (x - m) - 1/2 log det(2 pi C)")
    density.latex.append(r"\log p(x) = \log \sum_k \pi_k\, \mathcal{N}(x;\mu_k,\Sigma_k)")
    for k in range(mix.components):
        density.text.append(f"k={k}: pi = {mix.weights[k]:.4g}, mu = {np.round(mix.means[k], 4).tolist()}, Sigma = {np.round(mix.covariances[k], 4).tolist()}")
    symbols = [make_symbol(f"x{i}") for i in range(mix.dim)]
    component = sp.expand(score_symbolic.component_terms(mix, 0, sp.Integer(1), symbols)[0]) if mix.dim <= 2 else None
    if component is not None:
        density.text.append(f"SymPy, the exponent of component 0 (data density, t = 0): {sp.N(component, 5)}")
    clean = type(problem)(mix, problem.schedule, 0, problem.points, problem.z, 0, problem.seed)
    clean_values: dict[str, Any] = {
        "SymPy": computed(score_symbolic.compute_score(clean, [LOG_P])[LOG_P]).values,
        "numpy log-sum-exp": computed(score_numpy.compute_score(clean, [LOG_P])[LOG_P]).values,
        "torch.distributions": computed(score_torch.compute_score(clean, [LOG_P])[LOG_P]).values,
    }  # fmt: skip
    density.checks.append(_compare(f"log p(x) = {float(clean_values['numpy log-sum-exp'][0]):.6g} (data density)", clean_values))
    steps.append(density)

    noised_step = Step(f"The noised density p_t at t = {t}")
    noised_step.text.append("x_t = a x_0 + b eps with a = sqrt(abar_t), b = sqrt(1 - abar_t): each component stays Gaussian,")
    noised_step.text.append("p_t(x) = sum_k pi_k N(x; a mu_k, a^2 Sigma_k + b^2 I)")
    noised_step.text.append(f"abar_{t} = {abar:.6g}, beta_{t} = {beta:.6g}")
    noised_step.latex.append(r"p_t(x) = \sum_k \pi_k\, \mathcal{N}\big(x;\ \sqrt{\bar\alpha_t}\,\mu_k,\ \bar\alpha_t \Sigma_k + (1-\bar\alpha_t) I\big)")
    noised_step.checks.append(schedule_check(problem.schedule, t))
    noised_step.checks.append(check(f"log p_t(x) = {float(values['numpy formula'][LOG_P].values[0]):.6g}", LOG_P))
    steps.append(noised_step)

    score = Step("The score, derived")
    score.text.append("d/dx log N(x; m, C) = -C^-1 (x - m)  (differentiate the quadratic form; C is symmetric)")
    score.text.append("grad log p_t(x) = sum_k r_k(x) g_k,  g_k = -C_k^-1 (x - a mu_k),  r_k = pi_k N_k(x) / sum_j pi_j N_j(x)  (the log of a sum: d log S = dS / S)")
    score.text.append("d score/dx = sum_k r_k (g_k g_k^T - C_k^-1) - score score^T")
    score.latex.append(r"\nabla_x \log p_t(x) = \sum_k r_k(x)\, \big(-C_k^{-1}(x - \sqrt{\bar\alpha_t}\mu_k)\big), \quad r_k = \frac{\pi_k \mathcal{N}_k(x)}{\sum_j \pi_j \mathcal{N}_j(x)}")
    if component is not None:
        score.text.append(f"SymPy, d/dx0 of component 0's exponent: {sp.N(sp.diff(component, symbols[0]), 5)}")
    score.checks.append(check(f"score = {np.round(values['numpy formula'][SCORE].values[0], 6).tolist()}", SCORE))
    score.checks.append(fd_check("score (finite differences of log p_t)", SCORE))
    score.checks.append(check("d score/dx (Hessian of log p_t)", SCORE_JACOBIAN))
    score.checks.append(fd_check("d score/dx (second differences)", SCORE_JACOBIAN))
    steps.append(score)

    if t > 0:
        eps = Step("The optimal noise predictor (denoising score matching)")
        eps.text.append("E[eps | x_t]: in component k, (eps, x_t) is jointly Gaussian with Cov(eps, x_t) = b I, Var(x_t) = C_k, so E[eps | x_t, k] = b C_k^-1 (x_t - a mu_k) = -b g_k;")
        eps.text.append("weighting by r_k:  eps*(x_t) = E[eps | x_t] = -sqrt(1 - abar_t) grad log p_t(x_t)")
        eps.latex.append(r"\epsilon^*(x_t) = \mathbb{E}[\epsilon \mid x_t] = -\sqrt{1-\bar\alpha_t}\; \nabla_x \log p_t(x_t)")
        eps.checks.append(
            _compare(
                "eps* by conditioning vs -b * score",
                {"numpy (conditioning)": values["numpy formula"][EPS_STAR].values, "SymPy (-b score)": values["SymPy"][EPS_STAR].values, "torch (-b score)": values["torch autograd"][EPS_STAR].values},
            )
        )
        steps.append(eps)

        sampling = Step("Sampling steps and their Jacobians")
        sampling.text.append(f"DDPM: x_(t-1) = (x_t - beta_t / b eps*) / sqrt(1 - beta_t) + sqrt(beta_t) z = (x_t + beta_t score) / sqrt(alpha_t) + sigma_t z   (beta_t = {beta:.4g})")
        sampling.text.append("      d x_(t-1) / d x_t = (I + beta_t H) / sqrt(alpha_t), H = d score/dx")
        sampling.text.append("PF ODE (Euler, t -> t-1): x_(t-1) = x_t + beta_t / 2 (x_t + score);  d x_(t-1) / d x_t = I + beta_t / 2 (I + H)")
        sampling.latex.append(r"x_{t-1} = \frac{x_t + \beta_t \nabla\log p_t(x_t)}{\sqrt{\alpha_t}} + \sigma_t z, \qquad x_{t-1} = x_t + \tfrac{\beta_t}{2}\big(x_t + \nabla \log p_t(x_t)\big)")
        for label, quantity in (("DDPM step", DDPM_STEP), ("d DDPM step / dx_t", DDPM_JACOBIAN), ("PF-ODE step", PF_STEP), ("d PF-ODE step / dx_t", PF_JACOBIAN)):
            sampling.checks.append(check(label, quantity))
        steps.append(sampling)

        divergence = Step("Divergence: the trace of the drift's Jacobian")
        divergence.text.append("drift f(x) = -beta_t / 2 (x + score(x));  div f = tr(df/dx) = -beta_t / 2 (d + tr H)  (the log-likelihood change of the flow)")
        divergence.text.append("Hutchinson: tr(A) = E_v[v^T A v] for Rademacher v; v^T (df/dx) is one vector-Jacobian product, so the Jacobian is never formed")
        divergence.latex.append(r"\nabla\cdot f = \operatorname{tr}\frac{\partial f}{\partial x} = \mathbb{E}_v\big[v^\top \tfrac{\partial f}{\partial x} v\big]")
        divergence.checks.append(check(f"div f = {float(values['SymPy'][PF_DIVERGENCE].values[0]):.6g} (exact)", PF_DIVERGENCE))
        if problem.hutchinson_samples > 1:
            estimate, stderr = score_torch.hutchinson_divergence(problem, problem.hutchinson_samples, problem.seed)
            exact = float(values["SymPy"][PF_DIVERGENCE].values[0])
            gap = abs(float(estimate[0]) - exact)
            divergence.checks.append(
                Check(
                    f"Hutchinson, {problem.hutchinson_samples} vectors",
                    gap <= 5 * float(stderr[0]) + 1e-12,
                    f"estimate {float(estimate[0]):.6g} vs exact {exact:.6g}: gap {gap:.1e}, standard error {float(stderr[0]):.1e} (shrinks like 1/sqrt(samples))",
                )
            )
        steps.append(divergence)
    return Explanation(case.name, intro, steps)
