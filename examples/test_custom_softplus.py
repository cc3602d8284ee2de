"""A fused softplus written as a custom autograd Function, checked to second order.

softplus(x) = log(1 + exp(x)); its derivative is sigmoid(x) and its second derivative
sigmoid(x) (1 - sigmoid(x)). The backward below is itself differentiable (written with
torch ops), so ``order=2`` checks the double backward that ``create_graph=True`` uses.
"""

import pytest
import torch
from hypothesis import given, settings

import derivcheck as dc


class FusedSoftplus(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x > 20, x, torch.log1p(torch.exp(torch.clamp(x, max=20))))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x)


class BuggySoftplus(FusedSoftplus):
    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x) * (1 - torch.sigmoid(x))  # the bug: the second derivative


def test_fused_softplus_first_and_second_order(derivcheck):
    x = torch.randn(4, 5, dtype=torch.float64)
    result = derivcheck.assert_torch(FusedSoftplus.apply, x, order=2, expr="softplus(x)")
    assert result.taylor["x"].order > 1.9  # named after FusedSoftplus.forward's argument


def test_buggy_backward_is_named():
    x = torch.randn(4, 5, dtype=torch.float64)
    with pytest.raises(dc.DerivativeMismatch) as info:
        dc.assert_torch(BuggySoftplus.apply, x, expr="softplus(x)")
    message = str(info.value)
    assert "your backward (reverse-mode autograd) disagrees with finite differences of your forward and SymPy's derivative of expr" in message
    assert "Taylor test x: wrong gradient" in message  # the remainder is linear in h


@settings(max_examples=10, deadline=None)
@given(x=dc.strategies.inputs(shape=(3, 4)))
def test_softplus_on_hypothesis_inputs(x):
    dc.assert_torch(FusedSoftplus.apply, x, order=2)
