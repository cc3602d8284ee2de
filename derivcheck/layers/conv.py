"""Convolution and pooling: ``Conv1d``, ``Conv2d``, ``MaxPool2d``, ``AvgPool2d``, ``Flatten``.

Shapes follow PyTorch with the batch axis implied: a Conv2d sample is ``(C, H, W)``, a
Conv1d sample ``(C, L)``; weights are ``(out_channels, in_channels / groups, *kernel)``.
Output sizes use PyTorch's formula ``floor((L + 2p - d (k - 1) - 1) / s) + 1``.

The three implementations are independent:

- symbolic: a :class:`~derivcheck.layers.rules.LocalRule` -- one output position is a
  dot product (or a max, or a mean) of a window, derived once by SymPy and applied at
  every position; zero padding reads the constant 0 of the value space;
- numpy: loops over kernel offsets with strided slices (forward ``y += W[:, :, i, j] x``
  per offset, backward scatter-adds ``W^T dy`` into the shifted input window -- the
  "convolution with the flipped kernel" of the textbooks, written as a scatter);
- torch: ``nn.Conv1d/Conv2d/MaxPool2d/AvgPool2d/Flatten``.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from derivcheck._lazy import sympy as sp

from derivcheck.layers.base import Layer, Option, Params, elementwise_rule, positive_int
from derivcheck.layers.rules import LocalRule, RuleBuilder, dot_cell, param_offsets


def _int_or_pair(value: Any) -> str | None:
    values = value if isinstance(value, list) else [value]
    ok = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    return None if ok and values and len(values) <= 2 else "an integer or a list of integers (one per spatial axis)"


def _positive(value: Any) -> str | None:
    problem = _int_or_pair(value)
    values = value if isinstance(value, list) else [value]
    return problem or (None if all(v >= 1 for v in values) else "integers >= 1")


def _non_negative(value: Any) -> str | None:
    problem = _int_or_pair(value)
    values = value if isinstance(value, list) else [value]
    return problem or (None if all(v >= 0 for v in values) else "integers >= 0")


def _window_output(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """PyTorch's output length (may be < 1 for a too-small input)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


class _Windowed(Layer):
    """Shared geometry of layers that slide a window over ``dims`` spatial axes."""

    dims: int = 2
    TORCH_NAME = ""

    def _tuple(self, name: str, default: Any = None) -> tuple[int, ...]:
        value = self.options.get(name)
        if value is None:
            value = default
        values = list(value) if isinstance(value, (list, tuple)) else [value] * self.dims
        if len(values) != self.dims:
            raise ValueError(f"option {name!r} needs {self.dims} value(s), got {value!r}")
        return tuple(int(v) for v in values)

    @property
    def kernel(self) -> tuple[int, ...]:
        return self._tuple("kernel_size")

    @property
    def stride(self) -> tuple[int, ...]:
        return self._tuple("stride", self.options.get("kernel_size") if self.options.get("stride") is None else None)

    @property
    def padding(self) -> tuple[int, ...]:
        return self._tuple("padding", 0)

    @property
    def dilation(self) -> tuple[int, ...]:
        return self._tuple("dilation", 1)

    def _spatial_out(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        names = "LHW"[-self.dims :] if self.dims == 2 else "L"
        if len(in_shape) != self.dims + 1:
            layout = "(C, H, W)" if self.dims == 2 else "(C, L)"
            raise ValueError(f"{self.kind} expects samples of shape {layout}, got {in_shape}; set input_shape or put it after a layer that keeps the shape")
        out = []
        for axis, (size, k, s, p, d) in enumerate(zip(in_shape[1:], self.kernel, self.stride, self.padding, self.dilation)):
            if 2 * p > k:
                raise ValueError(f"padding {p} must be at most half the kernel size {k} (PyTorch's rule)")
            length = _window_output(size, k, s, p, d)
            if length < 1:
                raise ValueError(f"the window (kernel {k}, dilation {d}) does not fit axis {names[axis]} of size {size} with padding {p}")
            out.append(length)
        return tuple(out)

    def _offsets(self) -> list[tuple[int, ...]]:
        return list(itertools.product(*[range(k) for k in self.kernel]))

    def _window_slices(self, offset: tuple[int, ...], out_spatial: tuple[int, ...]) -> tuple[slice, ...]:
        """Slices of the padded input hit by kernel `offset` at every output position."""
        return tuple(slice(o * d, o * d + s * (n - 1) + 1, s) for o, d, s, n in zip(offset, self.dilation, self.stride, out_spatial))

    def _offset_indices(self) -> list[tuple[slice, ...]]:
        """For each kernel offset (row-major, as :meth:`_offsets`), the index of the padded
        batch ``(N, C, *spatial)`` it reads at every output position. Computed once per
        bound shape: forward passes run thousands of times under finite differences."""
        key = (self.in_shape, self.out_shape)
        cached = self.__dict__.get("_offset_index_cache")
        if cached is None or cached[0] != key:
            out_spatial = self.out_shape[1:]
            indices = [(slice(None), slice(None)) + self._window_slices(offset, out_spatial) for offset in self._offsets()]
            cached = (key, indices)
            self.__dict__["_offset_index_cache"] = cached
        return cached[1]

    def _pad(self, x: np.ndarray, value: float = 0.0) -> np.ndarray:
        pads = [(0, 0), (0, 0)] + [(p, p) for p in self.padding]
        return np.pad(x, pads, constant_values=value) if any(self.padding) else x

    def _padded_index(self) -> np.ndarray:
        """Flat input indices of the sample, padded with -1 (the value space's zero)."""
        index = np.arange(int(np.prod(self.in_shape)), dtype=np.int64).reshape(self.in_shape)
        return np.pad(index, [(0, 0)] + [(p, p) for p in self.padding], constant_values=-1)

    def _windows(self) -> list[tuple[int, tuple[int, ...], np.ndarray]]:
        """For each output channel and position: ``(channel, position, window indices
        (C_in, *kernel))`` with -1 where the window covers padding."""
        padded = self._padded_index()
        out_channels, *out_spatial = self.out_shape
        result = []
        for channel in range(out_channels):
            for position in np.ndindex(*out_spatial):
                slices = tuple(slice(p * s, p * s + d * (k - 1) + 1, d) for p, s, d, k in zip(position, self.stride, self.dilation, self.kernel))
                result.append((channel, position, padded[(slice(None),) + slices]))
        return result


class _Conv(_Windowed):
    """``nn.Conv1d`` / ``nn.Conv2d`` with stride, zero padding, dilation and groups."""

    OPTIONS = (
        Option("in_channels", int, check=positive_int),
        Option("out_channels", int, check=positive_int),
        Option("kernel_size", (int, list), check=_positive),
        Option("stride", (int, list), default=1, check=_positive),
        Option("padding", (int, list), default=0, check=_non_negative),
        Option("dilation", (int, list), default=1, check=_positive),
        Option("groups", int, default=1, check=positive_int),
        Option("bias", bool, default=True),
    )

    @property
    def stride(self) -> tuple[int, ...]:
        return self._tuple("stride", 1)

    def output_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        c_in, c_out, groups = self.options["in_channels"], self.options["out_channels"], self.options["groups"]
        if c_in % groups or c_out % groups:
            raise ValueError(f"in_channels ({c_in}) and out_channels ({c_out}) must both be divisible by groups ({groups})")
        spatial = self._spatial_out(in_shape)
        if in_shape[0] != c_in:
            raise ValueError(f"{self.kind} expects {c_in} input channels but receives shape {in_shape}")
        return (c_out,) + spatial

    def held_values_per_sample(self) -> float:
        """The unfolded windows (im2col): kernel size x input channels per output position."""
        positions = float(np.prod(self.out_shape[1:], dtype=np.float64))
        return float(np.prod(self.param_shapes()["weight"][1:], dtype=np.float64)) * positions * self.options["groups"]

    def work_per_sample(self) -> float:
        positions = float(np.prod(self.out_shape[1:], dtype=np.float64))
        return float(self.param_count()) * positions + super().work_per_sample()

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        c_in, c_out, groups = self.options["in_channels"], self.options["out_channels"], self.options["groups"]
        shapes = {"weight": (c_out, c_in // groups) + self.kernel}
        if self.options["bias"]:
            shapes["bias"] = (c_out,)
        return shapes

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        shapes = self.param_shapes()
        fan_in = int(np.prod(shapes["weight"][1:]))
        bound = 1.0 / np.sqrt(fan_in)
        return {name: rng.uniform(-bound, bound, size=shape) for name, shape in shapes.items()}

    # -- symbolic ------------------------------------------------------------------------
    def sympy_forward(self, inputs, params):
        """Whole-layer form (used by explain); the engine uses :meth:`local_rule`."""
        values = np.array(list(inputs) + [sp.Integer(0)], dtype=object)
        outputs = []
        groups = self.options["groups"]
        per_group_in = self.in_shape[0] // groups
        per_group_out = self.out_shape[0] // groups
        for channel, _position, window in self._windows():
            group = channel // per_group_out
            window = window[group * per_group_in : (group + 1) * per_group_in]
            total = sp.Add(*[w * values[i] for w, i in zip(params["weight"][channel].ravel(), window.ravel()) if i >= 0])
            outputs.append(total + params["bias"][channel] if "bias" in params else total)
        return outputs

    def local_rule(self) -> LocalRule:
        groups = self.options["groups"]
        per_group_in = self.in_shape[0] // groups
        per_group_out = self.out_shape[0] // groups
        offsets = param_offsets(self.param_shapes())
        has_bias = bool(self.options["bias"])
        builder = RuleBuilder(self.in_size)
        n = per_group_in * int(np.prod(self.kernel))
        fn, n_params = dot_cell(n, has_bias)
        cell = builder.cell(fn, n, n_params, ("dot", n, has_bias))
        inputs, params = [], []
        for channel, _position, window in self._windows():
            group = channel // per_group_out
            inputs.append(window[group * per_group_in : (group + 1) * per_group_in].ravel())
            row = list(offsets["weight"][channel].ravel())
            if has_bias:
                row.append(int(offsets["bias"][channel]))
            params.append(row)
        outputs = builder.stage(cell, inputs, params, 1)
        return builder.build(outputs[:, 0])

    # -- numpy ---------------------------------------------------------------------------
    def numpy_forward(self, x: np.ndarray, params: Params) -> tuple[np.ndarray, Any]:
        """Cross-correlation as one matrix product per group: the kernel offsets' strided
        views of the padded input are stacked into columns ``(N, groups, C_g * K, P)``
        (``K`` kernel offsets, ``P`` output positions) and multiplied by the weight
        ``(groups, O_g, C_g * K)``."""
        n = x.shape[0]
        xs = self._pad(x.reshape((n,) + self.in_shape))
        weight = params["weight"]
        groups = self.options["groups"]
        out_channels, *out_spatial = self.out_shape
        positions = int(np.prod(out_spatial))
        columns = np.stack([xs[index] for index in self._offset_indices()], axis=2)  # (N, C, K, *out)
        columns = columns.reshape(n, groups, -1, positions)
        kernel = np.asarray(weight).reshape(groups, out_channels // groups, -1)
        y = np.matmul(kernel[None], columns).reshape((n, out_channels, *out_spatial))
        if "bias" in params:
            y = y + params["bias"].reshape((1, -1) + (1,) * self.dims)
        return y.astype(x.dtype, copy=False).reshape(n, -1), xs

    def numpy_backward(self, grad_y, cache, params):
        xs = cache
        n = xs.shape[0]
        gy = grad_y.reshape((n,) + self.out_shape)
        weight = params["weight"]
        groups = self.options["groups"]
        gi, go = self.in_shape[0] // groups, self.out_shape[0] // groups
        axes = "hw"[: self.dims]
        grad_w = np.zeros_like(weight, dtype=grad_y.dtype)
        grad_xs = np.zeros_like(xs, dtype=grad_y.dtype)
        for offset, index in zip(self._offsets(), self._offset_indices()):
            window = xs[index]
            for g in range(groups):
                rows = slice(g * go, (g + 1) * go)
                cols = slice(g * gi, (g + 1) * gi)
                grad_w[(rows, slice(None)) + offset] += np.einsum(f"no{axes},nc{axes}->oc", gy[:, rows], window[:, cols])
                contribution = np.einsum("no...,oc->nc...", gy[:, rows], weight[(rows, slice(None)) + offset])
                grad_xs[(slice(None), cols) + index[2:]] += contribution
        crop = (slice(None), slice(None)) + tuple(slice(p, p + size) for p, size in zip(self.padding, self.in_shape[1:]))
        grads = {"weight": grad_w}
        if "bias" in params:
            grads["bias"] = gy.sum(axis=tuple(i for i in range(gy.ndim) if i != 1))
        return grad_xs[crop].reshape(n, -1), grads

    def torch_module(self) -> Any:
        import torch

        cls: Any = torch.nn.Conv1d if self.dims == 1 else torch.nn.Conv2d
        return cls(
            self.options["in_channels"], self.options["out_channels"], self.kernel, stride=self.stride,
            padding=self.padding, dilation=self.dilation, groups=self.options["groups"],
            bias=bool(self.options["bias"]), dtype=torch.float64,
        )  # fmt: skip


class Conv1d(_Conv):
    """``nn.Conv1d``: samples ``(C, L)``, weight ``(out, in/groups, k)``."""

    kind = "conv1d"
    dims = 1


class Conv2d(_Conv):
    """``nn.Conv2d``: samples ``(C, H, W)``, weight ``(out, in/groups, kh, kw)``."""

    kind = "conv2d"
    dims = 2


_POOL_OPTIONS = (
    Option("kernel_size", (int, list), check=_positive),
    Option("stride", (int, list), default=None, check=_positive, help="defaults to kernel_size"),
)


class _Pool2d(_Windowed):
    dims = 2

    def _kernel_size(self) -> float:
        return float(np.prod(self.kernel, dtype=np.float64))

    def held_values_per_sample(self) -> float:
        """Every kernel offset's view of the input is stacked: K x the output."""
        return self._kernel_size() * float(np.prod(self.out_shape, dtype=np.float64))

    def work_per_sample(self) -> float:
        return self.held_values_per_sample() + super().work_per_sample()

    def output_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (in_shape[0],) + self._spatial_out(in_shape) if len(in_shape) == 3 else self._spatial_out(in_shape)

    def _channel_windows(self) -> tuple[np.ndarray, np.ndarray]:
        """Input indices of every window ``(M, K)`` in output order (channel, position)."""
        rows = [window[channel].ravel() for channel, _pos, window in self._windows()]
        return np.array(rows, dtype=np.int64), np.arange(len(rows))

    def _stacked_windows(self, x: np.ndarray) -> np.ndarray:
        """``(K, N, C, Ho, Wo)``: every kernel offset's strided view of the padded input."""
        n = x.shape[0]
        xs = self._pad(x.reshape((n,) + self.in_shape), self._pad_value)
        return np.stack([xs[index] for index in self._offset_indices()])

    _pad_value = 0.0

    def _scatter(self, grad_windows: np.ndarray, n: int, dtype: Any) -> np.ndarray:
        """Add per-offset window gradients ``(K, N, C, Ho, Wo)`` back into the input."""
        padded_shape = (n, self.in_shape[0]) + tuple(s + 2 * p for s, p in zip(self.in_shape[1:], self.padding))
        grad = np.zeros(padded_shape, dtype=dtype)
        for g, index in zip(grad_windows, self._offset_indices()):
            grad[index] += g
        crop = (slice(None), slice(None)) + tuple(slice(p, p + size) for p, size in zip(self.padding, self.in_shape[1:]))
        return grad[crop].reshape(n, -1)


def _tournament_max(values: list[sp.Expr]) -> sp.Expr:
    """``max`` of the window as a tournament of ``max(a, b) = (a + b + |a - b|) / 2``.

    Same function as ``sp.Max``, but SymPy differentiates it in milliseconds (``d/da =
    (1 + sign(a - b)) / 2`` per match) where the derivative of an n-ary ``Max`` is a
    nested ``Heaviside(a - Max(...))`` that takes seconds to compile for a 2x2 window.
    At a tie the derivative splits (1/2): a kink, reported as such."""
    values = list(values)
    while len(values) > 1:
        paired = [(a + b + sp.Abs(a - b)) / 2 for a, b in zip(values[0::2], values[1::2])]
        values = paired + ([values[-1]] if len(values) % 2 else [])
    return values[0]


class MaxPool2d(_Pool2d):
    """``nn.MaxPool2d(kernel_size, stride)``: the largest entry of each window. Ties are
    kinks (the derivative picks one entry; PyTorch the first, SymPy splits it)."""

    kind = "max_pool2d"
    OPTIONS = _POOL_OPTIONS

    @property
    def padding(self) -> tuple[int, ...]:
        return (0,) * self.dims

    def sympy_forward(self, inputs, params):
        windows, _ = self._channel_windows()
        return [sp.Max(*[inputs[i] for i in row]) for row in windows]

    def local_rule(self) -> LocalRule:
        windows, _ = self._channel_windows()
        k = windows.shape[1]
        builder = RuleBuilder(self.in_size)
        cell = builder.cell(lambda ins, _p: [_tournament_max(ins)], k, 0, ("max", k))
        outputs = builder.stage(cell, windows, np.zeros((len(windows), 0)), 1)
        return builder.build(outputs[:, 0])

    def numpy_forward(self, x, params):
        stacked = self._stacked_windows(x)
        arg = stacked.argmax(axis=0)  # the first maximum, like PyTorch
        top = np.take_along_axis(stacked, arg[None], axis=0)[0]
        return top.reshape(x.shape[0], -1), (stacked, arg)

    def numpy_backward(self, grad_y, cache, params):
        stacked, arg = cache
        n = grad_y.shape[0]
        gy = grad_y.reshape(arg.shape)
        grad_windows = np.where(np.arange(stacked.shape[0]).reshape((-1,) + (1,) * arg.ndim) == arg[None], gy[None], 0.0)
        return self._scatter(grad_windows.astype(grad_y.dtype), n, grad_y.dtype), {}

    def kink_inputs(self, cache):
        stacked, _ = cache
        if stacked.shape[0] < 2:
            return None
        top_two = -np.sort(-stacked, axis=0)[:2]
        return (top_two[0] - top_two[1]).reshape(stacked.shape[1], -1)

    def kink_state(self, cache):
        _, arg = cache
        return arg.reshape(arg.shape[0], -1)

    def torch_module(self):
        import torch

        return torch.nn.MaxPool2d(self.kernel, stride=self.stride)


class AvgPool2d(_Pool2d):
    """``nn.AvgPool2d(kernel_size, stride, padding)`` with ``count_include_pad=True``
    (padding zeros count in the mean, PyTorch's default)."""

    kind = "avg_pool2d"
    OPTIONS = _POOL_OPTIONS + (Option("padding", (int, list), default=0, check=_non_negative),)

    def sympy_forward(self, inputs, params):
        windows, _ = self._channel_windows()
        values = list(inputs) + [sp.Integer(0)]
        return [sp.Add(*[values[i] for i in row]) / len(row) for row in windows]

    def local_rule(self) -> LocalRule:
        windows, _ = self._channel_windows()
        k = windows.shape[1]
        builder = RuleBuilder(self.in_size)
        cell = builder.cell(lambda ins, _p: [sp.Add(*ins) / len(ins)], k, 0, ("mean", k))
        outputs = builder.stage(cell, windows, np.zeros((len(windows), 0)), 1)
        return builder.build(outputs[:, 0])

    def numpy_forward(self, x, params):
        stacked = self._stacked_windows(x)
        return stacked.mean(axis=0).reshape(x.shape[0], -1), stacked.shape

    def numpy_backward(self, grad_y, cache, params):
        shape = cache
        gy = grad_y.reshape(shape[1:]) / shape[0]
        return self._scatter(np.broadcast_to(gy, shape), grad_y.shape[0], grad_y.dtype), {}

    def torch_module(self):
        import torch

        return torch.nn.AvgPool2d(self.kernel, stride=self.stride, padding=self.padding)


class Flatten(Layer):
    """``nn.Flatten()``: ``(C, H, W)`` -> ``(C*H*W,)`` in row-major order."""

    kind = "flatten"

    def output_shape(self, in_shape):
        return (int(np.prod(in_shape)),)

    def sympy_forward(self, inputs, params):
        return list(inputs)

    def local_rule(self):
        return elementwise_rule(self)

    def numpy_forward(self, x, params):
        return x, None

    def numpy_backward(self, grad_y, cache, params):
        return grad_y, {}

    def numpy_jet(self, h, jac, hess, params):
        return h, jac, hess

    def torch_module(self):
        import torch

        return torch.nn.Flatten()
