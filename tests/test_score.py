"""Score functions of (noised) Gaussian mixtures, the DDPM and probability-flow steps, Hutchinson."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from derivcheck.kinds.network.case import case_from_dict, load_case
from derivcheck.kinds.score.engines import finite_diff as score_fd, numpy_backprop as score_numpy, torch_autograd as score_torch
from derivcheck.errors import CaseError
from derivcheck.runner import run_any
from derivcheck.schedules import Schedule, numpy_schedule
from derivcheck.kinds.score.density import (
    DDPM_JACOBIAN, EPS_STAR, PF_DIVERGENCE, PF_JACOBIAN, PF_STEP, SCORE, SCORE_JACOBIAN, SCORE_QUANTITIES, Mixture, ScoreProblem,
)  # fmt: skip
from derivcheck.kinds.score.case import HUTCHINSON_ENGINE, run_score_problem
from derivcheck.strategies import diffusion_times, gaussian_mixtures
from helpers import CASES

ENGINES = ["symbolic", "finite_diff", "numpy", "torch"]
SCHEDULE = Schedule("linear", 1000)
MIXTURE = Mixture(np.array([0.6, 0.4]), np.array([[-1.0, 0.5], [1.2, -0.3]]), np.array([[[0.3, 0.1], [0.1, 0.2]], [[0.25, -0.05], [-0.05, 0.4]]]))


def problem_at(t: int, mixture: Mixture = MIXTURE, n: int = 6, seed: int = 0, hutchinson: int = 128) -> ScoreProblem:
    rng = np.random.default_rng(seed)
    abar = numpy_schedule(SCHEDULE)[1][t]
    x = np.sqrt(abar) * mixture.sample(rng, n) + np.sqrt(1 - abar) * rng.standard_normal((n, mixture.dim))
    return ScoreProblem(mixture, SCHEDULE, t, x, rng.standard_normal((n, mixture.dim)), hutchinson, seed)


def verdicts(result) -> dict[str, str]:
    return {q.name: q.verdict for q in result.quantities}


def test_shipped_score_case_agrees_at_every_time():
    case = load_case(CASES / "score-gaussian-mixture.toml")
    results = run_any(case)
    assert [r.meta["t"] for r in results] == case.times
    for result in results:
        assert result.verdict == "agree", result.name
        expected = SCORE_QUANTITIES if result.meta["t"] else SCORE_QUANTITIES[:3]
        assert [q.name for q in result.quantities] == list(expected)
        for q in result.quantities:
            assert set(ENGINES) <= set(q.engines)
    noised = [r for r in results if r.meta["t"] > 0]
    assert all(HUTCHINSON_ENGINE in next(q for q in r.quantities if q.name == PF_DIVERGENCE).engines for r in noised)


def test_single_gaussian_score_is_minus_precision_times_offset():
    mean, cov = np.array([0.5, -1.0]), np.array([[1.0, 0.3], [0.3, 0.5]])
    problem = problem_at(0, Mixture(np.ones(1), mean[None], cov[None]))
    result = run_score_problem(problem, ENGINES, SCORE_QUANTITIES)
    assert result.verdict == "agree"
    out = score_numpy.compute_score(problem, [SCORE, SCORE_JACOBIAN])
    expected = -np.linalg.solve(cov, (problem.points - mean).T).T
    np.testing.assert_allclose(out[SCORE].values, expected, rtol=1e-12)
    np.testing.assert_allclose(out[SCORE_JACOBIAN].values, np.broadcast_to(-np.linalg.inv(cov), (6, 2, 2)), rtol=1e-12)


def test_pf_ode_jacobian_trace_is_the_divergence():
    problem = problem_at(200)
    out = score_torch.compute_score(problem, [PF_JACOBIAN, PF_DIVERGENCE])
    beta = numpy_schedule(SCHEDULE)[0][200]
    jac = out[PF_JACOBIAN].values
    # pf step = x - f(x): its Jacobian is I - df/dx, so div f = d - trace(J)
    np.testing.assert_allclose(2 - np.trace(jac, axis1=1, axis2=2), out[PF_DIVERGENCE].values, rtol=1e-12, atol=1e-15 * beta)


@settings(max_examples=12, deadline=None)
@given(mixture=gaussian_mixtures(max_dim=2, max_components=2), t=st.one_of(st.just(0), diffusion_times(1000)), seed=st.integers(0, 2**16))
def test_engines_agree_on_drawn_mixtures_times_and_points(mixture, t, seed):
    problem = problem_at(t, mixture, n=3, seed=seed, hutchinson=64)
    result = run_score_problem(problem, ENGINES, SCORE_QUANTITIES)
    assert result.verdict == "agree", [(q.name, q.message) for q in result.quantities if q.verdict != "agree"]


def test_denoising_identity_holds_only_with_the_right_scale():
    """E[eps | x_t] by Gaussian conditioning equals -sqrt(1 - abar) * score, not -score."""
    problem = problem_at(400)
    abar = numpy_schedule(SCHEDULE)[1][400]
    score, _, r, _ = score_numpy.mixture_score(problem, abar, problem.points)
    eps = score_numpy.posterior_noise_mean(problem, abar, problem.points, r)
    np.testing.assert_allclose(eps, -np.sqrt(1 - abar) * score, rtol=1e-12, atol=1e-14)
    assert not np.allclose(eps, -score, rtol=1e-3)


def test_posterior_noise_mean_matches_monte_carlo_regression():
    """The optimal predictor is the conditional mean: binning samples of (x_t, eps) near a
    point and averaging eps approaches it (a check independent of any formula)."""
    t, n = 300, 400_000
    abar = numpy_schedule(SCHEDULE)[1][t]
    rng = np.random.default_rng(1)
    x0 = MIXTURE.sample(rng, n)
    eps = rng.standard_normal(x0.shape)
    xt = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * eps
    target = np.array([[-0.6, 0.3]])
    near = np.linalg.norm(xt - target, axis=1) < 0.05
    problem = ScoreProblem(MIXTURE, SCHEDULE, t, target, np.zeros_like(target))
    _, _, r, _ = score_numpy.mixture_score(problem, abar, target)
    exact = score_numpy.posterior_noise_mean(problem, abar, target, r)[0]
    estimate, stderr = eps[near].mean(axis=0), eps[near].std(axis=0) / np.sqrt(near.sum())
    assert near.sum() > 500
    assert np.all(np.abs(estimate - exact) < 4 * stderr + 0.02), (estimate, exact, stderr)


def test_hutchinson_error_shrinks_like_one_over_root_samples():
    problem = problem_at(500, n=4)
    exact = score_torch.compute_score(problem, [PF_DIVERGENCE])[PF_DIVERGENCE].values
    sizes = [8, 32, 128, 512]
    rms = []
    for samples in sizes:
        errors = [score_torch.hutchinson_divergence(problem, samples, seed)[0] - exact for seed in range(40)]
        rms.append(float(np.sqrt(np.mean(np.square(errors)))))
    slope = np.polyfit(np.log(sizes), np.log(rms), 1)[0]
    assert -0.65 < slope < -0.35, (slope, rms)
    estimate, stderr = score_torch.hutchinson_divergence(problem, 512, 0)
    assert np.all(np.abs(estimate - exact) < 5 * stderr)


def test_hutchinson_is_exact_for_a_diagonal_jacobian():
    isotropic = Mixture(np.ones(1), np.zeros((1, 2)), np.eye(2)[None] * 0.5)
    problem = problem_at(100, isotropic)
    exact = score_torch.compute_score(problem, [PF_DIVERGENCE])[PF_DIVERGENCE].values
    estimate, stderr = score_torch.hutchinson_divergence(problem, 16, 3)
    np.testing.assert_allclose(estimate, exact, rtol=1e-12)
    assert np.all(stderr < 1e-12)


# -- mutations: each seeded bug must be reported as a disagreement, blamed on numpy ---------


def _blamed(problem, quantity):
    result = run_score_problem(problem, ENGINES, SCORE_QUANTITIES)
    q = next(q for q in result.quantities if q.name == quantity)
    assert q.verdict == "disagree", q.message
    assert q.odd_engine == "numpy"
    return result


def test_mutation_score_without_covariance_inverse_is_caught(monkeypatch):
    def no_inverse(problem, abar, x):
        score, hessian, r, covs = original(problem, abar, x)
        mix = problem.mixture
        diff = x[:, None, :] - np.sqrt(abar) * mix.means[None]
        return np.einsum("nk,nki->ni", r, -diff), hessian, r, covs

    original = score_numpy.mixture_score
    monkeypatch.setattr(score_numpy, "mixture_score", no_inverse)
    result = _blamed(problem_at(0), SCORE)
    assert "numpy" in next(q for q in result.quantities if q.name == SCORE).message


def test_mutation_pf_step_with_wrong_sign_on_the_score_is_caught(monkeypatch):
    def wrong_sign(x, score, hessian, beta):
        step, jac, div = original(x, score, hessian, beta)
        return x + 0.5 * beta * (x - score), jac, div

    original = score_numpy.pf_ode_step
    monkeypatch.setattr(score_numpy, "pf_ode_step", wrong_sign)
    _blamed(problem_at(300), PF_STEP)


def test_mutation_schedule_with_beta_instead_of_abar_is_caught(monkeypatch):
    def beta_for_abar(schedule):
        beta, abar = original(schedule)
        return beta, 1 - beta

    original = score_numpy.numpy_schedule
    monkeypatch.setattr(score_numpy, "numpy_schedule", beta_for_abar)
    _blamed(problem_at(300), EPS_STAR)


def test_mutation_ddpm_step_jacobian_missing_alpha_scaling_is_caught(monkeypatch):
    def unscaled(x, eps, d_eps, beta, abar, z):
        step, jac = original(x, eps, d_eps, beta, abar, z)
        return step, jac * np.sqrt(1 - beta)

    original = score_numpy.ddpm_step
    monkeypatch.setattr(score_numpy, "ddpm_step", unscaled)
    _blamed(problem_at(600), DDPM_JACOBIAN)


def test_biased_divergence_estimator_is_caught(monkeypatch):
    """A Hutchinson estimate that forgets the second v (sum of the VJP) is biased."""

    def biased(problem, samples, seed, device="cpu"):
        estimate, stderr = original(problem, samples, seed, device)
        return estimate + 0.5, stderr

    original = score_torch.hutchinson_divergence
    monkeypatch.setattr(score_torch, "hutchinson_divergence", biased)
    result = run_score_problem(problem_at(300), ENGINES, [PF_DIVERGENCE])
    assert result.quantities[0].verdict == "disagree"
    assert result.quantities[0].odd_engine == HUTCHINSON_ENGINE


def test_fd_engine_reports_error_estimates():
    problem = problem_at(50)
    out = score_fd.compute_score(problem, [SCORE, SCORE_JACOBIAN])
    exact = score_numpy.compute_score(problem, [SCORE, SCORE_JACOBIAN])
    for q in (SCORE, SCORE_JACOBIAN):
        actual = np.abs(out[q].values - exact[q].values)
        assert np.all(actual <= 10 * out[q].error_estimate + 1e-12)
        assert np.max(out[q].error_estimate) < 1e-5


def test_torch_func_is_skipped_with_a_reason():
    result = run_score_problem(problem_at(10), ["numpy", "torch", "torch_func"], [SCORE])
    assert result.quantities[0].skipped["torch_func"].startswith("torch_func does not compute")


# -- case files ---------------------------------------------------------------------------

BASE = {
    "name": "s",
    "density": {"mean": [0.0, 1.0], "covariance": [[1.0, 0.3], [0.3, 0.5]]},
    "diffusion": {"schedule": "linear", "steps": 100, "times": [0, 5]},
    "points": 3,
}


def test_gaussian_case_runs_one_result_per_time():
    results = run_any(case_from_dict(BASE))
    assert [r.name for r in results] == ["s[t=0]", "s[t=5]"]
    assert all(r.verdict == "agree" for r in results)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"density": {"mean": [0.0], "covariance": [[-1.0]]}}, "not positive definite"),
        ({"density": {"mean": [0.0, 1.0], "covariance": [[1.0, 0.5], [0.3, 0.5]]}}, "not symmetric"),
        ({"density": {"weights": [0.5, 0.6], "means": [[0.0], [1.0]], "covariances": [[[1.0]], [[1.0]]]}}, "sum to 1"),
        ({"density": {"weights": [1.0], "means": [[0.0, 1.0]], "covariances": [[[1.0]]]}}, "shapes do not fit"),
        ({"density": {"mean": "zero", "covariance": [[1.0]]}}, "density.mean"),
        ({"density": {"mean": [0.0], "covariance": [[1.0]], "skew": 1}}, "unknown key"),
        ({"diffusion": {"schedule": "quadratic"}}, "unknown schedule"),
        ({"diffusion": {"steps": 100, "times": [0, 101]}}, "distinct timesteps"),
        ({"diffusion": {"schedule": "linear", "beta_start": 0.5, "beta_end": 0.1}}, "beta_start <= beta_end"),
        ({"points": 0}, "points"),
        ({"hutchinson": 1}, "hutchinson"),
        ({"quantities": ["laplacian"]}, "unknown quantity"),
        ({"engines": ["numpy"]}, "engines"),
    ],
)
def test_bad_score_cases_name_the_key(change, fragment):
    with pytest.raises(CaseError) as info:
        case_from_dict({**BASE, **change}, file="bad.toml")
    assert fragment in str(info.value)
    assert "bad.toml" in str(info.value)


@pytest.mark.cuda
@pytest.mark.skipif(not __import__("derivcheck.engines", fromlist=["cuda_available"]).cuda_available(), reason="needs a CUDA GPU")
def test_score_quantities_on_cuda_agree_with_cpu():
    problem = problem_at(300)
    result = run_score_problem(problem, ENGINES, SCORE_QUANTITIES, device="cuda")
    assert result.verdict == "agree"
    assert result.meta["device"] == "cuda"
