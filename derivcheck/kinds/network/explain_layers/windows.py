"""Sliding windows over the spatial axes of a batch, written from the definition (not
from the layers' own code): the lecture formulas of convolution and pooling use them.

Arrays are ``(N, C, *spatial)`` with one or two spatial axes; a window view is
``(N, C, *out, *kernel)`` with ``view[n, c, i, j, u, v] = x[n, c, i*s + u*d, j*s + v*d]``.
"""

from __future__ import annotations

import numpy as np


def window_view(x: np.ndarray, kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...]) -> np.ndarray:
    """The ``(N, C, *out, *kernel)`` view of `x` (already padded) described above."""
    dims = len(kernel)
    extent = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    view = np.lib.stride_tricks.sliding_window_view(x, extent, axis=tuple(range(2, 2 + dims)))
    index = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in stride) + tuple(slice(None, None, d) for d in dilation)
    return view[index]


def pad(x: np.ndarray, padding: tuple[int, ...]) -> np.ndarray:
    """Zero padding of the spatial axes."""
    return np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in padding])


def crop(x: np.ndarray, padding: tuple[int, ...], spatial: tuple[int, ...]) -> np.ndarray:
    """The inverse of :func:`pad`: the entries of the unpadded input."""
    return x[(slice(None), slice(None)) + tuple(slice(p, p + s) for p, s in zip(padding, spatial))]


def place(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`values` ``(N, C, *q)`` at the start of a zero array of `shape` (``q <= shape``):
    input rows past the last window receive no gradient."""
    out = np.zeros(shape)
    out[tuple(slice(0, q) for q in values.shape)] = values
    return out


def spatial_letters(dims: int) -> tuple[str, str]:
    """einsum letters of the output positions and of the kernel offsets."""
    return "ij"[:dims], "uv"[:dims]
