"""explain for convolution, pooling, dense layers of any width and the GAN step: the
lecture formulas agree with torch for every geometry, a seeded wrong rule is marked ✗ at
exactly the step that uses it, kinks are reported as kinks, and the Markdown is golden."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from derivcheck import load_case
from derivcheck.explain_steps import explain
from derivcheck.kinds.network.explain_layers import conv as conv_explain
from derivcheck.kinds.network.explain_layers import pooling
from derivcheck.layers.conv import Conv2d, MaxPool2d
from helpers import CASES, assert_golden, make_problem, normalize_explanation


@settings(max_examples=40, deadline=None)
@given(
    dims=st.sampled_from([1, 2]),
    kernel=st.integers(1, 3),
    stride=st.integers(1, 3),
    padding=st.integers(0, 1),
    dilation=st.integers(1, 2),
    groups=st.sampled_from([1, 2]),
    size=st.integers(5, 8),
    seed=st.integers(0, 2**16),
)
def test_the_lecture_formulas_of_convolution_are_torch_for_every_geometry(dims, kernel, stride, padding, dilation, groups, size, seed):
    """Forward correlation, dL/dW and the full convolution with the flipped kernel, written
    from the definition, against torch's conv and autograd: stride, padding, dilation,
    groups, 1-D and 2-D."""
    padding = min(padding, kernel // 2)
    if dilation * (kernel - 1) + 1 > size + 2 * padding:
        return
    rng = np.random.default_rng(seed)
    c, o = 2 * groups, 2 * groups
    x = rng.standard_normal((3, c) + (size,) * dims)
    weight = rng.standard_normal((o, c // groups) + (kernel,) * dims)
    geo = {"kernel": (kernel,) * dims, "stride": (stride,) * dims, "padding": (padding,) * dims, "dilation": (dilation,) * dims, "groups": groups}
    conv = torch.nn.functional.conv2d if dims == 2 else torch.nn.functional.conv1d
    t_x = torch.tensor(x, requires_grad=True)
    t_w = torch.tensor(weight, requires_grad=True)
    t_y = conv(t_x, t_w, stride=stride, padding=padding, dilation=dilation, groups=groups)
    g = rng.standard_normal(tuple(t_y.shape))
    (t_y * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(conv_explain.correlate(x, weight, **geo), t_y.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv_explain.weight_gradient(x, g, **geo), t_w.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv_explain.input_gradient(g, weight, x.shape[1:], **geo), t_x.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_conv_backward_without_the_flip_fails_at_the_input_gradient_step_only(monkeypatch):
    """The classic mistake: correlating dL/dy with the kernel as it is. The dL/dx step of
    that layer shows ✗; its forward and dL/dW steps, and the other layers, stay ✓."""
    original = Conv2d.numpy_backward

    def no_flip(self, grad_y, cache, params):
        grad_x, grads = original(self, grad_y, cache, params)
        n = grad_y.shape[0]
        geo = conv_explain.geometry(self)
        wrong = conv_explain.input_gradient(grad_y.reshape((n,) + self.out_shape), params["weight"], self.in_shape, **geo, flip=False)
        return wrong.reshape(n, -1), grads

    monkeypatch.setattr(Conv2d, "numpy_backward", no_flip)
    result = explain(load_case(CASES / "lenet-digits.toml"))
    failing = result.failing_steps()
    assert "Layer 0 (conv2d): dL/dx is a full convolution with the flipped kernel" in failing
    assert "Layer 3 (conv2d): dL/dx is a full convolution with the flipped kernel" in failing
    for ok in ("Layer 0 (conv2d): the forward pass is a cross-correlation", "Layer 0 (conv2d): dL/dW is the input correlated with the output gradient", "Forward pass, layer by layer"):
        assert ok not in failing
    assert "[✗] dL/dx (20, 1, 8, 8): lecture formula vs torch retain_grad vs numpy rule" in result.to_text()


def test_max_pool_routing_to_the_wrong_entry_fails_at_the_pooling_step(monkeypatch):
    """A max-pool backward that spreads the gradient like average pooling is ✗ at the
    routing step and nowhere before it."""

    def spread(self, grad_y, cache, params):
        stacked, _arg = cache
        gy = grad_y.reshape(stacked.shape[1:]) / stacked.shape[0]
        return self._scatter(np.broadcast_to(gy, stacked.shape), grad_y.shape[0], grad_y.dtype), {}

    monkeypatch.setattr(MaxPool2d, "numpy_backward", spread)
    result = explain(load_case(CASES / "cnn-maxpool.toml"))
    failing = result.failing_steps()
    assert "Layer 2 (max_pool2d): the backward pass routes each gradient to its window's maximum" in failing
    assert not any(title.startswith("Layer 0 (conv2d)") for title in failing)


def test_max_pool_ties_are_reported_as_kinks_not_failures():
    """ReLU outputs of zero fill whole windows: the max ties there, a kink. explain counts
    the tied windows and still checks out (torch and the numpy rule pick the first)."""
    from derivcheck.kinds.network.explain_layers.layered import explain_layered

    problem = make_problem(
        [("conv2d", {"in_channels": 1, "out_channels": 2, "kernel_size": 3, "padding": 1}), ("relu", {}), ("max_pool2d", {"kernel_size": 2}), ("flatten", {}), ("linear", {"in": 8, "out": 2})],
        loss="mse",
        batch=3,
        in_shape=(1, 4, 4),
        seed=3,
    )
    problem.x[0] = -10.0  # every pre-activation of sample 0 below zero: relu gives zeros
    result = explain_layered(type("Case", (), {"name": "ties", "problem": problem})())
    text = result.to_text()
    assert "window(s) have two equal largest entries -- a kink" in text
    assert "input(s) exactly at the kink z = 0" not in text or result.ok
    assert result.ok, result.failing_steps()


def test_pooling_formulas_against_torch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 6))
    g = rng.standard_normal((2, 3, 3, 3))
    t_x = torch.tensor(x, requires_grad=True)
    (torch.nn.functional.max_pool2d(t_x, 2) * torch.tensor(g)).sum().backward()
    values, grad, ties = pooling.max_route(x, g, (2, 2), (2, 2))
    np.testing.assert_allclose(grad, t_x.grad.numpy())
    assert ties == 0
    t_x = torch.tensor(x, requires_grad=True)
    g2 = rng.standard_normal((2, 3, 4, 4))
    (torch.nn.functional.avg_pool2d(t_x, 2, stride=2, padding=1) * torch.tensor(g2)).sum().backward()
    _, grad = pooling.avg_spread(x, g2, (2, 2), (2, 2), (1, 1))
    np.testing.assert_allclose(grad, t_x.grad.numpy(), rtol=1e-12)


def test_a_wrong_activation_rule_fails_at_its_own_step(monkeypatch):
    """tanh' taken as 1 - tanh (not 1 - tanh^2) in a wide MLP: ✗ at the tanh layers' steps,
    not at the linear layers'."""
    from derivcheck.layers.activations import Tanh

    monkeypatch.setattr(Tanh, "numpy_backward", lambda self, g, cache, params: (g * (1 - cache), {}))
    result = explain(load_case(CASES / "digits-mlp.toml"))
    failing = result.failing_steps()
    assert "Layer 1 (tanh): elementwise, so its Jacobian is diagonal" in failing
    assert "Layer 0 (linear): unit 0 of 128, then every unit at once" not in failing


def test_relu_inputs_exactly_at_zero_are_kinks():
    problem = make_problem([("linear", {"in": 3, "out": 4}), ("relu", {}), ("linear", {"in": 4, "out": 1})], batch=2, seed=1)
    problem.params["0.weight"][0] = 0.0
    problem.params["0.bias"][0] = 0.0  # unit 0's pre-activation is exactly 0 for every sample
    from derivcheck.kinds.network.explain_layers.layered import explain_layered

    result = explain_layered(type("Case", (), {"name": "relu-at-zero", "problem": problem})())
    assert "2 input(s) exactly at the kink z = 0" in result.to_text()
    assert result.ok, result.failing_steps()


def test_gan_explains_what_detach_stops(monkeypatch):
    result = explain(load_case(CASES / "gan-step.toml"))
    assert result.ok, result.failing_steps()
    text = result.to_text()
    assert "[✓] G.grad after errD.backward() with detach(): max |G.grad| = 0.0e+00" in text
    assert "||dL_D/dG|| = " in text and "the opposite of G's own objective" in text
    from derivcheck.layers.activations import LeakyReLU

    original = LeakyReLU.numpy_backward
    monkeypatch.setattr(LeakyReLU, "numpy_backward", lambda self, g, cache, params: (2 * original(self, g, cache, params)[0], {}))
    wrong = explain(load_case(CASES / "gan-step.toml"))
    assert "The training step (PyTorch's DCGAN tutorial)" not in wrong.failing_steps()
    assert "What detach() stops" in wrong.failing_steps()


@pytest.mark.parametrize("stem", ["lenet-digits", "gan-step", "digits-mlp"])
def test_golden_markdown(stem):
    assert_golden(normalize_explanation(explain(load_case(CASES / f"{stem}.toml")).to_markdown()), f"explain/{stem}.md")


def test_a_bias_before_batch_norm_is_no_false_alarm(tmp_path):
    """People write Linear (with bias) -> BatchNorm1d: the bias gradient is 0 by the maths
    and ~1e-17 in every implementation. Its checks are relative to the summed terms and
    the network's largest gradient, so rounding noise is not reported as a wrong rule."""
    case = tmp_path / "bn-bias.toml"
    case.write_text(
        'name = "bn-bias"\nseed = 3\nloss = "cross_entropy"\ninputs = { batch = 6 }\nnetwork = [\n'
        '  { layer = "linear", in = 3, out = 5 },\n  { layer = "batch_norm1d", num_features = 5 },\n'
        '  { layer = "tanh" },\n  { layer = "linear", in = 5, out = 2 },\n]\n'
    )
    result = explain(load_case(case))
    assert result.ok, result.failing_steps()
    assert "cancel to ~0" in result.to_text()
