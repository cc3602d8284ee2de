"""Normalisation: ``LayerNorm``, ``BatchNorm1d`` and ``BatchNorm2d``.

Both normalise ``x_hat = (x - mean) / sqrt(var + eps)`` with the *biased* variance (as
PyTorch computes it in the forward pass), then scale and shift ``y = gamma x_hat + beta``
(parameters ``weight`` and ``bias``).

- ``LayerNorm(normalized_shape)``: statistics over the trailing ``normalized_shape`` axes of
  each sample (per position of a sequence).
- ``BatchNorm1d/2d(num_features)``: statistics per channel over the batch (and the
  length / spatial axes) in ``mode = "train"`` -- the layer then couples the samples of
  the batch -- or the fixed running statistics in ``mode = "eval"`` (options
  ``running_mean`` / ``running_var``; defaults are a fixed draw).

The symbolic engine derives three small cells -- the mean of a group, its variance given
the mean, and the normalisation of one entry -- and lets the chain rule combine them; the numpy engine
uses the classic closed-form backward
``dx = (dx_hat - mean(dx_hat) - x_hat mean(dx_hat x_hat)) / sqrt(var + eps)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from derivcheck._lazy import sympy as sp

from derivcheck.layers.base import Layer, Option, positive_int
from derivcheck.layers.rules import LocalRule, RuleBuilder, param_offsets


def _positive_float(value: Any) -> str | None:
    return None if value > 0 and np.isfinite(value) else "a finite number > 0"


def normalize(x: np.ndarray, eps: float, axes: int | tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(x_hat, 1/sqrt(var + eps))`` with mean and biased variance over `axes`."""
    mean = x.mean(axis=axes, keepdims=True)
    inv = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + eps)
    return (x - mean) * inv, inv


def normalize_backward(d_hat: np.ndarray, x_hat: np.ndarray, inv: np.ndarray, axes: int | tuple[int, ...]) -> np.ndarray:
    """Hand-written backward of :func:`normalize`: ``dL/dx`` from ``dL/dx_hat``."""
    return inv * (d_hat - d_hat.mean(axis=axes, keepdims=True) - x_hat * (d_hat * x_hat).mean(axis=axes, keepdims=True))


def _mean_cell(k: int) -> Any:
    return lambda ins, _params: [sp.Add(*ins) / k]


def _variance_cell(k: int) -> Any:
    """Biased variance of ``k`` entries given their mean as the last input (the chain
    rule adds the mean's own dependence on the entries; deriving the closed form instead
    would differentiate every squared term for every entry)."""
    return lambda ins, _params: [sp.Add(*[(a - ins[k]) ** 2 for a in ins[:k]]) / k]


def _normalize_cell(eps: float, affine: bool) -> Any:
    def fn(ins: list[sp.Expr], params: list[sp.Expr]) -> list[sp.Expr]:
        x, mean, var = ins
        x_hat = (x - mean) / sp.sqrt(var + sp.Float(eps))
        return [x_hat * params[0] + params[1] if affine else x_hat]

    return fn


def _add_normalization(builder: RuleBuilder, groups: list[np.ndarray], gammas: list[list[int]], betas: list[list[int]], eps: float, affine: bool) -> np.ndarray:
    """Two stages: the moments of each group (value indices), then every entry
    normalised with its group's moments; ``gammas[g][d]`` / ``betas[g][d]`` are the
    parameter indices for entry ``d`` of group ``g``. Returns the output value index of
    each entry, aligned with ``np.concatenate(groups)``."""
    k = len(groups[0])
    no_params = np.zeros((len(groups), 0))
    means = builder.stage(builder.cell(_mean_cell(k), k, 0, ("mean", k)), np.array(groups), no_params, 1)
    with_mean = np.concatenate([np.array(groups), means], axis=1)
    variances = builder.stage(builder.cell(_variance_cell(k), k + 1, 0, ("variance", k)), with_mean, no_params, 1)
    stats = np.concatenate([means, variances], axis=1)
    normalize = builder.cell(_normalize_cell(eps, affine), 3, 2 if affine else 0, ("normalize", eps, affine))
    rows, params = [], []
    for group, (mean, var), gamma_row, beta_row in zip(groups, stats, gammas, betas):
        for d, index in enumerate(group):
            rows.append([index, mean, var])
            params.append([gamma_row[d], beta_row[d]] if affine else [])
    return builder.stage(normalize, rows, np.array(params, dtype=np.int64).reshape(len(rows), -1), 1)[:, 0]


class LayerNorm(Layer):
    """``nn.LayerNorm(normalized_shape, eps, elementwise_affine)``."""

    kind = "layer_norm"
    OPTIONS = (
        Option("normalized_shape", (int, list), help="size of the trailing axes to normalise (an integer or a list)"),
        Option("eps", float, default=1e-5, check=_positive_float),
        Option("elementwise_affine", bool, default=True),
    )

    @property
    def normalized(self) -> tuple[int, ...]:
        value = self.options["normalized_shape"]
        return tuple(int(v) for v in (value if isinstance(value, list) else [value]))

    def output_shape(self, in_shape):
        k = len(self.normalized)
        if len(in_shape) < k or tuple(in_shape[-k:]) != self.normalized:
            raise ValueError(f"normalized_shape {list(self.normalized)} must equal the trailing axes of the input shape {in_shape}")
        return in_shape

    @property
    def group_size(self) -> int:
        return int(np.prod(self.normalized))

    def param_shapes(self):
        return {"weight": self.normalized, "bias": self.normalized} if self.options["elementwise_affine"] else {}

    def init_params(self, rng):
        # PyTorch starts at gamma = 1, beta = 0; perturb them so a dropped term shows
        return {name: (1.0 if name == "weight" else 0.0) + rng.uniform(-0.5, 0.5, size=shape) for name, shape in self.param_shapes().items()}

    def _groups(self) -> np.ndarray:
        return np.arange(self.in_size, dtype=np.int64).reshape(-1, self.group_size)

    def sympy_forward(self, inputs, params):
        eps = sp.Float(self.options["eps"])
        outputs = []
        for group in self._groups():
            xs = [inputs[i] for i in group]
            mean = sp.Add(*xs) / len(xs)
            var = sp.Add(*[(a - mean) ** 2 for a in xs]) / len(xs)
            for d, a in enumerate(xs):
                x_hat = (a - mean) / sp.sqrt(var + eps)
                outputs.append(x_hat * params["weight"].ravel()[d] + params["bias"].ravel()[d] if "weight" in params else x_hat)
        return outputs

    def local_rule(self) -> LocalRule:
        builder = RuleBuilder(self.in_size)
        affine = bool(self.options["elementwise_affine"])
        groups = list(self._groups())
        offsets = param_offsets(self.param_shapes())
        gamma = list(offsets["weight"].ravel()) if affine else []
        beta = list(offsets["bias"].ravel()) if affine else []
        out = _add_normalization(builder, groups, [gamma] * len(groups), [beta] * len(groups), self.options["eps"], affine)
        return builder.build(out)  # groups are consecutive, so entry order is input order

    def numpy_forward(self, x, params):
        n = x.shape[0]
        xs = x.reshape(n, -1, self.group_size)
        x_hat, inv = normalize(xs, self.options["eps"], -1)
        y = x_hat * params["weight"].ravel() + params["bias"].ravel() if "weight" in params else x_hat
        return y.reshape(n, -1), (x_hat, inv)

    def numpy_backward(self, grad_y, cache, params):
        x_hat, inv = cache
        n = grad_y.shape[0]
        gy = grad_y.reshape(x_hat.shape)
        d_hat = gy * params["weight"].ravel() if "weight" in params else gy
        dx = normalize_backward(d_hat, x_hat, inv, -1)
        grads = {}
        if "weight" in params:
            grads = {
                "weight": (gy * x_hat).sum(axis=(0, 1)).reshape(self.normalized),
                "bias": gy.sum(axis=(0, 1)).reshape(self.normalized),
            }
        return dx.reshape(n, -1), grads

    def torch_module(self):
        import torch

        return torch.nn.LayerNorm(list(self.normalized), eps=self.options["eps"], elementwise_affine=bool(self.options["elementwise_affine"]), dtype=torch.float64)


def _float_list(value: Any) -> str | None:
    ok = isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value)
    return None if ok else "a list of finite numbers, one per channel"


class _BatchNorm(Layer):
    """Shared implementation; subclasses fix the accepted sample layouts."""

    LAYOUTS: tuple[int, ...] = ()
    TORCH_CLASS = ""
    OPTIONS = (
        Option("num_features", int, check=positive_int, help="number of channels C"),
        Option("mode", str, default="train", check=lambda v: None if v in ("train", "eval") else "'train' or 'eval'"),
        Option("eps", float, default=1e-5, check=_positive_float),
        Option("running_mean", list, default=None, check=_float_list),
        Option("running_var", list, default=None, check=_float_list),
    )

    @property
    def per_sample(self) -> bool:  # type: ignore[override]
        return self.options["mode"] == "eval"

    @property
    def channels(self) -> int:
        return int(self.options["num_features"])

    def output_shape(self, in_shape):
        layouts = {1: "(C,)", 2: "(C, L)", 3: "(C, H, W)"}
        if len(in_shape) not in self.LAYOUTS or in_shape[0] != self.channels:
            allowed = " or ".join(layouts[k] for k in self.LAYOUTS)
            raise ValueError(f"{self.kind} expects samples of shape {allowed} with C = {self.channels}, got {in_shape}")
        for name in ("running_mean", "running_var"):
            value = self.options.get(name)
            if value is not None and len(value) != self.channels:
                raise ValueError(f"option {name!r} needs {self.channels} values, got {len(value)}")
        if self.options.get("running_var") is not None and min(self.options["running_var"]) <= 0:
            raise ValueError("option 'running_var' must be positive")
        return in_shape

    @property
    def spatial(self) -> int:
        return int(np.prod(self.in_shape[1:])) if len(self.in_shape) > 1 else 1

    def running_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """``(running_mean, running_var)`` from the options, else a fixed draw."""
        rng = np.random.default_rng(1000 + self.channels)
        mean = self.options.get("running_mean")
        var = self.options.get("running_var")
        default_mean, default_var = rng.normal(0.0, 0.5, self.channels), rng.uniform(0.5, 2.0, self.channels)
        return (np.asarray(mean, dtype=np.float64) if mean is not None else default_mean,
                np.asarray(var, dtype=np.float64) if var is not None else default_var)  # fmt: skip

    def param_shapes(self):
        return {"weight": (self.channels,), "bias": (self.channels,)}

    def init_params(self, rng):
        return {"weight": 1.0 + rng.uniform(-0.5, 0.5, self.channels), "bias": rng.uniform(-0.5, 0.5, self.channels)}

    def sympy_forward(self, inputs, params):
        if self.options["mode"] == "train":
            raise ValueError("batch normalisation in training mode couples the samples; it has no per-sample formula")
        mean, var = self.running_stats()
        eps = self.options["eps"]
        outputs = []
        for i, a in enumerate(inputs):
            c = i // self.spatial
            outputs.append((a - sp.Float(mean[c])) / sp.sqrt(sp.Float(var[c]) + sp.Float(eps)) * params["weight"][c] + params["bias"][c])
        return outputs

    def batch_rule(self, batch: int) -> LocalRule:
        builder = RuleBuilder(batch * self.in_size)
        offsets = param_offsets(self.param_shapes())
        groups = [np.array([n * self.in_size + c * self.spatial + s for n in range(batch) for s in range(self.spatial)], dtype=np.int64) for c in range(self.channels)]
        size = len(groups[0])
        gammas = [[int(offsets["weight"][c])] * size for c in range(self.channels)]
        betas = [[int(offsets["bias"][c])] * size for c in range(self.channels)]
        out = _add_normalization(builder, groups, gammas, betas, self.options["eps"], True)
        # out is aligned with the concatenated groups; map back to (sample, feature) order
        order = np.concatenate(groups)
        output = np.empty(batch * self.in_size, dtype=np.int64)
        output[order] = out
        return builder.build(output)

    def _view(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(x.shape[0], self.channels, self.spatial)

    def numpy_forward(self, x, params):
        xs = self._view(x)
        if self.options["mode"] == "train":
            x_hat, inv = normalize(xs, self.options["eps"], (0, 2))
        else:
            rm, rv = self.running_stats()
            inv = 1.0 / np.sqrt(rv.reshape(1, -1, 1).astype(x.dtype) + self.options["eps"])
            x_hat = (xs - rm.reshape(1, -1, 1).astype(x.dtype)) * inv
        y = x_hat * params["weight"].reshape(1, -1, 1) + params["bias"].reshape(1, -1, 1)
        return y.reshape(x.shape[0], -1), (x_hat, inv)

    def numpy_backward(self, grad_y, cache, params):
        x_hat, inv = cache
        gy = self._view(grad_y)
        d_hat = gy * params["weight"].reshape(1, -1, 1)
        if self.options["mode"] == "train":
            dx = normalize_backward(d_hat, x_hat, inv, (0, 2))
        else:
            dx = inv * d_hat
        grads = {"weight": (gy * x_hat).sum(axis=(0, 2)), "bias": gy.sum(axis=(0, 2))}
        return dx.reshape(grad_y.shape[0], -1), grads

    def torch_module(self):
        import torch

        module = getattr(torch.nn, self.TORCH_CLASS)(self.channels, eps=self.options["eps"], dtype=torch.float64)
        mean, var = self.running_stats()
        with torch.no_grad():
            module.running_mean.copy_(torch.as_tensor(mean))
            module.running_var.copy_(torch.as_tensor(var))
        module.train(self.options["mode"] == "train")
        return module


class BatchNorm1d(_BatchNorm):
    """``nn.BatchNorm1d``: samples ``(C,)`` or ``(C, L)``."""

    kind = "batch_norm1d"
    LAYOUTS = (1, 2)
    TORCH_CLASS = "BatchNorm1d"


class BatchNorm2d(_BatchNorm):
    """``nn.BatchNorm2d``: samples ``(C, H, W)``."""

    kind = "batch_norm2d"
    LAYOUTS = (3,)
    TORCH_CLASS = "BatchNorm2d"
