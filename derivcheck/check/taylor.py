"""The Taylor test, with a noise model: is a claimed gradient the slope of the function?

For a scalar function ``s`` with claimed gradient ``g`` and a direction ``v``, the signed
remainders ``R+(h) = s(x + h v) - s(x) - h g.v`` and ``R-(h) = s(x - h v) - s(x) + h g.v``
behave, as ``h -> 0``, like

- ``C h^2`` on both sides when ``g.v`` is right and ``s`` is smooth (order 2);
- ``+-e h`` -- antisymmetric -- when ``g.v`` is off by ``e`` (order 1): the odd part
  ``(R+ - R-)/2h`` is the error of the claimed slope;
- one-sided slopes that differ when ``x`` sits at a kink along ``v``: the even part
  ``(R+ + R-)/2h`` then stays finite as ``h -> 0``;
- constant when a jump lies within ``h`` (order 0).

Two floors bound what the remainders can show: the forward's rounding noise (measured,
see :mod:`derivcheck.check.noise`) and ``h`` times the precision of the claimed slope itself
(a float32 gradient is right only to ~1e-7 relative, so below some ``h`` even a right
gradient leaves a remainder linear in ``h``). Orders are fitted only where the remainder
stands well above both floors, at the smallest such steps (the asymptotic regime).

The verdict is ``"wrong gradient"`` -- the only one that fails -- when, at the smallest
usable steps, the remainder is linear in ``h`` (order within 1 +- 0.25 over two step
ratios), antisymmetric (no kink), and the slope error it implies exceeds the gradient's
precision bound by the safety factor. Otherwise ``"order 2"`` (or higher), ``"affine"``
(no curvature anywhere above the floor: nothing to fit), ``"kink"``, ``"jump"``, or
``"inconclusive"`` (the remainders fit no clean order: reported, never a failure).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

EPS = float(np.finfo(np.float64).eps)
RATIO = 4.0
STEPS = 12
SAFETY = 10.0
"""A remainder is usable at step h when it stands this many times above its floor."""

VERDICTS = ("order 2", "wrong gradient", "affine", "kink", "jump", "inconclusive", "skipped")


@dataclass
class TaylorResult:
    """Remainders, observed orders and the verdict of one Taylor test.

    - `steps`, `remainders`: ``h`` and ``|R+(h)|``; `floors`: the noise floor at each step;
    - `orders`: ``log_4(r(h) / r(h/4))`` between consecutive steps, NaN where either
      remainder is below ``SAFETY`` times its floor;
    - `order`: the order fitted in the asymptotic window (NaN when none);
    - `slope`: the claimed ``g.v``; `implied_error`: ``|(R+ - R-)/2h|`` at the smallest
      usable step (the slope error the remainders imply); `bound`: what the gradient's
      precision allows for it (``slope_bound`` plus the forward noise over ``h``);
    - `verdict` (see the module docstring) and a one-line `message`.
    """

    name: str
    steps: list[float]
    remainders: list[float]
    floors: list[float]
    orders: list[float]
    order: float
    verdict: str
    message: str
    slope: float = 0.0
    implied_error: float | None = None
    bound: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.verdict != "wrong gradient"

    @property
    def measured(self) -> float | None:
        return self.implied_error

    def summary(self) -> str:
        shown = ", ".join("-" if o != o else f"{o:.2f}" for o in self.orders)
        return f"Taylor test {self.name}: {self.verdict}: {self.message}; orders per step (h/4 each): {shown}"

    def to_dict(self) -> dict[str, Any]:
        def num(v: float | None) -> float | None:
            return None if v is None or not np.isfinite(v) else float(v)

        return {
            "name": self.name,
            "ok": self.ok,
            "verdict": self.verdict,
            "message": self.message,
            "steps": [float(h) for h in self.steps],
            "remainders": [num(r) for r in self.remainders],
            "floors": [num(r) for r in self.floors],
            "orders": [num(o) for o in self.orders],  # None: below the noise floor
            "order": num(self.order),
            "slope": num(self.slope),
            "implied_error": num(self.implied_error),
            "bound": num(self.bound),
        }


def skipped(name: str, reason: str) -> TaylorResult:
    """A Taylor test that was not run (e.g. the direction crosses a known kink)."""
    return TaylorResult(name, [], [], [], [], float("nan"), "skipped", reason)


def taylor_test(
    name: str,
    s: Callable[[np.ndarray], float],
    x: np.ndarray,
    gradient: np.ndarray,
    v: np.ndarray,
    *,
    noise: float,
    slope_bound: float,
    h0: float = 1e-1,
    steps: int = STEPS,
    s_many: Callable[[np.ndarray], np.ndarray] | None = None,
) -> TaylorResult:
    """Taylor test of a scalar function `s` (float64) with claimed `gradient` along `v`.

    **Arguments:**

    - `noise`: the rounding noise of one evaluation of `s` (absolute).
    - `slope_bound`: how far the claimed ``gradient . v`` may be off through rounding alone
      (the gradient's own precision; absolute).
    - `h0`, `steps`: the largest step (relative to ``max(1, |x|)`` and ``|v|``) and how many
      steps, each a quarter of the last.
    - `s_many`: `s` at many points at once, ``(k, n) -> (k,)``, if available (the same
      values; used when it runs, else `s` point by point).

    **Returns:** a :class:`TaylorResult`.
    """
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        return _taylor_test(name, s, x, gradient, v, noise=noise, slope_bound=slope_bound, h0=h0, steps=steps, s_many=s_many)


BATCHED_ENTRIES = 1 << 20
"""Largest number of coordinates (points times inputs) evaluated by one batched call: beyond
it, copying the points costs more than calling `s` one point at a time."""


def _values(s: Callable[[np.ndarray], float], s_many: Callable[[np.ndarray], np.ndarray] | None, x: np.ndarray, v: np.ndarray, hs: list[float]) -> np.ndarray:
    """`s` at ``x + h v`` for each step, then at ``x - h v``: in one call of `s_many` where it
    runs and the points are few enough, else one by one."""
    if s_many is not None and 2 * len(hs) * x.size <= BATCHED_ENTRIES:
        try:
            values = np.asarray(s_many(np.stack([x + h * v for h in hs] + [x - h * v for h in hs])), dtype=np.float64).reshape(-1)
            if values.size == 2 * len(hs):
                return values
        except Exception:  # noqa: BLE001 - point by point instead
            pass
    return np.array([float(s(x + h * v)) for h in hs] + [float(s(x - h * v)) for h in hs])


def _taylor_test(
    name: str,
    s: Callable[[np.ndarray], float],
    x: np.ndarray,
    gradient: np.ndarray,
    v: np.ndarray,
    *,
    noise: float,
    slope_bound: float,
    h0: float,
    steps: int,
    s_many: Callable[[np.ndarray], np.ndarray] | None = None,
) -> TaylorResult:
    x = np.asarray(x, dtype=np.float64)
    s0 = float(s(x))
    moved = v != 0
    slope = float(np.dot(gradient[moved], v[moved]))
    scale = max(1.0, float(np.max(np.abs(x[np.isfinite(x)]), initial=0.0))) / max(float(np.linalg.norm(v)), 1e-300)
    hs = [h0 * scale / RATIO**k for k in range(steps)]
    values = _values(s, s_many, x, v, hs)
    plus = np.array([values[k] - s0 - h * slope for k, h in enumerate(hs)])
    minus = np.array([values[steps + k] - s0 + h * slope for k, h in enumerate(hs)])
    h = np.array(hs)
    noise = max(float(noise), 10 * EPS * abs(s0))
    floors = SAFETY * noise + h * slope_bound
    r = np.abs(plus)
    usable = np.isfinite(plus) & np.isfinite(minus) & (r > SAFETY * floors)
    orders = [float(np.log(r[k] / r[k + 1]) / np.log(RATIO)) if usable[k] and usable[k + 1] else float("nan") for k in range(steps - 1)]
    result = TaylorResult(name, hs, [float(v) for v in r], [float(f) for f in floors], orders, float("nan"), "inconclusive", "", slope=slope)
    window = _asymptotic_window(usable)
    if not window:
        if not usable.any():
            result.verdict = "affine"
            result.message = f"no curvature to fit: the remainder stays within its noise floor at every step (|R| <= {np.nanmax(r, initial=0.0):.2g}; the function is affine or flat along v, or the gradient's precision hides the curvature)"
        else:
            last = int(np.flatnonzero(usable)[-1])
            largest = float(h[last])
            below = r[last + 1 :]
            # a jump: the remainder vanishes below the step that crosses it (a piecewise-
            # constant or -linear function is exact there); a smooth function's remainder
            # shrinks by at most 4**order per step and merely sinks under its floor
            if below.size and np.all(below[np.isfinite(below)] <= 1e-3 * r[last]):
                result.verdict = "jump"
                result.message = f"the remainder stands above its floor only at isolated steps (up to h = {largest:.3g}) and vanishes below them: a jump or kink lies within that distance of x along v, and the function is exactly flat or linear closer in"
            else:
                result.verdict = "inconclusive"
                result.message = f"the remainder stands above its floor only at isolated steps (up to h = {largest:.3g}): no order can be fitted; below them the gradient's precision or the forward's rounding hides the curvature"
        return result
    ks = window
    window_orders = [orders[k] for k in ks[:-1]]
    result.order = float(np.median(window_orders))
    odd = np.abs(plus[ks] - minus[ks]) / (2 * h[ks])
    even = np.abs(plus[ks] + minus[ks]) / (2 * h[ks])
    smallest = ks[-1]
    implied = float(odd[-1])
    bound = float(slope_bound + SAFETY * noise / h[smallest])
    result.implied_error, result.bound = implied, bound
    linear = all(0.75 <= o <= 1.25 for o in window_orders)
    flat = all(abs(o) <= 0.25 for o in window_orders)
    antisymmetric = bool(np.all(even <= 0.25 * odd))
    one_sided = bool(np.all(even >= 0.5 * odd))
    if len(ks) >= 3 and linear and antisymmetric and np.all(odd > SAFETY * (slope_bound + SAFETY * noise / h[ks])):
        relative = implied / abs(slope) if slope else float("inf")
        result.verdict = "wrong gradient"
        result.message = (
            f"the remainder is linear in h (order {result.order:.2f}) and antisymmetric for h <= {h[ks[0]]:.3g}: "
            f"the claimed slope g.v = {slope:.10g} is off by {implied:.3g} ({relative:.2g} relative), "
            f"beyond the {bound:.3g} its precision allows (x {SAFETY:g} safety)"
        )
    elif linear and one_sided:
        right = slope + float((plus[smallest]) / h[smallest])
        left = slope - float((minus[smallest]) / h[smallest])
        result.verdict = "kink"
        result.message = f"one-sided slopes differ at the smallest usable steps (right {right:.6g}, left {left:.6g}): x sits at, or within h = {h[smallest]:.3g} of, a non-differentiable point along v"
    elif flat:
        result.verdict = "jump"
        result.message = f"the remainder does not shrink with h (order {result.order:.2f}): a jump lies within h = {h[smallest]:.3g} of x along v"
    elif result.order >= 1.75:
        result.verdict = "order 2"
        result.message = f"order {result.order:.2f} for h <= {h[ks[0]]:.3g}: the gradient is the slope of the function"
    else:
        result.verdict = "inconclusive"
        result.message = f"order {result.order:.2f} in the asymptotic window fits neither a right gradient (2) nor a wrong one (1, antisymmetric)"
    return result


def _asymptotic_window(usable: np.ndarray, length: int = 3) -> list[int]:
    """The last `length` steps of the last run of consecutive usable steps (at least 2)."""
    indices = np.flatnonzero(usable)
    if indices.size == 0:
        return []
    end = int(indices[-1])
    start = end
    while start - 1 >= 0 and usable[start - 1]:
        start -= 1
    run = list(range(start, end + 1))
    return run[-length:] if len(run) >= 2 else []
