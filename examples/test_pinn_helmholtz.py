"""A PINN residual for the Helmholtz equation, written the usual way with
``torch.autograd.grad(create_graph=True)``, checked with ``check_operator``.

derivcheck evaluates the same operator with SymPy, its own torch path and finite
differences on manufactured fields and random tanh networks, and compares.
"""

import pytest
import torch

import derivcheck as dc

K = 1.0


def helmholtz_residual(u, xy):
    value = u(xy)
    grad = torch.autograd.grad(value, xy, torch.ones_like(value), create_graph=True)[0]
    u_xx = torch.autograd.grad(grad[:, 0], xy, torch.ones_like(value), create_graph=True)[0][:, 0]
    u_yy = torch.autograd.grad(grad[:, 1], xy, torch.ones_like(value), create_graph=True)[0][:, 1]
    return u_xx + u_yy + K**2 * value


def helmholtz_residual_missing_k2u(u, xy):
    value = u(xy)
    grad = torch.autograd.grad(value, xy, torch.ones_like(value), create_graph=True)[0]
    u_xx = torch.autograd.grad(grad[:, 0], xy, torch.ones_like(value), create_graph=True)[0][:, 0]
    u_yy = torch.autograd.grad(grad[:, 1], xy, torch.ones_like(value), create_graph=True)[0][:, 1]
    return u_xx + u_yy  # the bug: + k^2 u dropped


def test_helmholtz_residual_is_right(derivcheck):
    derivcheck.assert_operator(helmholtz_residual, "laplacian(u) + k**2*u", ["x", "y"], constants={"k": K}, domain={"x": [-1, 1], "y": [-1, 1]})


def test_dropped_term_is_caught():
    with pytest.raises(dc.DerivativeMismatch, match="your operator disagrees with SymPy's closed form, finite differences of the field and derivcheck's own autograd evaluation"):
        dc.assert_operator(helmholtz_residual_missing_k2u, "laplacian(u) + k**2*u", ["x", "y"], constants={"k": K})
