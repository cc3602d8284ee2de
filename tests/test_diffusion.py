"""DDPM schedules, the ddpm_noise and time_embedding layers, toy data and the DDPM training-step case."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from derivcheck.kinds.network.case import case_from_dict, load_case
from derivcheck.engines import NETWORK_ENGINES, make_engines
from derivcheck.errors import CaseError
from derivcheck.layers import diffusion
from derivcheck.problem import Network, Problem
from derivcheck.runner import run_any, run_problem
from derivcheck.schedules import Schedule, numpy_schedule, sympy_schedule, torch_schedule
from derivcheck.toy_data import sample_points
from helpers import CASES, layer

QUANTITIES = ["L", "dL/dparams", "dL/dx", "dy/dx"]


@pytest.mark.parametrize("schedule", [Schedule("linear", 1000), Schedule("cosine", 1000), Schedule("linear", 50, 1e-3, 0.05), Schedule("cosine", 20)])
def test_three_schedule_implementations_agree(schedule):
    beta, abar = numpy_schedule(schedule)
    s_beta, s_abar = (np.array([float(v) for v in a]) for a in sympy_schedule(schedule))
    t_beta, t_abar = (a.numpy() for a in torch_schedule(schedule))
    # cosine betas are 1 - f(t)/f(t-1): float64 cancellation costs eps / beta (~5e-12 relative)
    np.testing.assert_allclose(beta, s_beta, rtol=1e-10, atol=1e-17)
    np.testing.assert_allclose(t_beta, s_beta, rtol=1e-10, atol=1e-17)
    np.testing.assert_allclose(abar, s_abar, rtol=1e-12)
    np.testing.assert_allclose(t_abar, s_abar, rtol=1e-12)
    assert abar[0] == 1 and np.all(np.diff(abar) < 0) and beta.shape == (schedule.steps + 1,)


def test_schedule_values_from_the_papers():
    beta, abar = numpy_schedule(Schedule("linear", 1000))
    assert beta[1] == pytest.approx(1e-4) and beta[1000] == pytest.approx(0.02)
    assert abar[1000] == pytest.approx(4.0358e-5, rel=1e-3)  # Ho et al.: abar_T ~ 4e-5
    beta, abar = numpy_schedule(Schedule("cosine", 1000))
    assert beta[1000] == pytest.approx(0.999)  # clipped
    u = np.arange(1001) / 1000
    f = np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(abar[:990], (f / f[0])[:990], rtol=1e-12)  # = f(t)/f(0) before clipping matters


@pytest.mark.parametrize("bad", [Schedule("quadratic"), Schedule("linear", 1), Schedule("linear", 100, 0.3, 0.1)])
def test_invalid_schedules_say_why(bad):
    assert bad.check()


def test_shipped_ddpm_case_agrees_and_targets_are_the_noise():
    case = load_case(CASES / "diffusion-ddpm-step.toml")
    first = case.problem.network.layers[0]
    eps, t = first.draws(case.problem.batch)
    np.testing.assert_array_equal(case.problem.targets, eps)
    assert len(set(t.tolist())) > 1 and t.min() >= 1 and t.max() <= 1000
    (result,) = run_any(case)
    assert result.verdict == "agree"
    assert {q.name for q in result.quantities} >= {"L", "dL/dx", "dy/dx", "dL/d2.weight", "dL/d6.bias"}
    for q in result.quantities:
        assert set(q.engines) == set(NETWORK_ENGINES)
        assert q.max_rel_error_exact < 1e-12


def test_ddpm_layer_output_is_the_forward_process():
    noise = layer("ddpm_noise", **{"in": 2, "t": 250, "seed": 3})
    Network.build([noise])
    x0 = np.random.default_rng(0).standard_normal((5, 2))
    y, _ = noise.numpy_forward(x0, {})
    eps, t = noise.draws(5)
    abar = numpy_schedule(noise.schedule)[1][250]
    np.testing.assert_allclose(y[:, :2], np.sqrt(abar) * x0 + np.sqrt(1 - abar) * eps)
    np.testing.assert_array_equal(y[:, 2], 250)
    torch_y = noise.torch_module()(torch.tensor(x0)).numpy()
    np.testing.assert_allclose(torch_y, y, rtol=1e-14)


def test_first_draws_do_not_depend_on_the_batch_size():
    eps_small, t_small = diffusion.diffusion_draws(5, 1, 2, 1000, 0)
    eps_big, t_big = diffusion.diffusion_draws(5, 32, 2, 1000, 0)
    np.testing.assert_array_equal(eps_small[0], eps_big[0])
    assert t_small[0] == t_big[0]


def test_time_embedding_matches_the_reference_formula():
    emb = layer("time_embedding", dim=6, max_period=10000.0)
    Network.build([emb], in_size=2)
    x = np.array([[0.3, 7.0], [-1.0, 500.0]])
    y, _ = emb.numpy_forward(x, {})
    freqs = np.exp(-np.log(10000.0) * np.arange(3) / 3)
    np.testing.assert_allclose(y, np.column_stack([x[:, 0], np.sin(x[:, 1:] * freqs), np.cos(x[:, 1:] * freqs)]))


def _problem(schedule: str, t: int, batch: int, seed: int, dim: int = 4) -> Problem:
    layers = [
        layer("ddpm_noise", **{"in": 2, "schedule": schedule, "steps": 200, "t": t, "seed": seed}),
        layer("time_embedding", dim=dim),
        layer("linear", **{"in": 2 + dim, "out": 5}),
        layer("silu"),
        layer("linear", **{"in": 5, "out": 2}),
    ]
    network = Network.build(layers)
    rng = np.random.default_rng(seed)
    x = sample_points("two_moons", rng, batch, 2)
    from derivcheck.layers import LOSSES

    return Problem(network, network.init_params(seed), x, LOSSES["mse"](), layers[0].draws(batch)[0])


@settings(max_examples=10, deadline=None)
@given(schedule=st.sampled_from(["linear", "cosine"]), t=st.integers(0, 200), batch=st.integers(1, 6), seed=st.integers(0, 1000))
def test_engines_agree_on_drawn_times_schedules_and_batches(schedule, t, batch, seed):
    result = run_problem(_problem(schedule, t, batch, seed), make_engines(list(NETWORK_ENGINES)), QUANTITIES)
    assert result.verdict == "agree", [(q.name, q.message) for q in result.quantities if q.verdict != "agree"]


def _assert_numpy_blamed(problem, names=("L", "dL/dx")):
    result = run_problem(problem, make_engines(list(NETWORK_ENGINES)), QUANTITIES)
    by_name = {q.name: q for q in result.quantities}
    for name in names:
        assert by_name[name].verdict == "disagree", (name, by_name[name].message)
        assert by_name[name].odd_engine in ("numpy", None), by_name[name].odd_engine
    return by_name


def test_mutation_forward_process_with_beta_instead_of_abar_is_caught(monkeypatch):
    """x_t = sqrt(beta_t) x0 + sqrt(1 - beta_t) eps: a classic slip; the numpy forward (and
    the finite differences that perturb it) then disagree with SymPy and torch."""

    def betas_as_abar(schedule):
        return numpy_schedule(schedule)[0]

    monkeypatch.setattr(diffusion, "_numpy_coefficients", betas_as_abar)
    by_name = _assert_numpy_blamed(_problem("linear", 0, 4, 1))
    assert "numpy" in by_name["L"].message


def test_mutation_time_embedding_backward_without_frequency_is_caught(monkeypatch):
    def no_frequency(self, grad_y, cache, params):
        angles, w = cache
        return original(self, grad_y, (angles, np.ones_like(w)), params)

    original = diffusion.TimeEmbedding.numpy_backward
    monkeypatch.setattr(diffusion.TimeEmbedding, "numpy_backward", no_frequency)
    # the time column is not an input of the network; dL/dparams of the first linear reads
    # the embedding's forward only, so compare dL/dt through a network that starts at t
    emb, lin = layer("time_embedding", dim=4), layer("linear", **{"in": 5, "out": 1})
    network = Network.build([emb, lin], in_size=2)
    from derivcheck.layers import LOSSES

    x = np.array([[0.2, 3.0], [0.5, 40.0], [-1.0, 7.5]])
    problem = Problem(network, network.init_params(0), x, LOSSES["mse"](), np.zeros((3, 1)))
    result = run_problem(problem, make_engines(list(NETWORK_ENGINES)), ["dL/dx"])
    assert result.quantities[0].verdict == "disagree"
    assert result.quantities[0].odd_engine == "numpy"


def test_toy_distributions_are_seeded_and_shaped():
    a = sample_points("two_moons", np.random.default_rng(0), 100, 2)
    b = sample_points("two_moons", np.random.default_rng(0), 100, 2)
    np.testing.assert_array_equal(a, b)
    assert abs(a.mean(axis=0)).max() < 0.3
    ring = sample_points("ring", np.random.default_rng(1), 500, 2, noise=0.0)
    np.testing.assert_allclose(np.linalg.norm(ring, axis=1), 1.0)
    with pytest.raises(ValueError, match="2-D"):
        sample_points("ring", np.random.default_rng(0), 5, 3)


BASE = {
    "network": [{"layer": "ddpm_noise", "in": 2}, {"layer": "time_embedding", "dim": 4}, {"layer": "linear", "in": 6, "out": 2}],
    "loss": "mse",
    "inputs": {"batch": 4, "distribution": "ring", "targets": "noise"},
}


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"network": [{"layer": "linear", "in": 2, "out": 2}]}, "ddpm_noise"),
        ({"loss": "cross_entropy"}, "mse"),
        ({"network": BASE["network"][:2] + [{"layer": "linear", "in": 6, "out": 3}]}, "must output 2"),
        ({"inputs": {"batch": 4, "distribution": "spiral"}}, "inputs.distribution"),
        ({"network": [{"layer": "ddpm_noise", "in": 2, "t": 2000}] + BASE["network"][1:]}, "t must be 0"),
        ({"network": [{"layer": "ddpm_noise", "in": 2, "schedule": "sqrt"}] + BASE["network"][1:]}, "schedule"),
        ({"network": [{"layer": "ddpm_noise", "in": 2, "beta_start": 0.1, "beta_end": 0.01}] + BASE["network"][1:]}, "beta_start <= beta_end"),
        ({"network": [{"layer": "ddpm_noise", "in": 2}, {"layer": "time_embedding", "dim": 3}]}, "even integer"),
        ({"network": [{"layer": "ddpm_noise", "in": 3}, {"layer": "time_embedding", "dim": 4}, {"layer": "linear", "in": 7, "out": 3}]}, "2-D"),
    ],
)
def test_bad_diffusion_cases_name_the_key(change, fragment):
    with pytest.raises(CaseError) as info:
        case_from_dict({**BASE, **change}, file="bad.toml")
    assert fragment in str(info.value)


def test_noise_target_case_runs():
    (result,) = run_any(case_from_dict(BASE))
    assert result.verdict == "agree"
