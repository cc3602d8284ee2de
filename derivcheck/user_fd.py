"""Finite differences of a user's function of a flat float64 vector.

Used by :mod:`derivcheck.api` to check code derivcheck did not write: a custom
``torch.autograd.Function``, an ``nn.Module`` with a hand-written backward, a numpy
forward/backward pair. Everything here perturbs the *forward* function only.

- :func:`jacobian` -- column by column, central differences at h, h/2, h/4 combined by
  Richardson extrapolation, with a per-entry error estimate. The same evaluations give
  one-sided (left and right) derivative estimates; where they disagree far beyond the
  smooth-function error, a kink lies inside the stencil and the entry is flagged.
- :func:`directional` -- the same along a direction ``v`` (``J v``), for large inputs.
- :func:`second_directional` -- ``u^T H v`` by the four-point mixed stencil, for order-2
  checks.
- :func:`taylor_orders` -- the tolerance-free Taylor test: the remainder
  ``|f(x + h v) - f(x) - h g.v|`` must shrink like ``h^2`` (order 2); a wrong gradient
  ``g`` leaves order 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

EPS = float(np.finfo(np.float64).eps)
KINK_RELATIVE = 1e-3

Function = Callable[[np.ndarray], np.ndarray]


@dataclass
class Differences:
    """Values ``(m, k)``, error estimates and kink flags of k difference quotients."""

    values: np.ndarray
    errors: np.ndarray
    kinks: np.ndarray


def _along(f: Function, x: np.ndarray, direction: np.ndarray, h: float, f0: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Central Richardson value, its error estimate and a kink flag along `direction`."""
    plus = [f(x + m * h * direction) for m in (1.0, 0.5, 0.25)]
    minus = [f(x - m * h * direction) for m in (1.0, 0.5, 0.25)]
    central = [(p - q) / (2 * m * h) for p, q, m in zip(plus, minus, (1.0, 0.5, 0.25))]
    r1 = (4 * central[1] - central[0]) / 3
    r2 = (4 * central[2] - central[1]) / 3
    magnitude = max(float(np.max(np.abs(f0), initial=0.0)), *(float(np.max(np.abs(p), initial=0.0)) for p in plus + minus))
    rounding = 10 * EPS * max(magnitude, 1e-300) / (0.25 * h)
    error = np.abs(r1 - r2) + rounding
    # one-sided estimates: forward/backward differences, Richardson-combined (O(h^2))
    right = [(p - f0) / (m * h) for p, m in zip(plus, (1.0, 0.5, 0.25))]
    left = [(f0 - q) / (m * h) for q, m in zip(minus, (1.0, 0.5, 0.25))]
    right_r = (8 * right[2] - 6 * right[1] + right[0]) / 3
    left_r = (8 * left[2] - 6 * left[1] + left[0]) / 3
    scale = np.abs(right_r) + np.abs(left_r) + np.max(np.abs(r2), initial=0.0)
    kink = np.abs(right_r - left_r) > KINK_RELATIVE * scale + 1e3 * error
    return r2, error, kink


def default_step(x: np.ndarray) -> np.ndarray:
    """Richardson's base step ``eps^(1/5) * max(1, |x|)``, per entry."""
    return EPS ** (1 / 5) * np.maximum(1.0, np.abs(x))


def jacobian(f: Function, x: np.ndarray) -> Differences:
    """The full Jacobian ``(m, n)`` of ``f: R^n -> R^m`` at `x`."""
    x = np.asarray(x, dtype=np.float64)
    f0 = np.asarray(f(x), dtype=np.float64).ravel()
    steps = default_step(x)
    values = np.empty((f0.size, x.size))
    errors = np.empty_like(values)
    kinks = np.zeros(values.shape, dtype=bool)
    for j in range(x.size):
        e = np.zeros_like(x)
        e[j] = 1.0
        values[:, j], errors[:, j], kinks[:, j] = _along(lambda z: np.asarray(f(z), dtype=np.float64).ravel(), x, e, float(steps[j]), f0)
    return Differences(values, errors, kinks)


def directional(f: Function, x: np.ndarray, directions: np.ndarray) -> Differences:
    """``J v`` for each row ``v`` of `directions` ``(k, n)``: values ``(m, k)``."""
    x = np.asarray(x, dtype=np.float64)
    flat = lambda z: np.asarray(f(z), dtype=np.float64).ravel()  # noqa: E731
    f0 = flat(x)
    base = EPS ** (1 / 5) * max(1.0, float(np.max(np.abs(x), initial=0.0)))
    # the step along v moves x by h*|v|: keep that at the base step whatever |v| is
    cols = [_along(flat, x, v, base / max(float(np.linalg.norm(v)), 1e-300), f0) for v in directions]
    return Differences(np.stack([c[0] for c in cols], axis=1), np.stack([c[1] for c in cols], axis=1), np.stack([c[2] for c in cols], axis=1))


def second_directional(s: Callable[[np.ndarray], float], x: np.ndarray, u: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    """``u^T H v`` of a scalar function by the mixed four-point stencil, Richardson over
    h and h/2; returns (value, error estimate)."""
    x = np.asarray(x, dtype=np.float64)
    h = EPS ** (1 / 6) * max(1.0, float(np.max(np.abs(x), initial=0.0)))

    def stencil(step: float) -> float:
        return (s(x + step * u + step * v) - s(x + step * u - step * v) - s(x - step * u + step * v) + s(x - step * u - step * v)) / (4 * step * step)

    d1, d2 = stencil(h), stencil(h / 2)
    value = (4 * d2 - d1) / 3
    magnitude = abs(s(x)) + 1e-300
    return value, abs(d1 - d2) + 40 * EPS * magnitude / (h / 2) ** 2


@dataclass
class TaylorResult:
    """Remainders and observed convergence orders of a Taylor test."""

    steps: list[float]
    remainders: list[float]
    orders: list[float]

    @property
    def order(self) -> float:
        """The asymptotic order: the median of the last three orders above the noise floor
        (small steps, where a gradient error, however small, makes the remainder linear)."""
        usable = usable_orders(self)
        return float(np.median(usable[-3:])) if usable else float("nan")

    @property
    def ok(self) -> bool:
        """Order ~2 (>= 1.8), or a remainder at rounding level everywhere (linear f)."""
        return not usable_orders(self) or self.order >= 1.8

    def to_dict(self) -> dict:
        order = self.order
        return {
            "steps": self.steps,
            "remainders": self.remainders,
            "orders": [o if np.isfinite(o) else None for o in self.orders],  # None: below the noise floor
            "order": order if np.isfinite(order) else None,
            "ok": self.ok,
        }


def usable_orders(result: TaylorResult) -> list[float]:
    return [o for o in result.orders if np.isfinite(o)]


def taylor_orders(s: Callable[[np.ndarray], float], x: np.ndarray, gradient: np.ndarray, v: np.ndarray, *, h0: float = 1e-1, halvings: int = 18) -> TaylorResult:
    """Taylor test of a scalar function `s` with claimed `gradient` along `v`.

    Remainders ``r(h) = |s(x + h v) - s(x) - h g.v|`` for h = h0, h0/2, ... (18 halvings,
    down to ~1e-6 relative); the order between consecutive steps is
    ``log2(r(h) / r(h/2))``. Remainders below rounding (``1e4 eps |s|``) are left out, so
    the orders are those of the truncation term.
    """
    x = np.asarray(x, dtype=np.float64)
    s0 = float(s(x))
    slope = float(np.dot(gradient, v))
    scale = max(1.0, float(np.max(np.abs(x), initial=0.0))) / max(float(np.linalg.norm(v)), 1e-300)
    steps = [h0 * scale / 2**k for k in range(halvings)]
    remainders = [abs(float(s(x + h * v)) - s0 - h * slope) for h in steps]
    floor = 1e4 * EPS * max(abs(s0), 1e-300)
    orders = []
    for a, b in zip(remainders, remainders[1:]):
        orders.append(float(np.log2(a / b)) if a > floor and b > floor else float("nan"))
    return TaylorResult(steps, remainders, orders)
