"""check_numpy: numpy backprop written the way course code and textbooks write it."""

from __future__ import annotations

import numpy as np
import pytest

import derivcheck as dc

RNG = np.random.default_rng(0)


# -- the (out, cache) convention of the best-known course assignments -------------------


def affine_forward(x, w, b):
    out = x.reshape(x.shape[0], -1) @ w + b
    return out, (x, w, b)


def affine_backward(dout, cache):
    x, w, b = cache
    return (dout @ w.T).reshape(x.shape), x.reshape(x.shape[0], -1).T @ dout, dout.sum(axis=0)


def relu_forward(x):
    return np.maximum(0, x), x


def relu_backward(dout, cache):
    return dout * (cache > 0)


def batchnorm_forward(x, gamma, beta, eps=1e-5):
    mu = x.mean(axis=0)
    var = x.var(axis=0)
    xhat = (x - mu) / np.sqrt(var + eps)
    return gamma * xhat + beta, (xhat, gamma, var, eps)


def batchnorm_backward(dout, cache, *, forget_mean_term=False):
    xhat, gamma, var, eps = cache
    n = dout.shape[0]
    dbeta = dout.sum(axis=0)
    dgamma = (dout * xhat).sum(axis=0)
    dxhat = dout * gamma
    if forget_mean_term:  # the classic bug: the gradient through the batch mean is dropped
        dx = dxhat / np.sqrt(var + eps)
    else:
        dx = (n * dxhat - dxhat.sum(axis=0) - xhat * (dxhat * xhat).sum(axis=0)) / (n * np.sqrt(var + eps))
    return dx, dgamma, dbeta


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cache_convention_layers_pass(dtype):
    x, w, b = (RNG.standard_normal(s).astype(dtype) for s in ((4, 2, 3), (6, 5), (5,)))
    r = dc.check_numpy(affine_forward, affine_backward, x, w, b)
    assert r.ok and [q.name for q in r.quantities] == ["d out/d x", "d out/d w", "d out/d b"]
    assert "forward -> (out, cache)" in " ".join(r.notes)
    assert dc.check_numpy(relu_forward, relu_backward, RNG.standard_normal((3, 4)).astype(dtype)).ok
    x, gamma, beta = RNG.standard_normal((6, 3)).astype(dtype) * 2 + 1, RNG.standard_normal(3).astype(dtype), RNG.standard_normal(3).astype(dtype)
    assert dc.check_numpy(batchnorm_forward, batchnorm_backward, x, gamma, beta).ok


def test_batchnorm_without_the_mean_term_is_caught():
    x, gamma, beta = RNG.standard_normal((6, 3)) * 2 + 1, RNG.standard_normal(3), RNG.standard_normal(3)
    r = dc.check_numpy(batchnorm_forward, lambda d, c: batchnorm_backward(d, c, forget_mean_term=True), x, gamma, beta)
    verdicts = {q.name: q.verdict for q in r.quantities}
    assert verdicts == {"d out/d x": "disagree", "d out/d gamma": "agree", "d out/d beta": "agree"}
    assert "your backward disagrees with finite differences of your forward" in r.quantities[0].message


def test_cache_can_be_forced_either_way():
    def pair(x):
        return np.sin(x), np.cos(x)  # two outputs, not (out, cache)

    def pair_backward(douts, x):
        return douts[0] * np.cos(x) - douts[1] * np.sin(x)

    x = RNG.standard_normal(4)
    r = dc.check_numpy(pair, pair_backward, x, cache=False)
    assert r.ok and r.quantities[0].name == "d outputs/d x"
    with pytest.raises(dc.InvalidArgument, match="cache=True: forward must return"):
        dc.check_numpy(np.sin, lambda d, c: d, x, cache=True)


# -- parameters as dicts and lists, labels, broadcast gradients ------------------------------


def two_layer(X, params):
    h = np.maximum(0, X @ params["W1"] + params["b1"])
    return h @ params["W2"] + params["b2"]


def two_layer_backward(dout, X, params):
    z = X @ params["W1"] + params["b1"]
    h = np.maximum(0, z)
    dz = (dout @ params["W2"].T) * (z > 0)
    return {"W1": X.T @ dz, "b1": dz.sum(0), "W2": h.T @ dout, "b2": dout.sum(0, keepdims=True)}


def test_dict_parameters_by_name_and_broadcast_shaped_gradients():
    params = {"W1": RNG.standard_normal((3, 4)), "b1": RNG.standard_normal(4), "W2": RNG.standard_normal((4, 2)), "b2": RNG.standard_normal(2)}
    r = dc.check_numpy(two_layer, two_layer_backward, RNG.standard_normal((5, 3)), params)
    assert r.ok
    assert [q.name for q in r.quantities] == ["d out/d params['W1']", "d out/d params['b1']", "d out/d params['W2']", "d out/d params['b2']"]
    notes = " ".join(r.notes)
    assert "no gradient returned for X" in notes and "params['b2'] has shape (1, 2)" in notes


def test_list_parameters_and_leading_broadcast_dimensions_are_summed():
    def f(x, ws):
        return np.tanh(x @ ws[0] + ws[1])

    def backward(dout, x, ws):
        z = x @ ws[0] + ws[1]
        dz = dout * (1 - np.tanh(z) ** 2)
        return None, [x.T @ dz, dz]  # db is (N, M) for a (M,) bias: summed like sum_to_size

    ws = [RNG.standard_normal((3, 2)), RNG.standard_normal(2)]
    r = dc.check_numpy(f, backward, RNG.standard_normal((4, 3)), ws)
    assert r.ok and [q.name for q in r.quantities] == ["d out/d ws[0]", "d out/d ws[1]"]
    assert "summed over the broadcast dimensions" in " ".join(r.notes)


def test_labels_and_numbers_pass_through():
    def loss(x, y, reg):
        return ((x - y[:, None]) ** 2).mean() + reg * (x**2).sum()

    def loss_backward(d, x, y, reg):
        return (d * (2 * (x - y[:, None]) / x.size + 2 * reg * x),)

    r = dc.check_numpy(loss, loss_backward, RNG.standard_normal((3, 2)), np.array([0, 1, 2]), 0.1)
    assert r.ok and "y (int64 array)" in " ".join(r.notes) and "reg (float)" in " ".join(r.notes)


def test_loss_and_gradient_from_one_function():
    def softmax_loss(x, y):
        shifted = x - x.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        n = x.shape[0]
        dx = np.exp(log_probs)
        dx[np.arange(n), y] -= 1
        return -log_probs[np.arange(n), y].mean(), dx / n

    x, y = RNG.standard_normal((5, 4)), RNG.integers(0, 4, 5)
    assert dc.check_numpy(softmax_loss, None, x, y).ok
    assert not dc.check_numpy(lambda x, y: (softmax_loss(x, y)[0], softmax_loss(x, y)[1] * 2), None, x, y).ok


# -- the classic numpy MLP, a mutation, directional mode -----------------------------------


def test_zero_output_gradient_and_large_inputs():
    x = np.linspace(0.1, 1, 4)
    r = dc.check_numpy(np.sin, lambda g, a: (np.cos(a),), x)  # ignores g
    assert not r.ok and not r.finding("zero output gradient").ok
    big = np.linspace(0, 1, 50_000)
    r = dc.check_numpy(lambda v: v**3, lambda g, v: (3 * g * v**2,), big)
    assert r.ok and r.mode == "directional"


# -- errors a user can act on ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "fragment"),
    [
        (lambda: dc.check_numpy(np.sin, lambda g, a: (g,), [1.0]), dc.InvalidType, "floating-point numpy array"),
        (lambda: dc.check_numpy(np.sin, lambda g, a: (g[:1],), np.ones(3)), dc.InvalidArgument, "gradient for x has shape (1,), expected (3,)"),
        (lambda: dc.check_numpy(np.sin, lambda g, a: (g, g), np.ones(3)), dc.InvalidArgument, "must return 1 gradient(s)"),
        (lambda: dc.check_numpy(np.sin, 3, np.ones(3)), dc.InvalidType, "must be callables"),
        (lambda: dc.check_numpy(np.sin, lambda g, a: 1 / 0, np.ones(3)), dc.InvalidArgument, "calling backward failed (backward(dout, *inputs)): ZeroDivisionError"),
        (lambda: dc.check_numpy(lambda a: a["w"] @ a["w"], lambda g, a: {"v": g}, {"w": np.ones((2, 2))}), dc.InvalidArgument, "matches no single dict input"),
        (lambda: dc.check_numpy(np.sin, np.cos, np.ones(3) + 0j), dc.InvalidType, "complex array"),
        (lambda: dc.check_numpy(lambda a: (a.sum(), 1), None, np.ones(3)), dc.InvalidArgument, "backward's gradient"),
    ],
)
def test_bad_arguments(call, error, fragment):
    with pytest.raises(error) as info:
        call()
    assert isinstance(info.value, dc.DerivcheckError)
    assert fragment in str(info.value)


# -- found by a new user's review ---------------------------------------------------------------


def test_float32_numpy_code_is_held_to_float32_precision_not_looser():
    """The noise of float32 numpy code is the difference to the same code on float64 inputs
    (moving float32 inputs by ulps changes the function, and buried a 0.1% error)."""
    x, w, b = (RNG.standard_normal(s).astype(np.float32) for s in ((4, 2, 3), (6, 5), (5,)))

    def off(dout, cache):
        dx, dw, db = affine_backward(dout, cache)
        return dx, dw * np.float32(1.001), db

    assert dc.check_numpy(affine_forward, affine_backward, x, w, b).ok
    assert not dc.check_numpy(affine_forward, off, x, w, b).ok


def test_directional_numpy_disagreement_names_the_input():
    x, w = RNG.standard_normal((40, 30)), RNG.standard_normal((30, 20))

    def backward(dout, x, w):
        return dout @ w.T, 1.1 * (x.T @ dout)

    r = dc.check_numpy(lambda x, w: x @ w, backward, x, w, max_full=16)
    verdicts = {q.name: q.verdict for q in r.quantities}
    assert verdicts["u^T J v (all inputs)"] == "disagree" and verdicts["u^T (d out/d x) v"] == "agree" and verdicts["u^T (d out/d w) v"] == "disagree"


def test_a_random_numpy_forward_is_not_checked():
    def dropout(x):
        mask = np.random.default_rng().random(x.shape) < 0.5
        return x * mask / 0.5

    r = dc.check_numpy(dropout, lambda g, x: (g,), RNG.standard_normal(40))  # 40 entries: two draws agree with probability 2**-40
    assert not r.ok and "cannot check a non-deterministic forward" in r.finding("deterministic forward").message


def test_the_cache_guess_is_explained_when_it_fails():
    def moments(x):
        return x.mean(0), x.var(0)  # two outputs, which the (out, cache) guess takes for a cache

    with pytest.raises(dc.InvalidArgument, match="pass cache=False if it returns two outputs"):
        dc.check_numpy(moments, lambda douts, x: (douts[0] / len(x) + 2 * douts[1] * (x - x.mean(0)) / len(x),), RNG.standard_normal((4, 3)))


def test_course_loss_signature_matches_the_gradient_by_shape():
    """svm_loss_vectorized(W, X, y, reg) -> (loss, dW): X is a float array too, but only W
    has the gradient's shape."""

    def svm_loss(W, X, y, reg):
        scores = X @ W
        margins = np.maximum(0, scores - scores[np.arange(len(y)), y][:, None] + 1)
        margins[np.arange(len(y)), y] = 0
        loss = margins.sum() / len(y) + reg * np.sum(W * W)
        mask = (margins > 0).astype(float)
        mask[np.arange(len(y)), y] = -mask.sum(axis=1)
        return loss, X.T @ mask / len(y) + 2 * reg * W

    W, X, y = RNG.standard_normal((7, 4)) * 0.1, RNG.standard_normal((6, 7)), np.array([0, 1, 3, 2, 3, 1])
    r = dc.check_numpy(svm_loss, None, W, X, y, 0.1)
    assert r.ok and [q.name for q in r.quantities] == ["d out/d W"] and "no gradient returned for X" in " ".join(r.notes)
