"""The differential operators on SymPy expressions and on torch tensors agree with each
other and with hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

from derivcheck.errors import ExpressionError
from derivcheck.expr import make_symbol, parse_expression
from derivcheck.operators import (
    OperatorRecord,
    advection,
    derivative_name,
    divergence,
    gradient,
    hessian,
    laplacian,
    operator_handlers,
    partial,
    torch_advection,
    torch_divergence,
    torch_gradient,
    torch_gradient_all,
    torch_hessian,
    torch_laplacian,
    torch_partial,
)

x, y = make_symbol("x"), make_symbol("y")
F = sp.sin(x) * sp.exp(2 * y) + x**3 * y
G = sp.cos(x * y)


def _torch_points():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, (7, 2))
    tx = torch.tensor(pts[:, 0], requires_grad=True)
    ty = torch.tensor(pts[:, 1], requires_grad=True)
    return pts, tx, ty


def _torch_f(tx, ty):
    return torch.sin(tx) * torch.exp(2 * ty) + tx**3 * ty


def _torch_g(tx, ty):
    return torch.cos(tx * ty)


def _at(expr, pts):
    fn = sp.lambdify([x, y], expr.doit(), "numpy")
    return np.broadcast_to(np.asarray(fn(pts[:, 0], pts[:, 1]), dtype=float), (pts.shape[0],))


def test_sympy_operators_are_unevaluated_until_doit():
    lap = laplacian(F, [x, y])
    assert lap.has(sp.Derivative)
    assert sp.simplify(lap.doit() - (sp.diff(F, x, 2) + sp.diff(F, y, 2))) == 0
    assert sp.simplify(divergence([F, G], [x, y]).doit() - (sp.diff(F, x) + sp.diff(G, y))) == 0
    assert sp.simplify(advection(F, [G, 2], [x, y]).doit() - (G * sp.diff(F, x) + 2 * sp.diff(F, y))) == 0
    assert [sp.simplify(g.doit() - sp.diff(F, v)) for g, v in zip(gradient(F, [x, y]), [x, y])] == [0, 0]
    H = hessian(F, [x, y]).doit()
    assert sp.simplify(H[0, 1] - sp.diff(F, x, y)) == 0 and sp.simplify(H - H.T) == sp.zeros(2, 2)
    assert sp.simplify(partial(F, x, x, y).doit() - sp.diff(F, x, 2, y)) == 0
    with pytest.raises(ValueError, match="2 components"):
        divergence([F], [x, y])


def test_torch_operators_match_sympy():
    pts, tx, ty = _torch_points()
    f, g = _torch_f(tx, ty), _torch_g(tx, ty)
    checks = [
        (torch_laplacian(f, [tx, ty]), laplacian(F, [x, y])),
        (torch_divergence([f, g], [tx, ty]), divergence([F, G], [x, y])),
        (torch_advection(f, [g, 2 * torch.ones_like(g)], [tx, ty]), advection(F, [G, 2], [x, y])),
        (torch_partial(f, tx, tx, ty), sp.diff(F, x, 2, y)),
        (torch_gradient(f, [tx, ty])[1], sp.diff(F, y)),
        (torch_gradient_all(f, [tx, ty])[0], sp.diff(F, x)),
    ]
    for tensor, expr in checks:
        np.testing.assert_allclose(tensor.detach().numpy(), _at(expr, pts), rtol=1e-12, atol=1e-12)
    H = torch_hessian(f, [tx, ty]).detach().numpy()
    for i, a in enumerate([x, y]):
        for j, b in enumerate([x, y]):
            np.testing.assert_allclose(H[:, i, j], _at(sp.diff(F, a, b), pts), rtol=1e-12, atol=1e-12)


def test_torch_derivative_of_constant_is_zero():
    _, tx, ty = _torch_points()
    np.testing.assert_array_equal(torch_gradient_all(tx * 2, [tx, ty])[1].detach().numpy(), 0)


def _parse(text, record=None):
    symbols = {"x": x, "y": y, "t": make_symbol("t")}
    u = sp.Function("u", real=True)(*symbols.values())
    return parse_expression(text, ["x", "y", "t"], ["k"], extra_names={"u": u}, operators=operator_handlers(symbols, ["x", "y"], record)), u


def test_parser_operators_and_record():
    record = OperatorRecord()
    expr, u = _parse("d(u,t) + advect(u, u, 1) - k*laplacian(u) + d(u, x, 2, y)", record)
    t = make_symbol("t")
    expected = sp.Derivative(u, t) + u * sp.Derivative(u, x) + sp.Derivative(u, y) - make_symbol("k") * (sp.Derivative(u, (x, 2)) + sp.Derivative(u, (y, 2))) + sp.Derivative(u, (x, 2), y)
    assert sp.simplify(expr - expected) == 0
    assert [text for text, _ in record.used] == ["d(u,t)", "advect(u,u,1)", "laplacian(u)", "d(u,x,2,y)"]
    assert derivative_name(sp.Derivative(u, (x, 2), y)) == "u_xxy"
    assert derivative_name(sp.Derivative(u * u, x)).startswith("d(u**2; x")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("d(u, z)", "'z' is not a declared variable"),
        ("d(u, 2)", "an order must follow a variable"),
        ("d(u, x, 0)", "order must be >= 1"),
        ("d(u, x, 3, y, 2)", "order 5 is beyond the supported maximum 4"),
        ("d(u, x+y)", "expected a variable name"),
        ("laplacian(u, x)", "laplacian() takes 1 argument"),
        ("div(u)", "div() takes one component per spatial variable"),
        ("advect(u, u)", "advect() takes the advected expression"),
        ("d", "must be called"),
        ("d(u, x=1)", "no keyword arguments"),
    ],
)
def test_parser_operator_errors(text, fragment):
    with pytest.raises(ExpressionError) as info:
        _parse(text)
    assert fragment in str(info.value)
