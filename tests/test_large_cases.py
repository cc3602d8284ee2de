"""Cases at the sizes people train: the digits MLP (26,122 parameters) and a PINN of the
papers' size ([2, 50, 50, 50, 1], 1,000 points); directional finite differences above
4,096 parameters; score and field derivations in the compile cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

import derivcheck as dc
from derivcheck import compile_cache
from derivcheck.quantities import PARAM_DIRECTIONS_NAME
from helpers import CASES, make_problem


@pytest.fixture(scope="module")
def digits():
    (result,) = dc.run_case(dc.load_case(CASES / "digits-mlp.toml"))
    return result


def test_the_digits_mlp_agrees_across_every_engine(digits):
    assert digits.verdict == "agree"
    by_name = {q.name: q for q in digits.quantities}
    directions = by_name[PARAM_DIRECTIONS_NAME]
    assert set(directions.engines) == {"symbolic", "finite_diff", "numpy", "torch"} and directions.verdict == "agree"
    weight = by_name["dL/d2.weight"]
    assert set(weight.engines) == {"symbolic", "numpy", "torch"} and weight.max_rel_error_exact < 1e-12
    assert "26,122 parameters" in weight.skipped["finite_diff"] and PARAM_DIRECTIONS_NAME in weight.skipped["finite_diff"]
    for name in ("dL/dx", "dy/dx"):
        assert set(by_name[name].engines) == {"symbolic", "finite_diff", "numpy", "torch"}


def test_a_wrong_backward_in_a_large_network_is_caught_through_the_directions(monkeypatch):
    """tanh' = 1 - t instead of 1 - t^2 in the numpy engine: numpy is the odd engine out
    in the full gradients and in the projections finite differences check."""
    from derivcheck.layers.activations import Tanh

    monkeypatch.setattr(Tanh, "numpy_backward", lambda self, g, cache, params: (g * (1 - cache), {}))
    (result,) = dc.run_case(dc.load_case(CASES / "digits-mlp.toml", {"engines": ["symbolic", "finite_diff", "numpy"]}))
    by_name = {q.name: q for q in result.quantities}
    assert by_name[PARAM_DIRECTIONS_NAME].verdict == "disagree" and by_name[PARAM_DIRECTIONS_NAME].odd_engine == "numpy"
    assert by_name["dL/d0.weight"].verdict == "disagree"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_tiny_output_beside_large_ones_is_no_false_alarm(dtype):
    """Finite differences bound an output's rounding by its sample's largest output: an
    output of 5e-4 beside outputs of 0.3 carries the rounding of the 0.3-sized sums (judged
    by its own size, the digits MLP's dy/dx was a false alarm at 1 entry in 12,800)."""
    from derivcheck.engines import FiniteDifferences
    from derivcheck.engines.finite_diff.network import EPS
    from derivcheck.quantities import expand_quantities

    problem = make_problem([("linear", {"in": 6, "out": 32}), ("tanh", {}), ("linear", {"in": 32, "out": 3})], batch=8, dtype=dtype)
    problem.params["2.weight"][1] *= 1e-3  # output 1 is three orders below the others
    problem.params["2.bias"][1] = 0.0
    engine = FiniteDifferences()
    estimate = engine.compute(problem, expand_quantities(["dy/dx"], problem))["dy/dx"].error_estimate
    y = engine._evaluate(problem, problem.params, problem.x).y
    h = engine.step * np.maximum(1.0, np.abs(problem.x))  # (N, in)
    floor = 10 * EPS * np.abs(y).max(axis=1)[:, None] / (h * 0.25)
    assert np.all(estimate[:, 1, :] >= 0.99 * floor)
    result = dc.run_problem(problem, dc.make_engines(["symbolic", "finite_diff", "numpy", "torch"]), ["dy/dx", "dL/dx"])
    assert result.verdict == "agree", [(q.name, q.message) for q in result.quantities]


def test_the_pinn_of_the_papers_size_agrees_and_finite_differences_check_directions():
    results = dc.run_case(dc.load_case(CASES / "pde" / "helmholtz-pinn.toml"))
    assert [r.verdict for r in results] == ["agree", "agree"]
    network = next(r for r in results if r.name.endswith("[network]"))
    by_name = {q.name: q for q in network.quantities}
    for term in ("r", "b"):
        q = by_name[f"dL{term}/dparams·v"]
        assert {"finite_diff", "torch", "torch_func"} <= set(q.engines) and q.verdict == "agree"
    laplacian = by_name["laplacian(u)"]
    assert {"symbolic", "finite_diff", "numpy", "torch", "torch_func"} == set(laplacian.engines)
    assert laplacian.max_rel_error_exact < 1e-12


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setitem(compile_cache._settings, "directory", tmp_path / "cache")
    monkeypatch.setitem(compile_cache._settings, "enabled", True)
    return tmp_path / "cache"


def test_score_derivations_are_cached_and_a_tampered_entry_is_rejected(cache, monkeypatch):
    from derivcheck.kinds.score.engines import symbolic as score_symbolic

    monkeypatch.setattr(score_symbolic, "_CACHE", {})
    case = dc.load_case(CASES / "score-gaussian-mixture.toml")
    cold = [r.to_dict() for r in dc.run_case(case)]
    entries = sorted(cache.glob("*.json"))
    assert len(entries) == 4  # one per time
    score_symbolic._CACHE.clear()
    writes, hits = compile_cache.stats()["writes"], compile_cache.stats()["hits"]
    warm = [r.to_dict() for r in dc.run_case(case)]
    assert compile_cache.stats()["writes"] == writes and compile_cache.stats()["hits"] == hits + 4
    assert warm == cold
    wrapper = json.loads(entries[0].read_text())
    wrapper["payload"] = wrapper["payload"].replace("return", "return 2*", 1)
    entries[0].write_text(json.dumps(wrapper))
    score_symbolic._CACHE.clear()
    rejected = compile_cache.stats()["rejected"]
    again = [r.to_dict() for r in dc.run_case(case)]
    assert compile_cache.stats()["rejected"] == rejected + 1 and again == cold


def test_field_derivations_are_cached(cache):
    case = dc.load_case(CASES / "pde" / "heat-1d.toml")
    cold = [r.to_dict() for r in dc.run_case(case)]
    written = len(list(cache.glob("*.json")))
    assert written > 0
    writes, hits = compile_cache.stats()["writes"], compile_cache.stats()["hits"]
    warm = [r.to_dict() for r in dc.run_case(case)]
    assert compile_cache.stats()["writes"] == writes and compile_cache.stats()["hits"] >= hits + written
    assert len(list(cache.glob("*.json"))) == written and warm == cold
    assert np.isfinite(warm[0]["quantities"][0]["max_rel_error"])
