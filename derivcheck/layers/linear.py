"""Fully connected layer ``y = x W^T + b`` (PyTorch's ``nn.Linear``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from derivcheck._lazy import sympy as sp

from derivcheck.layers.base import Layer, Option, Params, SymbolArrays, positive_int
from derivcheck.layers.rules import ProductCell


def _weight_times_input(a: Any, w: Any) -> Any:
    return w * a


class Linear(Layer):
    """``nn.Linear(in, out, bias)``: weight ``(out, in)``, bias ``(out,)``; input ``(N, in)``."""

    kind = "linear"
    OPTIONS = (
        Option("in", int, check=positive_int, help="number of input features"),
        Option("out", int, check=positive_int, help="number of output features"),
        Option("bias", bool, default=True),
    )

    @property
    def in_features(self) -> int:
        return int(self.options["in"])

    @property
    def out_features(self) -> int:
        return int(self.options["out"])

    def output_size(self, in_size: int) -> int:
        if in_size != self.in_features:
            raise ValueError(f"linear expects {self.in_features} input features but the previous layer gives {in_size}")
        return self.out_features

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {"weight": (self.out_features, self.in_features)}
        if self.options["bias"]:
            shapes["bias"] = (self.out_features,)
        return shapes

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        bound = 1.0 / np.sqrt(self.in_features)
        return {name: rng.uniform(-bound, bound, size=shape) for name, shape in self.param_shapes().items()}

    def sympy_forward(self, inputs: list[sp.Expr], params: SymbolArrays) -> list[sp.Expr]:
        weight = params["weight"]
        outputs = []
        for i in range(self.out_features):
            total = sp.Add(*[weight[i, j] * inputs[j] for j in range(self.in_features)])
            if "bias" in params:
                total = total + params["bias"][i]
            outputs.append(total)
        return outputs

    def product_cell(self) -> ProductCell:
        """``y_o = sum_k W_ok a_k + b_o``: the term ``w * a``, derived once for any width."""
        return ProductCell(_weight_times_input, bool(self.options.get("bias", True)))

    def numpy_forward(self, x: np.ndarray, params: Params) -> tuple[np.ndarray, Any]:
        y = x @ params["weight"].T
        if "bias" in params:
            y = y + params["bias"]
        return y, x

    def numpy_backward(self, grad_y: np.ndarray, cache: Any, params: Params) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        x = cache
        grads = {"weight": grad_y.T @ x}
        if "bias" in params:
            grads["bias"] = grad_y.sum(axis=0)
        return grad_y @ params["weight"], grads

    def numpy_jet(self, h, jac, hess, params):
        weight = params["weight"]
        out = h @ weight.T
        if "bias" in params:
            out = out + params["bias"]
        p, i, d = jac.shape
        # matrix products (BLAS), not einsum's loops: a [2, 50, 50, 50, 1] PINN on 1,000 points
        return out, np.matmul(weight, jac), np.matmul(weight, hess.reshape(p, i, d * d)).reshape(p, -1, d, d)

    def torch_module(self) -> Any:
        import torch

        return torch.nn.Linear(self.in_features, self.out_features, bias=bool(self.options["bias"]), dtype=torch.float64)
