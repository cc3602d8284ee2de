"""PDE cases: every engine agrees on operators and residuals, seeded residual bugs are
caught even at a few percent of the residual's scale, and bad input is named precisely."""

from __future__ import annotations

import dataclasses

import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from derivcheck import CaseError, case_from_dict, cli, load_case
from derivcheck.engines import TorchAutograd, make_engines
from derivcheck.devices import cuda_available
from derivcheck.fields import FieldProblem, field_quantities
from derivcheck.kinds.pde.case import FIELD_ENGINES, FieldCase
from derivcheck.runner import ZERO_ENGINE, run_any, run_field_problem

from helpers import CASES

PDE_CASES = sorted((CASES / "pde").glob("*.toml"))

HELMHOLTZ = {
    "name": "helmholtz",
    "variables": ["x", "y"],
    "constants": {"a1": 1, "a2": 4, "k": 1},
    "solution": "sin(a1*pi*x) * sin(a2*pi*y)",
    "pde": "laplacian(u) + k**2 * u - f",
    "domain": {"x": [-1, 1], "y": [-1, 1]},
    "points": {"count": 16},
    "network": {"widths": [2, 6, 6, 1]},
}


@pytest.mark.parametrize("path", PDE_CASES, ids=lambda p: p.stem)
def test_shipped_pde_case_agrees(path):
    case = load_case(path)
    assert isinstance(case, FieldCase)
    for result in run_any(case):
        assert result.verdict == "agree", [(q.name, q.message) for q in result.quantities if q.verdict != "agree"]
        directional = any(q.name.endswith("dparams·v") for q in result.quantities)
        for q in result.quantities:
            if directional and (q.name.startswith(("dLr/d", "dLb/d")) and not q.name.endswith("·v") or q.name == "lambda_hat"):
                # above 4,096 parameters finite differences check the directions instead
                assert set(q.engines) == {"torch", "torch_func"} and "finite_diff" in q.skipped, (q.name, q.engines)
                continue
            assert len(q.engines) >= 3, (q.name, q.engines, q.skipped)
            if q.max_rel_error_exact is not None:
                assert q.max_rel_error_exact < 1e-11, (result.name, q.name, q.max_rel_error_exact)


def test_cli_runs_pde_folder(capsys):
    assert cli.main(["run", str(CASES / "pde"), "-q"]) == 0
    assert "16 case(s): 16 agree" in capsys.readouterr().out


def test_mms_forcing_is_derived_and_residual_vanishes():
    case = case_from_dict(HELMHOLTZ)
    spec = case.problems[0].spec
    x, y = spec.variable_symbols
    forcing = spec.derived_forcing()["residual"].subs(spec.constant_values())
    expected = (1 - 17 * sp.pi**2) * sp.sin(sp.pi * x) * sp.sin(4 * sp.pi * y)
    assert sp.simplify(forcing - expected) == 0
    (exact, network) = run_any(case)
    residual = {q.name: q for q in exact.quantities}["residual"]
    assert ZERO_ENGINE in residual.engines and residual.verdict == "agree"


def _mutated(table: dict, pde: str, forcing: str | None = None) -> FieldCase:
    mutated = dict(table, pde=pde)
    if forcing is not None:
        mutated["forcing"] = forcing
    return case_from_dict(mutated)


class MutatedTorch(TorchAutograd):
    """The torch engine evaluating a *wrong* residual (as a buggy PINN implementation
    would) under the correct quantity names."""

    def __init__(self, wrong: FieldProblem):
        super().__init__()
        self.wrong = wrong

    def compute(self, problem, quantities):
        wrong = {q.name: q for q in field_quantities(self.wrong, None)}
        swapped = [dataclasses.replace(q, expr=wrong[q.name].expr) if q.name in wrong and q.kind == "residual" else q for q in quantities]
        return super().compute(self.wrong, swapped)


FORCING = {
    "helmholtz": "-(a1*pi)**2*sin(a1*pi*x)*sin(a2*pi*y) - (a2*pi)**2*sin(a1*pi*x)*sin(a2*pi*y) + k**2*sin(a1*pi*x)*sin(a2*pi*y)",
}

MUTANTS = [
    # (description, base table, correct pde, mutated pde, forcing of the correct pde)
    ("dropped k^2 u", HELMHOLTZ, "laplacian(u) - f", FORCING["helmholtz"]),
    ("sign flip on u_xx", HELMHOLTZ, "-d(u,x,2) + d(u,y,2) + k**2*u - f", FORCING["helmholtz"]),
    (
        "missing mixed derivative",
        dict(HELMHOLTZ, pde="d(u,x,2) + d(u,y,2) + c*d(u,x,y) - f", constants={"a1": 1, "a2": 4, "k": 1, "c": 0.1}),
        "d(u,x,2) + d(u,y,2) - f",
        "-(a1*pi)**2*sin(a1*pi*x)*sin(a2*pi*y) - (a2*pi)**2*sin(a1*pi*x)*sin(a2*pi*y) + c*a1*a2*pi**2*cos(a1*pi*x)*cos(a2*pi*y)",
    ),
]


@pytest.mark.parametrize(("what", "table", "wrong_pde", "forcing"), MUTANTS, ids=[m[0] for m in MUTANTS])
@pytest.mark.parametrize("kind", ["exact", "network"])
def test_residual_bug_is_caught(what, table, wrong_pde, forcing, kind):
    table = dict(table, forcing=forcing)
    case = case_from_dict(table)
    wrong = _mutated(table, wrong_pde, forcing)
    index = 0 if kind == "exact" else 1
    problem, wrong_problem = case.problems[index], wrong.problems[index]
    engines = [e for e in make_engines(list(FIELD_ENGINES)) if e.name != "torch"] + [MutatedTorch(wrong_problem)]
    result = run_field_problem(problem, engines, ["residual"])
    (residual,) = result.quantities
    assert residual.verdict == "disagree", residual.message
    assert residual.odd_engine == "torch", residual.message
    # the bug is small against the PDE's scale: the checker still sees it
    relative = residual.max_rel_error
    assert relative < 0.2, relative


def test_forcing_missing_one_over_sigma_is_caught():
    table = {
        "variables": ["x", "t"],
        "constants": {"sigma": 1.05},
        "solution": "sin(pi*x) * exp(-t)",
        "pde": "d(u,t) - d(u,x,2)/sigma - f",
        # the hand-written forcing forgot the 1/sigma on the diffusion term
        "forcing": "-sin(pi*x)*exp(-t) + pi**2*sin(pi*x)*exp(-t)",
        "domain": {"x": [0, 1], "t": [0, 1]},
        "points": {"count": 16},
        "check": ["exact"],
    }
    (result,) = run_any(case_from_dict(table))
    by_name = {q.name: q for q in result.quantities}
    forcing = by_name["forcing"]
    assert forcing.verdict == "disagree" and forcing.odd_engine == "forcing (case file)"
    assert 0.01 < forcing.max_rel_error < 0.1  # a few percent of the forcing's scale
    residual = by_name["residual"]
    assert residual.verdict == "disagree" and residual.odd_engine == ZERO_ENGINE


def test_non_smooth_solution_reports_kinks():
    table = {
        "variables": ["x", "y"],
        "solution": "abs(x) * y + max(y, 0.5)",
        "pde": "laplacian(u) - f",
        "domain": {"x": [-1, 1], "y": [-1, 1]},
        "points": {"values": [[0.0, 0.3], [0.4, 0.5], [0.3, -0.2], [1e-6, 0.2], [-0.6, 0.7]]},
        "check": ["exact"],
    }
    (result,) = run_any(case_from_dict(table))
    assert result.verdict == "kink", [(q.name, q.message) for q in result.quantities]
    assert result.kinks == ["point 0 (0, 0.3)", "point 1 (0.4, 0.5)"]
    u_xx = {q.name: q for q in result.quantities}["u_xx"]
    assert u_xx.kinks == 2
    # the point 1e-6 from the kink is a valid point, but its stencil straddles the kink
    assert "straddles a kink" in u_xx.excluded["finite_diff"]


def test_a_solution_that_blows_up_at_a_point_is_refused_with_its_location():
    table = {
        "variables": ["x"],
        "solution": "log(x)",
        "pde": "d(u,x,2) - f",
        "domain": {"x": [-1, 1]},
        "points": {"values": [[0.5], [-0.5]]},
        "check": ["exact"],
    }
    # a solution outside its real domain at a point is refused before anything runs, naming the point
    with pytest.raises(CaseError, match=r"not a finite real number at the point x = -0\.5"):
        case_from_dict(table)


BAD = [
    ({"pde": "d(u, z) - f"}, ["'z' is not a declared variable", "declared variables: x, y"]),
    ({"pde": "d(u, x, 5) - f"}, ["order 5 is beyond the supported maximum 4"]),
    ({"pde": "d(u, x, 2, y, 2, x) - f"}, ["order 5 is beyond"]),
    ({"pde": "laplacian(u, u) - f"}, ["laplacian() takes 1 argument"]),
    ({"pde": "div(u) - f"}, ["div() takes one component per spatial variable"]),
    ({"pde": "d(u) - f"}, ["d() needs an expression and at least one variable"]),
    ({"pde": "d(u, 2) - f"}, ["an order must follow a variable"]),
    ({"pde": "laplacian(w) - f"}, ["unknown name 'w'"]),
    ({"pde": "laplacian(u) - f**2"}, ["affine in its source"]),
    ({"pde": "f*laplacian(u)"}, ["coefficient of f", "must be a constant"]),
    ({"pde": "laplacian(u) - x*f"}, ["must be a constant"]),
    ({"solution": "d(u, x)"}, ["unknown function 'd'"]),
    ({"solution": "__import__('os')"}, ["dunder name"]),
    ({"domain": {"x": [1, -1], "y": [0, 1]}}, ["domain.x", "low < high"]),
    ({"domain": {"x": [0, 1]}}, ["domain.y"]),
    ({"points": {"count": 0}}, ["points.count"]),
    ({"points": {"values": [[1, 2, 3]]}}, ["points.values", "2 coordinates"]),
    ({"network": {"widths": [3, 4, 1]}}, ["network.widths", "must start with 2"]),
    ({"network": {"widths": [2, 4, 1], "activation": "relu"}}, ["network.activation", "smooth second derivatives"]),
    ({"check": ["exact", "weird"]}, ["key 'check'"]),
    ({"quantities": ["u_zz"]}, ["unknown quantity 'u_zz'"]),
    ({"engines": ["symbolic"]}, ["at least two"]),
    ({"colour": 1}, ["unknown key", "'colour'"]),
    ({"time": "s"}, ["key 'time'", "one of the variables"]),
    ({"forcing": {"nope": "x"}}, ["key 'forcing'", "one formula per field"]),
    ({"pinn": {"boundary": 0}}, ["pinn.boundary"]),
]


@pytest.mark.parametrize(("patch", "fragments"), BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_pde_input(patch, fragments):
    with pytest.raises(CaseError) as info:
        case_from_dict(dict(HELMHOLTZ, **patch), file="case.toml")
    message = str(info.value)
    assert "case.toml" in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_float32_run_says_finite_differences_stay_float64():
    case = case_from_dict(dict(HELMHOLTZ, dtype="float32", check=["exact"]))
    (result,) = run_any(case)
    assert result.verdict == "agree"
    u_xx = {q.name: q for q in result.quantities}["u_xx"]
    assert "reference stays float64" in u_xx.notes["finite_diff"]
    pair = {(p.a, p.b): p for p in u_xx.pairs}[("symbolic", "torch")]
    assert pair.rtol > 1e-5  # judged with float32 tolerances


def test_pinn_statistic_and_gradient_norms():
    case = load_case(CASES / "pde" / "klein-gordon.toml")
    network = run_any(case)[1]
    by_name = {q.name: q for q in network.quantities}
    lam = by_name["lambda_hat"]
    assert lam.verdict == "agree" and set(lam.engines) == {"finite_diff", "torch", "torch_func"}
    assert lam.worst.values["torch"] > 1  # the residual gradients dominate (gradient pathology)
    norms = network.meta["gradient_norms"]["torch"]
    assert set(norms) == {"L_r", "L_b"} and "0.weight" in norms["L_r"]


@st.composite
def helmholtz_problems(draw):
    hidden = draw(st.lists(st.integers(1, 5), min_size=1, max_size=2))
    count = draw(st.integers(1, 6))
    coords = draw(st.lists(st.tuples(st.floats(-1, 1), st.floats(-1, 1)), min_size=count, max_size=count))
    seed = draw(st.integers(0, 1000))
    table = dict(HELMHOLTZ, network={"widths": [2, *hidden, 1]}, points={"values": [list(c) for c in coords]}, seed=seed)
    return case_from_dict(table)


@settings(max_examples=10)
@given(helmholtz_problems())
def test_engines_agree_on_random_points_and_networks(case):
    for result in run_any(case):
        assert result.verdict == "agree", [(q.name, q.message) for q in result.quantities if q.verdict != "agree"]


@pytest.mark.cuda
@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")
def test_pde_on_cuda():
    case = load_case(CASES / "pde" / "helmholtz-mms.toml")
    for result in run_any(case, device="cuda"):
        assert result.verdict == "agree"
