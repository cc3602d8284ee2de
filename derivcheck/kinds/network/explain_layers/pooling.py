"""Pooling (``nn.MaxPool2d``, ``nn.AvgPool2d``) as a lecture derives it.

Windows of size ``k`` with stride ``s`` over ``(C, H, W)`` (zero padding ``p`` for average
pooling, which counts the zeros: PyTorch's ``count_include_pad=True``).

- Max pooling routes: each output's gradient goes to the window entry that was largest
  (the arg-max mask); every other entry gets nothing. At a tie the max is not
  differentiable -- a kink: PyTorch (and the numpy rule) pick the first maximum.
- Average pooling spreads: each output's gradient is shared equally, ``1/k^2`` to every
  entry of its window; overlapping windows add up.
"""

from __future__ import annotations

import itertools

import numpy as np

from derivcheck.explain_steps import Step, _compare
from derivcheck.kinds.network.explain_layers.trace import LayerTrace
from derivcheck.kinds.network.explain_layers.windows import crop, pad, window_view

# entries of one window closer than this (relative) count as a tie
TIE_RTOL = 1e-12


def max_route(x: np.ndarray, grad_y: np.ndarray, kernel: tuple[int, ...], stride: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, int]:
    """``(max values, dL/dx, number of tied windows)`` of max pooling: `x` ``(N, C, H, W)``,
    `grad_y` ``(N, C, Ho, Wo)``; the gradient of each window goes to its first maximum."""
    win = window_view(x, kernel, stride, (1,) * len(kernel))
    out = win.shape[2:4]
    flat: np.ndarray = win.reshape(win.shape[:4] + (-1,))
    arg = flat.argmax(axis=-1)
    top = np.take_along_axis(flat, arg[..., None], axis=-1)[..., 0]
    ordered = -np.sort(-flat, axis=-1)
    ties = int(np.sum(ordered[..., 0] - ordered[..., 1] <= TIE_RTOL * np.maximum(1.0, np.abs(ordered[..., 0])))) if flat.shape[-1] > 1 else 0
    grad_x = np.zeros_like(x)
    for k, offset in enumerate(itertools.product(*[range(size) for size in kernel])):
        u, v = offset
        target = (slice(None), slice(None), slice(u, u + stride[0] * (out[0] - 1) + 1, stride[0]), slice(v, v + stride[1] * (out[1] - 1) + 1, stride[1]))
        grad_x[target] += np.where(arg == k, grad_y, 0.0)
    return top, grad_x, ties


def avg_spread(x: np.ndarray, grad_y: np.ndarray, kernel: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(means, dL/dx)`` of average pooling: every window entry gets ``dL/dy / k^2``."""
    padded = pad(x, padding)
    win = window_view(padded, kernel, stride, (1,) * len(kernel))
    out = win.shape[2:4]
    size = int(np.prod(kernel))
    grad = np.zeros_like(padded)
    for offset in itertools.product(*[range(k) for k in kernel]):
        u, v = offset
        target = (slice(None), slice(None), slice(u, u + stride[0] * (out[0] - 1) + 1, stride[0]), slice(v, v + stride[1] * (out[1] - 1) + 1, stride[1]))
        grad[target] += grad_y / size
    return win.mean(axis=(-2, -1)), crop(grad, padding, x.shape[2:])


def explain_pooling(trace: LayerTrace) -> list[Step]:
    layer = trace.layer
    n = trace.x.shape[0]
    x = trace.x.reshape((n,) + layer.in_shape)
    gy = trace.grad_y.reshape((n,) + layer.out_shape)
    kernel, stride = layer.kernel, layer.stride
    rule_x, _ = trace.numpy_rule()
    name_in, name_out = trace.name_in, trace.name_out
    window = x[0, 0, : kernel[0], : kernel[1]] if layer.kind == "max_pool2d" else pad(x, layer.padding)[0, 0, : kernel[0], : kernel[1]]
    if layer.kind == "max_pool2d":
        values, lecture_x, ties = max_route(x, gy, kernel, stride)
        step = Step(f"Layer {trace.index} (max_pool2d): the backward pass routes each gradient to its window's maximum")
        step.text.append(f"{name_out}[c, i, j] = max over the {kernel[0]}x{kernel[1]} window at ({stride[0]}i, {stride[1]}j) of {name_in}[c]   (stride {stride})")
        step.text.append(f"dL/d{name_in}[c, a, b] = sum over the windows whose arg-max is (a, b) of dL/d{name_out}[c, i, j]; every other entry gets 0 (the arg-max mask)")
        arg = np.unravel_index(int(np.argmax(window)), window.shape)
        step.text.append(
            f"channel 0, window (0, 0) of sample 0: {np.round(window, 4).tolist()} -> max {window.max():.4g} at {tuple(int(a) for a in arg)}, which receives dL/d{name_out}[0, 0, 0] = {gy[0, 0, 0, 0]:.4g}"
        )
        step.text.append(
            f"ties: {ties} window(s) have two equal largest entries -- a kink (max is not differentiable there; torch and the numpy rule send the gradient to the first)"
            if ties
            else "ties: none (no window has two equal largest entries, so the max is differentiable at every window)"
        )
        step.latex.append(r"\frac{\partial L}{\partial x_{c,a,b}} = \sum_{i,j} \frac{\partial L}{\partial y_{c,i,j}}\; \mathbb{1}\big[(a,b) = \arg\max_{\text{window}(i,j)} x_c\big]")
    else:
        values, lecture_x = avg_spread(x, gy, kernel, stride, layer.padding)
        size = int(np.prod(kernel))
        step = Step(f"Layer {trace.index} (avg_pool2d): the backward pass spreads each gradient evenly over its window")
        step.text.append(
            f"{name_out}[c, i, j] = (1/{size}) sum over the {kernel[0]}x{kernel[1]} window at ({stride[0]}i, {stride[1]}j) of {name_in}_pad[c]   (stride {stride}, padding {layer.padding}, padded zeros count)"
        )
        step.text.append(f"dL/d{name_in}[c, a, b] = (1/{size}) sum over the windows containing (a, b) of dL/d{name_out}[c, i, j]")
        step.text.append(
            f"channel 0, window (0, 0) of sample 0: {np.round(window, 4).tolist()} -> mean {window.mean():.4g}; each entry receives dL/d{name_out}[0, 0, 0] / {size} = {gy[0, 0, 0, 0] / size:.4g}"
        )
        step.latex.append(r"\frac{\partial L}{\partial x_{c,a,b}} = \frac{1}{k^2} \sum_{(i,j) \ni (a,b)} \frac{\partial L}{\partial y_{c,i,j}}")
    step.checks.append(_compare(f"{name_out} {(n,) + layer.out_shape}", {"lecture formula": values.reshape(n, -1), "torch": trace.torch_y, "numpy rule": trace.y}))
    step.checks.append(_compare(f"dL/d{name_in} {(n,) + layer.in_shape}", {"lecture formula": lecture_x.reshape(n, -1), "torch retain_grad": trace.grad_x, "numpy rule": rule_x}))
    return [step]
