"""Non-differentiable points: exact kinks are reported as ``kink``, and finite differences
that step across a kink are excluded rather than blamed."""

from __future__ import annotations

import numpy as np

from derivcheck import cli, find_kinks, run_problem
from derivcheck.engines import NETWORK_ENGINES, make_engines

from helpers import make_problem

SPECS = [("linear", {"in": 3, "out": 4}), ("relu", {}), ("linear", {"in": 4, "out": 2})]


def _engines():
    return make_engines(list(NETWORK_ENGINES))


def test_exact_kink_is_reported_as_kink():
    problem = make_problem(SPECS, batch=4)
    # unit 2 of the hidden layer has pre-activation exactly 0 for sample 1
    problem.params["0.weight"][2] = 0.0
    problem.params["0.bias"][2] = 0.0
    problem.params["0.weight"][2, 0] = 1.0
    problem.x[1, 0] = 0.0
    kinks = find_kinks(problem)
    assert [(k.layer, k.sample, k.unit) for k in kinks] == [(1, 1, 2)]
    result = run_problem(problem, _engines(), ["L", "dL/dparams", "dL/dx", "dy/dx"])
    verdicts = {q.name: q.verdict for q in result.quantities}
    assert verdicts["L"] == "agree"  # the value is continuous
    assert verdicts["dL/d0.weight"] == "kink"
    assert verdicts["dL/dx"] == "kink" and verdicts["dy/dx"] == "kink"
    assert result.verdict == "kink" and result.ok
    assert "layer 1 (relu) unit 2, sample 1" in result.kinks[0]
    dx = {q.name: q for q in result.quantities}["dL/dx"]
    assert dx.kinks == 3  # the three input features of sample 1 were not compared
    # the other samples were compared and agree
    assert all(p.agree for p in dx.pairs) and all(p.compared == 9 for p in dx.pairs)


def test_disagreement_elsewhere_beats_kink(monkeypatch):
    from derivcheck.layers.linear import Linear

    problem = make_problem(SPECS, batch=4)
    problem.params["0.weight"][2] = 0.0
    problem.params["0.bias"][2] = 0.0
    problem.params["0.weight"][2, 0] = 1.0
    problem.x[1, 0] = 0.0  # only sample 1 sits at the kink
    original = Linear.numpy_backward

    def scaled(self, grad_y, cache, params):
        gx, g = original(self, grad_y, cache, params)
        return gx * 1.5, g

    monkeypatch.setattr(Linear, "numpy_backward", scaled)
    result = run_problem(problem, _engines(), ["dL/dx"])
    assert result.quantities[0].verdict == "disagree"


def test_fd_step_crossing_a_kink_is_excluded_not_blamed():
    problem = make_problem(SPECS, batch=3)
    # pre-activation of unit 0, sample 0 is 1e-9: within the FD step, but not a kink
    w = problem.params["0.weight"]
    b = problem.params["0.bias"]
    b[0] = 1e-9 - float(w[0] @ problem.x[0])
    assert not find_kinks(problem)
    result = run_problem(problem, _engines(), ["dL/dparams", "dL/dx"])
    for q in result.quantities:
        assert q.verdict == "agree", q.message
    excluded = {q.name: q.excluded for q in result.quantities}
    assert "crossed a kink" in excluded["dL/dx"]["finite_diff"]
    assert "crossed a kink" in excluded["dL/d0.weight"]["finite_diff"]


def test_kink_case_exits_0(tmp_path, capsys):
    case = tmp_path / "kink.toml"
    case.write_text(
        """
name = "zero-init"
network = [{ layer = "linear", in = 2, out = 3 }, { layer = "relu" }, { layer = "linear", in = 3, out = 1 }]
loss = "mse"
inputs = { batch = 2 }
"""
    )
    # a case whose hidden pre-activations are all exactly 0: every gradient is at a kink
    from derivcheck import load_case, run_case

    loaded = load_case(case)
    loaded.problem.params["0.weight"][:] = 0.0
    loaded.problem.params["0.bias"][:] = 0.0
    (result,) = run_case(loaded)
    assert result.verdict == "kink"
    assert np.all([q.verdict in ("kink", "agree") for q in result.quantities])
    assert cli.main(["run", str(case)]) == 0
