"""check_torch / check_numpy / check_operator and their assert twins."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import derivcheck as dc


class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


class WrongSquare(Square):
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return x * g  # missing factor 2


class MulWrongSecond(torch.autograd.Function):
    """f(a, b) = a * b with b's gradient wrong."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return g * b, g * b  # should be g * a


def x64(*shape, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).uniform(0.5, 1.5, shape))


def test_check_torch_ok_and_mismatch():
    r = dc.check_torch(Square.apply, x64(3, 2))
    assert r.ok and r.mode == "full" and r.quantities[0].verdict == "agree"
    assert r.taylor["inputs[0]"].order == pytest.approx(2, abs=0.1)
    bad = dc.check_torch(WrongSquare.apply, x64(3, 2))
    assert not bad.ok
    assert bad.quantities[0].odd_engine is None  # two engines: autograd vs finite_diff
    assert "autograd and finite_diff disagree" in str(bad)
    assert not bad.taylor["inputs[0]"].ok


def test_names_the_wrong_input():
    r = dc.check_torch(MulWrongSecond.apply, x64(3), x64(3, seed=1))
    verdicts = {q.name: q.verdict for q in r.quantities}
    assert verdicts == {"d out/d inputs[0]": "agree", "d out/d inputs[1]": "disagree"}
    with pytest.raises(dc.DerivativeMismatch) as info:
        dc.assert_torch(MulWrongSecond.apply, x64(3), x64(3, seed=1))
    assert isinstance(info.value, AssertionError)
    assert str(info.value).index("inputs[1]") < str(info.value).index("inputs[0]")  # worst first


def test_symbolic_reference_names_autograd():
    r = dc.check_torch(WrongSquare.apply, x64(4), expr="x**2")
    q = r.quantities[0]
    assert q.odd_engine == "autograd" and "symbolic" in q.engines


def test_module_parameters_are_checked():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2).double()
    r = dc.check_torch(layer, x64(4, 3))
    assert r.ok
    assert [q.name for q in r.quantities] == ["d out/d inputs[0]", "d out/d param weight", "d out/d param bias"]


def test_order_two_catches_a_wrong_double_backward():
    class NonDifferentiableBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.sin(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * torch.cos(x).detach() + 0 * x  # the bug: cos(x) detached, so d2 is lost

    x = x64(3)
    assert dc.check_torch(torch.sin, x, order=2).ok
    r = dc.check_torch(NonDifferentiableBackward.apply, x, order=2)
    assert r.quantities[0].verdict == "agree"  # first derivative is right
    assert r.quantities[-1].verdict == "disagree" and "create_graph" in r.quantities[-1].engines[0]


def test_large_inputs_use_directional_derivatives_quickly():
    import time

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1000, 1000), torch.nn.Tanh(), torch.nn.Linear(1000, 4)).double()
    start = time.perf_counter()
    r = dc.check_torch(model, torch.randn(2, 1000, dtype=torch.float64), taylor=False)
    elapsed = time.perf_counter() - start
    assert r.ok and r.mode == "directional" and "directional derivatives" in r.notes[0]
    assert elapsed < 30  # ~1e6 parameters: seconds, not minutes


def test_float32_code_is_judged_with_float32_tolerances():
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh())
    r = dc.check_torch(layer, torch.randn(2, 3))
    assert r.ok and r.dtype == "float32"
    assert r.tolerances["rtol float32 vs float64"] > 1e-5
    assert "float32" in str(r)


def test_kinks_are_reported_not_failed():
    r = dc.check_torch(torch.relu, torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64))
    assert r.ok and r.quantities[0].verdict == "kink"
    assert dc.check_torch(torch.abs, torch.tensor([0.0, 1.0], dtype=torch.float64)).quantities[0].verdict == "kink"


def test_to_dict_is_json():
    r = dc.check_torch(Square.apply, x64(2))
    doc = json.loads(json.dumps(r.to_dict(), allow_nan=False, default=str))
    assert doc["ok"] is True and doc["quantities"][0]["verdict"] == "agree"


def test_check_numpy():
    def forward(a, b):
        return np.sin(a) * b

    def backward(g, a, b):
        return g * np.cos(a) * b, g * np.sin(a)

    def wrong(g, a, b):
        return g * np.cos(a) * b, g * np.cos(a)

    a, b = np.linspace(0.1, 1, 4), np.linspace(1, 2, 4)
    assert dc.assert_numpy(forward, backward, a, b).ok
    r = dc.check_numpy(forward, wrong, a, b)
    assert [q.verdict for q in r.quantities] == ["agree", "disagree"]
    big = np.linspace(0, 1, 50_000)
    r = dc.check_numpy(lambda v: v**3, lambda g, v: (3 * g * v**2,), big, taylor=False)
    assert r.ok and r.mode == "directional"


OPERATOR = "d(u,x,2) + d(u,y,2) + c*d(u,x,y)"


def _op(u, xy, mixed=True):
    value = u(xy)
    g = torch.autograd.grad(value, xy, torch.ones_like(value), create_graph=True)[0]
    gx = torch.autograd.grad(g[:, 0], xy, torch.ones_like(value), create_graph=True)[0]
    gy = torch.autograd.grad(g[:, 1], xy, torch.ones_like(value), create_graph=True)[0]
    return gx[:, 0] + gy[:, 1] + (0.3 * gx[:, 1] if mixed else 0)


def test_check_operator_ok_and_missing_mixed_derivative():
    r = dc.check_operator(_op, OPERATOR, ["x", "y"], constants={"c": 0.3}, points=8)
    assert r.ok and len(r.quantities) == 4
    bad = dc.check_operator(lambda u, xy: _op(u, xy, mixed=False), OPERATOR, ["x", "y"], constants={"c": 0.3}, points=8)
    assert not bad.ok and all(q.odd_engine == "user" for q in bad.quantities)


def test_check_operator_several_fields():
    def divergence(fields, xyz):
        du = torch.autograd.grad(fields["u"](xyz).sum(), xyz, create_graph=True)[0][:, 0]
        dv = torch.autograd.grad(fields["v"](xyz).sum(), xyz, create_graph=True)[0][:, 1]
        return du + dv

    r = dc.check_operator(divergence, "div(u, v)", ["x", "y"], fields=["u", "v"], points=6, manufactured=1, networks=1)
    assert r.ok


@pytest.mark.parametrize(
    ("call", "error", "fragment"),
    [
        (lambda: dc.check_torch(Square.apply, x64(2), order=3), dc.InvalidArgument, "order must be 1 or 2, got 3"),
        (lambda: dc.check_torch(Square.apply, [1.0, 2.0]), dc.InvalidType, "inputs[0] must be a torch.Tensor, got list"),
        (lambda: dc.check_torch(Square.apply, torch.tensor([1, 2])), dc.InvalidType, "floating-point tensor"),
        (lambda: dc.check_torch("not callable", x64(2)), dc.InvalidType, "fn must be callable"),
        (lambda: dc.check_torch(Square.apply), dc.InvalidArgument, "at least one input"),
        (lambda: dc.check_torch(lambda a, b: a + b, x64(2), x64(3)), dc.InvalidArgument, "calling fn on the inputs failed: RuntimeError"),
        (lambda: dc.check_torch(lambda a: 3.0, x64(2)), dc.InvalidType, "fn must return a tensor"),
        (lambda: dc.check_torch(Square.apply, x64(2), reference="symbolic"), dc.InvalidArgument, "needs expr="),
        (lambda: dc.check_torch(Square.apply, x64(2), reference="magic"), dc.InvalidArgument, "reference must be one of"),
        (lambda: dc.check_torch(Square.apply, x64(2), max_full=0), dc.InvalidArgument, "max_full"),
        (lambda: dc.check_numpy(np.sin, lambda g, a: (g,), [1.0]), dc.InvalidType, "numpy array"),
        (lambda: dc.check_numpy(np.sin, lambda g, a: (g[:1],), np.ones(3)), dc.InvalidArgument, "backward's gradient 0 has shape (1,), expected (3,)"),
        (lambda: dc.check_numpy(np.sin, lambda g, a: (g, g), np.ones(3)), dc.InvalidArgument, "must return 1 gradient(s)"),
        (lambda: dc.check_numpy(np.sin, 3, np.ones(3)), dc.InvalidType, "must be callables"),
        (lambda: dc.check_operator(_op, "laplacian(q)", ["x", "y"]), dc.InvalidArgument, "unknown name 'q'"),
        (lambda: dc.check_operator(_op, OPERATOR, "xy"), dc.InvalidType, "variables must be a non-empty list"),
        (lambda: dc.check_operator(_op, OPERATOR, ["x", "y"], constants={"c": 1}, points=0), dc.InvalidArgument, "points"),
        (lambda: dc.check_operator(lambda u, x: u(x)[:1], "u", ["x", "y"], points=4), dc.InvalidArgument, "one value per point"),
    ],
)
def test_bad_arguments(call, error, fragment):
    with pytest.raises(error) as info:
        call()
    assert isinstance(info.value, dc.DerivcheckError)
    assert fragment in str(info.value)


def test_every_public_name_resolves_and_importing_the_package_loads_none_of_them():
    """``import derivcheck`` is instant (the CLI starts a Dask fork server before anything
    heavy is imported); each public name loads its module on first use."""
    import subprocess
    import sys

    for name in dc.__all__:
        assert getattr(dc, name) is not None, name
    assert set(dc.__all__) <= set(dir(dc))
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        dc.nonexistent  # noqa: B018
    script = "import sys, derivcheck\nprint(sorted(m for m in sys.modules if m.startswith(('derivcheck.', 'numpy', 'sympy', 'torch'))))"
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
