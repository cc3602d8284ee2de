"""Elementwise and row-wise activations: ReLU, LeakyReLU, Sigmoid, Tanh, Softmax,
LogSoftmax, Identity, GELU (exact erf form), SiLU, Softplus, ELU. Inputs and outputs are ``(N, features)``; softmaxes act on the
feature axis (``dim=-1``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from derivcheck._lazy import sympy as sp

from derivcheck.layers.base import Layer, Option, Params, SymbolArrays, elementwise_jet


class Identity(Layer):
    """``nn.Identity``."""

    kind = "identity"
    ELEMENTWISE = True

    def sympy_forward(self, inputs: list[sp.Expr], params: SymbolArrays) -> list[sp.Expr]:
        return list(inputs)

    def numpy_forward(self, x: np.ndarray, params: Params) -> tuple[np.ndarray, Any]:
        return x, None

    def numpy_backward(self, grad_y, cache, params):
        return grad_y, {}

    def numpy_jet(self, h, jac, hess, params):
        return h, jac, hess

    def torch_module(self) -> Any:
        import torch

        return torch.nn.Identity()


class ReLU(Layer):
    """``nn.ReLU``: ``max(0, z)``; non-differentiable at ``z = 0`` (a kink)."""

    kind = "relu"
    ELEMENTWISE = True

    def sympy_forward(self, inputs, params):
        return [sp.Max(0, a) for a in inputs]

    def numpy_forward(self, x, params):
        return np.maximum(x, 0), x

    def numpy_backward(self, grad_y, cache, params):
        return grad_y * (cache > 0), {}

    def torch_module(self):
        import torch

        return torch.nn.ReLU()

    def kink_inputs(self, cache):
        return cache


def _check_slope(value: float) -> str | None:
    return None if np.isfinite(value) and value >= 0 else "a finite number >= 0"


class LeakyReLU(Layer):
    """``nn.LeakyReLU(slope)``: ``z`` for ``z > 0``, ``slope*z`` otherwise; kink at 0."""

    kind = "leaky_relu"
    ELEMENTWISE = True
    OPTIONS = (Option("slope", float, default=0.01, check=_check_slope),)

    def sympy_forward(self, inputs, params):
        slope = sp.Float(self.options["slope"])
        return [sp.Max(0, a) + slope * sp.Min(0, a) for a in inputs]

    def numpy_forward(self, x, params):
        return np.where(x > 0, x, self.options["slope"] * x), x

    def numpy_backward(self, grad_y, cache, params):
        return grad_y * np.where(cache > 0, 1.0, self.options["slope"]).astype(grad_y.dtype), {}

    def torch_module(self):
        import torch

        return torch.nn.LeakyReLU(self.options["slope"])

    def kink_inputs(self, cache):
        return cache


def stable_sigmoid(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-x))`` without overflow for large ``|x|``."""
    return np.exp(-np.logaddexp(np.zeros((), dtype=x.dtype), -x)).astype(x.dtype)


class Sigmoid(Layer):
    """``nn.Sigmoid``."""

    kind = "sigmoid"
    ELEMENTWISE = True

    def sympy_forward(self, inputs, params):
        return [1 / (1 + sp.exp(-a)) for a in inputs]

    def numpy_forward(self, x, params):
        s = stable_sigmoid(x)
        return s, s

    def numpy_backward(self, grad_y, cache, params):
        s = cache
        return grad_y * s * (1 - s), {}

    def numpy_jet(self, h, jac, hess, params):
        s = stable_sigmoid(h)
        first = s * (1 - s)
        return elementwise_jet(s, first, first * (1 - 2 * s), jac, hess)

    def torch_module(self):
        import torch

        return torch.nn.Sigmoid()


class Tanh(Layer):
    """``nn.Tanh``."""

    kind = "tanh"
    ELEMENTWISE = True

    def sympy_forward(self, inputs, params):
        return [sp.tanh(a) for a in inputs]

    def numpy_forward(self, x, params):
        t = np.tanh(x)
        return t, t

    def numpy_backward(self, grad_y, cache, params):
        return grad_y * (1 - cache**2), {}

    def numpy_jet(self, h, jac, hess, params):
        t = np.tanh(h)
        first = 1 - t**2
        return elementwise_jet(t, first, -2 * t * first, jac, hess)

    def torch_module(self):
        import torch

        return torch.nn.Tanh()


class Softmax(Layer):
    """``nn.Softmax(dim=-1)``: ``exp(z_k) / sum_j exp(z_j)`` over the feature axis."""

    kind = "softmax"

    def sympy_forward(self, inputs, params):
        total = sp.Add(*[sp.exp(a) for a in inputs])
        return [sp.exp(a) / total for a in inputs]

    def numpy_forward(self, x, params):
        shifted = np.exp(x - x.max(axis=1, keepdims=True))
        p = shifted / shifted.sum(axis=1, keepdims=True)
        return p, p

    def numpy_backward(self, grad_y, cache, params):
        p = cache
        return p * (grad_y - (grad_y * p).sum(axis=1, keepdims=True)), {}

    def torch_module(self):
        import torch

        return torch.nn.Softmax(dim=-1)


class LogSoftmax(Layer):
    """``nn.LogSoftmax(dim=-1)``: ``z_k - log sum_j exp(z_j)``."""

    kind = "log_softmax"

    def sympy_forward(self, inputs, params):
        log_total = sp.log(sp.Add(*[sp.exp(a) for a in inputs]))
        return [a - log_total for a in inputs]

    def numpy_forward(self, x, params):
        shifted = x - x.max(axis=1, keepdims=True)
        out = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return out, out

    def numpy_backward(self, grad_y, cache, params):
        return grad_y - np.exp(cache) * grad_y.sum(axis=1, keepdims=True), {}

    def torch_module(self):
        import torch

        return torch.nn.LogSoftmax(dim=-1)


_erf = np.vectorize(math.erf, otypes=[float])


class GELU(Layer):
    """``nn.GELU()`` (exact form): ``x * Phi(x) = x/2 (1 + erf(x / sqrt 2))``."""

    kind = "gelu"
    ELEMENTWISE = True

    def sympy_forward(self, inputs, params):
        return [a / 2 * (1 + sp.erf(a / sp.sqrt(2))) for a in inputs]

    def numpy_forward(self, x, params):
        cdf = 0.5 * (1 + _erf(x / np.sqrt(2)))
        return (x * cdf).astype(x.dtype), (x, cdf)

    def numpy_backward(self, grad_y, cache, params):
        x, cdf = cache
        pdf = np.exp(-0.5 * x**2) / np.sqrt(2 * np.pi)
        return (grad_y * (cdf + x * pdf)).astype(grad_y.dtype), {}

    def numpy_jet(self, h, jac, hess, params):
        cdf = 0.5 * (1 + _erf(h / np.sqrt(2)))
        pdf = np.exp(-0.5 * h**2) / np.sqrt(2 * np.pi)
        return elementwise_jet(h * cdf, cdf + h * pdf, pdf * (2 - h**2), jac, hess)

    def torch_module(self):
        import torch

        return torch.nn.GELU(approximate="none")


class SiLU(Layer):
    """``nn.SiLU`` (swish): ``x * sigmoid(x)``."""

    kind = "silu"
    ELEMENTWISE = True

    def sympy_forward(self, inputs, params):
        return [a / (1 + sp.exp(-a)) for a in inputs]

    def numpy_forward(self, x, params):
        s = stable_sigmoid(x)
        return x * s, (x, s)

    def numpy_backward(self, grad_y, cache, params):
        x, s = cache
        return grad_y * s * (1 + x * (1 - s)), {}

    def numpy_jet(self, h, jac, hess, params):
        s = stable_sigmoid(h)
        first = s * (1 + h * (1 - s))
        second = s * (1 - s) * (2 + h * (1 - 2 * s))
        return elementwise_jet(h * s, first, second, jac, hess)

    def torch_module(self):
        import torch

        return torch.nn.SiLU()


def _check_positive(value: float) -> str | None:
    return None if np.isfinite(value) and value > 0 else "a finite number > 0"


class Softplus(Layer):
    """``nn.Softplus(beta, threshold)``: ``log(1 + exp(beta x)) / beta``, and ``x`` itself
    where ``beta x > threshold`` (as torch computes it)."""

    kind = "softplus"
    ELEMENTWISE = True
    OPTIONS = (Option("beta", float, default=1.0, check=_check_positive), Option("threshold", float, default=20.0, check=_check_positive))

    def sympy_forward(self, inputs, params):
        beta, threshold = sp.Float(self.options["beta"]), sp.Float(self.options["threshold"])
        return [sp.Piecewise((a, beta * a > threshold), (sp.log(1 + sp.exp(beta * a)) / beta, True)) for a in inputs]

    def numpy_forward(self, x, params):
        beta, threshold = self.options["beta"], self.options["threshold"]
        linear = beta * x > threshold
        soft = np.logaddexp(np.zeros((), dtype=x.dtype), beta * np.where(linear, 0, x)) / beta
        return np.where(linear, x, soft).astype(x.dtype), x

    def numpy_backward(self, grad_y, cache, params):
        beta, threshold = self.options["beta"], self.options["threshold"]
        return grad_y * np.where(beta * cache > threshold, 1.0, stable_sigmoid(beta * cache)).astype(grad_y.dtype), {}

    def torch_module(self):
        import torch

        return torch.nn.Softplus(beta=self.options["beta"], threshold=self.options["threshold"])


class ELU(Layer):
    """``nn.ELU(alpha)``: ``x`` for ``x > 0``, ``alpha (exp(x) - 1)`` otherwise; a kink at 0
    unless ``alpha == 1``."""

    kind = "elu"
    ELEMENTWISE = True
    OPTIONS = (Option("alpha", float, default=1.0, check=_check_positive),)

    def sympy_forward(self, inputs, params):
        alpha = sp.Float(self.options["alpha"])
        return [sp.Piecewise((a, a > 0), (alpha * (sp.exp(a) - 1), True)) for a in inputs]

    def numpy_forward(self, x, params):
        alpha = self.options["alpha"]
        return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))).astype(x.dtype), x

    def numpy_backward(self, grad_y, cache, params):
        alpha = self.options["alpha"]
        return grad_y * np.where(cache > 0, 1.0, alpha * np.exp(np.minimum(cache, 0))).astype(grad_y.dtype), {}

    def torch_module(self):
        import torch

        return torch.nn.ELU(alpha=self.options["alpha"])

    def kink_inputs(self, cache):
        return None if self.options["alpha"] == 1.0 else cache

    def kink_state(self, cache):
        # with alpha = 1 ELU is differentiable at 0 but its second derivative jumps there:
        # a finite-difference step across 0 breaks the Richardson error estimate, so the
        # branch is tracked (and such steps excluded) even when 0 is not a kink
        return cache > 0
