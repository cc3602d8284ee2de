"""Hypothesis strategies for testing derivative code (public API: ``dc.strategies``).

::

    from hypothesis import given
    import derivcheck as dc

    @given(x=dc.strategies.inputs(shape=(3, 4)))
    def test_my_layer(x):
        dc.assert_torch(MyLayer(), x)

Failures shrink toward the smallest shape and the simplest values Hypothesis can find;
the :class:`~derivcheck.check.result.DerivativeMismatch` message then shows the table for
that minimal counterexample.

Profiles: :func:`register_profiles` registers ``derivcheck-ci`` (derandomized, no
deadline, no example database: reproducible CI runs) and ``derivcheck-dev``; select one
with ``pytest --hypothesis-profile=derivcheck-ci`` or ``settings.load_profile(...)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from derivcheck.errors import InvalidArgument

ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh", "identity")


def register_profiles() -> None:
    """Register the ``derivcheck-ci`` and ``derivcheck-dev`` Hypothesis profiles (the pytest
    plugin registers ``derivcheck-ci`` itself; this is for runs without it)."""
    from derivcheck.pytest_plugin import register_hypothesis_profile

    register_hypothesis_profile()
    settings.register_profile("derivcheck-dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check_bounds(name: str, low: int, high: int) -> None:
    if isinstance(low, bool) or isinstance(high, bool) or not isinstance(low, int) or not isinstance(high, int) or not 1 <= low <= high:
        raise InvalidArgument(f"{name} must be integers with 1 <= min <= max, got {low!r}, {high!r}")


def batch_features(max_batch: int = 8, max_features: int = 8) -> st.SearchStrategy[tuple[int, int]]:
    """Shapes ``(batch, features)`` of a dense layer's input."""
    _check_bounds("max_batch/max_features", 1, min(max_batch, max_features))
    return st.tuples(st.integers(1, max_batch), st.integers(1, max_features))


def image_shapes(max_batch: int = 4, max_channels: int = 4, max_side: int = 8) -> st.SearchStrategy[tuple[int, int, int, int]]:
    """Shapes ``(batch, channels, height, width)`` for convolution-style layers."""
    return st.tuples(st.integers(1, max_batch), st.integers(1, max_channels), st.integers(1, max_side), st.integers(1, max_side))


def sequence_shapes(max_batch: int = 4, max_length: int = 8, max_features: int = 8) -> st.SearchStrategy[tuple[int, int, int]]:
    """Shapes ``(batch, sequence length, features)`` for recurrent and attention layers."""
    return st.tuples(st.integers(1, max_batch), st.integers(1, max_length), st.integers(1, max_features))


def arrays(
    shape: Sequence[int] | st.SearchStrategy[Any],
    *,
    min_magnitude: float = 1e-2,
    max_magnitude: float = 3.0,
    dtype: Any = np.float64,
) -> st.SearchStrategy[np.ndarray]:
    """Well-conditioned numpy arrays: every entry has ``min_magnitude <= |x| <=
    max_magnitude``, keeping inputs away from kinks at 0 (ReLU, abs) and from overflow."""
    if not 0 <= min_magnitude < max_magnitude:
        raise InvalidArgument(f"need 0 <= min_magnitude < max_magnitude, got {min_magnitude!r}, {max_magnitude!r}")
    if dtype == np.float32:
        # bounds must be exactly representable: round inwards to float32
        low, high = np.float32(min_magnitude), np.float32(max_magnitude)
        low = np.nextafter(low, np.float32(np.inf)) if low < min_magnitude else low
        high = np.nextafter(high, np.float32(0)) if high > max_magnitude else high
        magnitude = st.floats(float(low), float(high), allow_nan=False, allow_infinity=False, width=32)
    else:
        magnitude = st.floats(min_magnitude, max_magnitude, allow_nan=False, allow_infinity=False)
    element = st.tuples(st.booleans(), magnitude).map(lambda p: p[1] if p[0] else -p[1])
    return hnp.arrays(dtype, cast(Any, shape), elements=element)


_DTYPE_NAMES = ("float64", "float32")


def _dtype_name(dtype: Any) -> str:
    """``"float64"``, ``torch.float32``, ``np.float32``, ``np.dtype("float64")`` -> the name."""
    text = str(dtype).removeprefix("torch.")
    try:
        text = np.dtype(dtype).name if not text.startswith(("float", "bfloat")) else text
    except TypeError:
        pass
    return text


def _like_dtype_device(like: Any) -> tuple[str, Any]:
    """The dtype and device that inputs for `like` (a module, a tensor, an array) need."""
    if isinstance(like, np.ndarray):
        return like.dtype.name, None
    import torch

    if isinstance(like, torch.Tensor):
        return _dtype_name(like.dtype), like.device
    if isinstance(like, torch.nn.Module):
        tensors = [t for t in list(like.parameters()) + list(like.buffers()) if t.is_floating_point()]
        if not tensors:
            return _dtype_name(torch.get_default_dtype()), None
        return _dtype_name(tensors[0].dtype), tensors[0].device
    raise InvalidArgument(f"like must be an nn.Module, a torch tensor or a numpy array, got {type(like).__name__}")


def inputs(
    shape: Sequence[int] | st.SearchStrategy[Any],
    *,
    kind: str = "torch",
    dtype: Any = None,
    like: Any = None,
    min_magnitude: float = 1e-2,
    max_magnitude: float = 3.0,
) -> st.SearchStrategy[Any]:
    """Well-conditioned inputs for :func:`~derivcheck.check.assert_torch` (``kind="torch"``)
    or :func:`~derivcheck.check.assert_numpy` (``kind="numpy"``); see :func:`arrays`.

    `dtype` is ``"float64"`` (the default) or ``"float32"``, as a string, a torch dtype or a
    numpy dtype. ``like=module_or_tensor`` takes the dtype (and, for torch, the device) from
    a module's first floating parameter or from a tensor, so inputs match an ordinary
    float32 ``nn.Module`` without thinking about it."""
    if kind not in ("torch", "numpy"):
        raise InvalidArgument(f"kind must be 'torch' or 'numpy', got {kind!r}")
    device = None
    if like is not None:
        like_dtype, device = _like_dtype_device(like)
        if dtype is not None and _dtype_name(dtype) != like_dtype:
            raise InvalidArgument(f"dtype={_dtype_name(dtype)} contradicts like=, which is {like_dtype}: pass one of them")
        name = like_dtype
    else:
        name = "float64" if dtype is None else _dtype_name(dtype)
    if name not in _DTYPE_NAMES:
        raise InvalidArgument(f"dtype must be float64 or float32 (a string, a torch or a numpy dtype), got {dtype if like is None else name!r}" + (" (from like=)" if like is not None else ""))
    np_dtype = np.float64 if name == "float64" else np.float32
    base = arrays(shape, min_magnitude=min_magnitude, max_magnitude=max_magnitude, dtype=np_dtype)
    if kind == "numpy":
        return base

    def to_tensor(a: np.ndarray) -> Any:
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(a))
        return tensor if device is None or device.type == "cpu" else tensor.to(device)

    return base.map(to_tensor)


@st.composite
def network_specs(draw: Any, max_depth: int = 3, max_width: int = 8, activations: Sequence[str] = ACTIVATIONS) -> list[dict[str, Any]]:
    """Layer tables for a case file's ``network = [...]``: ``linear`` layers with
    activations between them (and possibly after the last)."""
    depth = draw(st.integers(1, max_depth))
    widths = draw(st.lists(st.integers(1, max_width), min_size=depth + 1, max_size=depth + 1))
    layers: list[dict[str, Any]] = []
    for i in range(depth):
        layers.append({"layer": "linear", "in": widths[i], "out": widths[i + 1], "bias": draw(st.booleans())})
        if i < depth - 1 or draw(st.booleans()):
            layers.append({"layer": draw(st.sampled_from(list(activations)))})
    return layers


def points(domain: Mapping[str, Sequence[float]], *, min_count: int = 1, max_count: int = 16) -> st.SearchStrategy[np.ndarray]:
    """Arrays ``(P, d)`` of points inside a box ``{variable: [low, high]}`` (variables in
    the mapping's order), for PDE operators."""
    _check_bounds("min_count/max_count", min_count, max_count)
    bounds = list(domain.items())
    for name, bound in bounds:
        if len(bound) != 2 or not bound[0] < bound[1]:
            raise InvalidArgument(f"domain[{name!r}] must be [low, high] with low < high, got {bound!r}")
    coordinate = st.tuples(*[st.floats(float(lo), float(hi), allow_nan=False, exclude_min=False) for _, (lo, hi) in bounds])
    return st.lists(coordinate, min_size=min_count, max_size=max_count).map(lambda rows: np.array(rows, dtype=np.float64).reshape(len(rows), len(bounds)))


@st.composite
def gaussian_mixtures(draw: Any, max_dim: int = 3, max_components: int = 3, max_condition: float = 20.0) -> Any:
    """Well-conditioned :class:`~derivcheck.kinds.score.density.Mixture` s: weights bounded away from 0,
    means in ``[-2, 2]``, covariances ``Q diag(lambda) Q^T`` with a drawn rotation ``Q``
    and eigenvalues in ``[0.1, 0.1 * max_condition]`` (condition number <= `max_condition`)."""
    from derivcheck.kinds.score.density import Mixture

    _check_bounds("max_dim/max_components", 1, min(max_dim, max_components))
    d = draw(st.integers(1, max_dim))
    k = draw(st.integers(1, max_components))
    unit = st.floats(-1.0, 1.0, allow_nan=False)
    raw_weights = np.array(draw(st.lists(st.floats(0.2, 1.0), min_size=k, max_size=k)))
    means = np.array(draw(st.lists(st.lists(st.floats(-2.0, 2.0), min_size=d, max_size=d), min_size=k, max_size=k)))
    covariances = []
    for _ in range(k):
        basis = np.array(draw(st.lists(st.lists(unit, min_size=d, max_size=d), min_size=d, max_size=d))) + 3 * np.eye(d)
        q = np.linalg.qr(basis)[0]
        eig = np.array(draw(st.lists(st.floats(0.1, 0.1 * max_condition), min_size=d, max_size=d)))
        cov = (q * eig) @ q.T
        covariances.append((cov + cov.T) / 2)
    return Mixture(raw_weights / raw_weights.sum(), means, np.array(covariances))


def diffusion_times(steps: int = 1000) -> st.SearchStrategy[int]:
    """Timesteps ``1..steps`` of a DDPM schedule, shrinking toward 1."""
    _check_bounds("steps", 1, steps)
    return st.integers(1, steps)


register_profiles()
