"""check_operator: PINN residuals written the way PINN code writes them."""

from __future__ import annotations

import pytest
import torch

import derivcheck as dc

OPERATOR = "d(u,x,2) + d(u,y,2) + c*d(u,x,y)"


def mixed_operator(u, xy, mixed=True):
    value = u(xy)
    g = torch.autograd.grad(value, xy, torch.ones_like(value), create_graph=True)[0]
    gx = torch.autograd.grad(g[:, 0], xy, torch.ones_like(value), create_graph=True)[0]
    gy = torch.autograd.grad(g[:, 1], xy, torch.ones_like(value), create_graph=True)[0]
    return gx[:, 0] + gy[:, 1] + (0.3 * gx[:, 1] if mixed else 0)


def test_right_operator_and_a_missing_mixed_derivative():
    r = dc.check_operator(mixed_operator, OPERATOR, ["x", "y"], constants={"c": 0.3}, points=8)
    assert r.ok and len(r.quantities) == 4
    bad = dc.check_operator(lambda u, xy: mixed_operator(u, xy, mixed=False), OPERATOR, ["x", "y"], constants={"c": 0.3}, points=8)
    assert not bad.ok and all(q.odd_engine == "user" for q in bad.quantities)
    assert "your operator disagrees with SymPy's closed form" in bad.quantities[0].message


def helmholtz_column_style(net, xy):
    """Fields as (P, 1) columns, points cloned and marked, slices kept 2-D: PINN code as
    the papers' repositories write it."""
    xy = xy.clone().requires_grad_(True)
    u = net(xy)
    du = torch.autograd.grad(u, xy, torch.ones_like(u), create_graph=True)[0]
    u_x, u_y = du[:, 0:1], du[:, 1:2]
    u_xx = torch.autograd.grad(u_x, xy, torch.ones_like(u_x), create_graph=True)[0][:, 0:1]
    u_yy = torch.autograd.grad(u_y, xy, torch.ones_like(u_y), create_graph=True)[0][:, 1:2]
    return u_xx + u_yy + 4.0 * u


def helmholtz_detached_points(net, xy):
    x = xy.detach().requires_grad_(True)
    u = net(x).reshape(-1)
    du = torch.autograd.grad(u.sum(), x, create_graph=True)[0]
    lap = sum(torch.autograd.grad(du[:, i].sum(), x, create_graph=True)[0][:, i] for i in range(2))
    return lap + 4.0 * u


@pytest.mark.parametrize("residual", [helmholtz_column_style, helmholtz_detached_points])
def test_residuals_written_as_people_write_them(residual):
    r = dc.check_operator(residual, "laplacian(u) + k**2*u", ["x", "y"], constants={"k": 2}, points=8)
    assert r.ok, str(r)


def test_float32_operator_is_judged_by_its_own_noise():
    r = dc.check_operator(helmholtz_column_style, "laplacian(u) + k**2*u", ["x", "y"], constants={"k": 2}, points=16, dtype="float32")
    assert r.ok, str(r)
    assert r.dtype == "float32"


def test_several_fields():
    def divergence(fields, xyz):
        du = torch.autograd.grad(fields["u"](xyz).sum(), xyz, create_graph=True)[0][:, 0]
        dv = torch.autograd.grad(fields["v"](xyz).sum(), xyz, create_graph=True)[0][:, 1]
        return du + dv

    r = dc.check_operator(divergence, "div(u, v)", ["x", "y"], fields=["u", "v"], points=6, manufactured=1, networks=1)
    assert r.ok


@pytest.mark.parametrize(
    ("call", "error", "fragment"),
    [
        (lambda: dc.check_operator(mixed_operator, "laplacian(q)", ["x", "y"]), dc.InvalidArgument, "unknown name 'q'"),
        (lambda: dc.check_operator(mixed_operator, OPERATOR, "xy"), dc.InvalidType, "variables must be a non-empty list"),
        (lambda: dc.check_operator(mixed_operator, OPERATOR, ["x", "y"], constants={"c": 1}, points=0), dc.InvalidArgument, "points"),
        (lambda: dc.check_operator(lambda u, x: u(x)[:1], "u", ["x", "y"], points=4), dc.InvalidArgument, "one value per point"),
    ],
)
def test_bad_arguments(call, error, fragment):
    with pytest.raises(error) as info:
        call()
    assert isinstance(info.value, dc.DerivcheckError)
    assert fragment in str(info.value)


def burgers(u, xt, nu=1e-4):
    value = u(xt)
    du = torch.autograd.grad(value, xt, torch.ones_like(value), create_graph=True)[0]
    u_x, u_t = du[:, 0], du[:, 1]
    u_xx = torch.autograd.grad(u_x, xt, torch.ones_like(u_x), create_graph=True)[0][:, 0]
    return u_t + value * u_x - nu * u_xx


def test_float32_operator_catches_a_small_term():
    """A viscosity of 1e-4 with the wrong sign changes the residual by ~1e-3: visible in
    float32, whose operator is held to 256 eps plus its measured noise."""
    options = dict(constants={"nu": 1e-4}, domain={"x": [-1, 1], "t": [0, 1]}, points=16, dtype="float32")
    operator = "d(u,t) + u*d(u,x) - nu*d(u,x,2)"
    assert dc.check_operator(burgers, operator, ["x", "t"], **options).ok
    assert not dc.check_operator(lambda u, xt: burgers(u, xt, nu=-1e-4), operator, ["x", "t"], **options).ok


def test_points_marked_by_the_residual_itself():
    """x_ = x.clone(); x_.requires_grad = True -- the idiom of many PINN repositories, which
    needs points that do not already require grad."""

    def residual(u_fn, x):
        x_ = x.clone()
        x_.requires_grad = True
        u = u_fn(x_)
        du = torch.autograd.grad(u, x_, torch.ones_like(u), create_graph=True)[0]
        u_xx = torch.autograd.grad(du[:, [0]], x_, torch.ones_like(u), create_graph=True)[0][:, [0]]
        return du[:, [1]] + u * du[:, [0]] - 0.01 * u_xx

    r = dc.check_operator(residual, "d(u, t) + u*d(u, x) - nu*d(u, x, 2)", ["x", "t"], constants={"nu": 0.01}, points=8)
    assert r.ok and "points without requires_grad" in r.quantities[0].notes.get("user", "")
