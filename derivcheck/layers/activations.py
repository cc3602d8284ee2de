"""Elementwise and row-wise activations: ReLU, LeakyReLU, Sigmoid, Tanh, Softmax,
LogSoftmax, Identity. Inputs and outputs are ``(N, features)``; softmaxes act on the
feature axis (``dim=-1``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import sympy as sp

from .base import Layer, Option, Params, SymbolArrays, elementwise_jet


class Identity(Layer):
    """``nn.Identity``."""

    kind = "identity"

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
