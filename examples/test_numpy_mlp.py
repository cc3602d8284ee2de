"""The classic from-scratch numpy backprop of a small MLP: Linear -> ReLU -> Linear ->
softmax cross-entropy, checked with ``check_numpy`` (forward and hand-written backward)."""

import numpy as np
import pytest

import derivcheck as dc

RNG = np.random.default_rng(0)
N, D, H, K = 6, 4, 5, 3
TARGETS = RNG.integers(0, K, N)


def forward(x, w1, b1, w2, b2):
    z1 = x @ w1.T + b1
    a1 = np.maximum(z1, 0)
    logits = a1 @ w2.T + b2
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_p[np.arange(N), TARGETS].mean()


def backward(grad_loss, x, w1, b1, w2, b2, *, bug=False):
    z1 = x @ w1.T + b1
    a1 = np.maximum(z1, 0)
    logits = a1 @ w2.T + b2
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    dlogits = p.copy()
    dlogits[np.arange(N), TARGETS] -= 1  # softmax + cross-entropy: p - y
    dlogits *= grad_loss / N
    dw2 = dlogits.T @ a1
    db2 = dlogits.sum(axis=0)
    da1 = dlogits @ w2
    dz1 = da1 * ((z1 > 0) if not bug else 1.0)  # the bug: ReLU derivative forgotten
    dw1 = dz1.T @ x
    db1 = dz1.sum(axis=0)
    dx = dz1 @ w1
    return dx, dw1, db1, dw2, db2


def params():
    return (RNG.standard_normal((N, D)), RNG.standard_normal((H, D)) * 0.5, RNG.standard_normal(H) * 0.1, RNG.standard_normal((K, H)) * 0.5, RNG.standard_normal(K) * 0.1)


def test_numpy_backprop_is_right():
    result = dc.assert_numpy(forward, backward, *params())
    assert len(result.quantities) == 5


def test_forgotten_relu_derivative_is_caught():
    def buggy(grad, *args):
        return backward(grad, *args, bug=True)

    with pytest.raises(dc.DerivativeMismatch) as info:
        dc.assert_numpy(forward, buggy, *params())
    message = str(info.value)
    assert "d out/d w1: your backward disagrees with finite differences of your forward" in message  # dL/dW1
    assert "Taylor test w1: wrong gradient" in message
