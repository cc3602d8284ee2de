"""Finite differences of a user's function of a flat float64 vector, with error estimates.

Used to check code derivcheck did not write (a custom ``torch.autograd.Function``, an
``nn.Module``, a numpy forward/backward pair); everything here perturbs the *forward*.

Along each direction ``v`` the forward is evaluated at ``x ± h v``, ``x ± h/2 v``,
``x ± h/4 v`` and, off those powers of two, at ``x + 0.371 h v``. From these eight values
(and ``f(x)``) come:

- the derivative: central differences at the three steps, Richardson-extrapolated twice;
- its error estimate: the difference of the last two Richardson values (truncation), plus
  the forward's rounding noise propagated through the quotient (``4 sigma / h``; `sigma`
  is the measured noise of the forward, see :mod:`derivcheck.check.noise`, floored at
  ``10 eps |f|``), plus the misfit of a quartic through the eight values (a smooth
  function fits one to within its fifth-derivative term; a jump or a staircase inside the
  stencil does not, and its misfit widens the error bar instead of posing as a
  derivative);
- a *kink* flag: the one-sided (left and right) Richardson estimates disagree far beyond
  the smooth-function error, so a non-differentiable point lies inside the stencil;
- a *rough* flag: the quartic misfit dwarfs both the rounding noise and the derivative --
  a jump or a staircase (``round``, ``floor``, a quantised forward) inside the stencil;
- an *undefined* flag: some stencil value is NaN or infinite (or the forward raised) where
  ``f(x)`` is finite -- ``x`` sits at the edge of the function's domain -- or the
  coordinate itself is infinite.

Where a stencil holds a kink, a jump or a domain edge, :func:`narrowed` tries narrower
steps, so that an entry near (not at) a non-differentiable point is still compared.

:func:`jacobian` does this column by column, :func:`directional` along given directions,
:func:`second_directional` gives ``u^T H v`` of a scalar function by the four-point stencil.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

EPS = float(np.finfo(np.float64).eps)
KINK_RELATIVE = 1e-3
PROBE = 0.371
"""An eighth evaluation at ``x + 0.371 h v``, off the stencil's powers of two: a staircase
sampled exactly on its grid at h, h/2, h/4 looks perfectly linear (every difference
quotient equal, no misfit), and only a step that is not a power-of-two fraction shows it."""
NODES = np.array([-1.0, -0.5, -0.25, 0.0, 0.25, PROBE, 0.5, 1.0])


def _quartic_residual_projector() -> np.ndarray:
    design = np.vander(NODES, 5, increasing=True)
    return np.eye(NODES.size) - design @ np.linalg.pinv(design)


_PROJECTOR = _quartic_residual_projector()

Function = Callable[[np.ndarray], np.ndarray]


@dataclass
class Differences:
    """Values ``(m, k)`` of k difference quotients, with per-entry error estimates, kink
    flags (a non-differentiable point inside the stencil), rough flags (a jump or staircase
    inside the stencil: the value is not a derivative) and undefined flags (the stencil
    leaves the function's domain)."""

    values: np.ndarray
    errors: np.ndarray
    kinks: np.ndarray
    rough: np.ndarray
    undefined: np.ndarray

    @property
    def excluded(self) -> np.ndarray:
        """Entries finite differences cannot vouch for (rough or undefined)."""
        return self.rough | self.undefined


Column = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def along(f: Function, x: np.ndarray, direction: np.ndarray, h: float, f0: np.ndarray, noise: np.ndarray | float = 0.0, sides: dict[str, np.ndarray] | None = None) -> Column:
    """Richardson value, error estimate, kink, rough and undefined flags along `direction`.

    `noise` is the forward's rounding noise per output (or one number for all).
    """
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):  # non-finite values are flagged, not warned about
        return _along(f, x, direction, h, f0, noise, sides)


def _along(f: Function, x: np.ndarray, direction: np.ndarray, h: float, f0: np.ndarray, noise: np.ndarray | float, sides: dict[str, np.ndarray] | None = None) -> Column:
    plus = [f(x + m * h * direction) for m in (1.0, 0.5, 0.25)]
    minus = [f(x - m * h * direction) for m in (1.0, 0.5, 0.25)]
    probe = f(x + PROBE * h * direction)
    central = [(p - q) / (2 * m * h) for p, q, m in zip(plus, minus, (1.0, 0.5, 0.25))]
    r1 = (4 * central[1] - central[0]) / 3
    r2 = (4 * central[2] - central[1]) / 3
    stacked = np.stack([minus[0], minus[1], minus[2], f0, plus[2], probe, plus[1], plus[0]])
    undefined = np.isfinite(f0) & ~np.all(np.isfinite(stacked), axis=0)
    if undefined.any():
        stacked = np.where(np.isfinite(stacked), stacked, f0)
        plus = [np.where(np.isfinite(p), p, f0) for p in plus]
        minus = [np.where(np.isfinite(q), q, f0) for q in minus]
        central = [(p - q) / (2 * m * h) for p, q, m in zip(plus, minus, (1.0, 0.5, 0.25))]
        r1 = (4 * central[1] - central[0]) / 3
        r2 = (4 * central[2] - central[1]) / 3
    magnitude = np.max(np.abs(stacked), axis=0)
    sigma = np.maximum(np.asarray(noise, dtype=np.float64), 10 * EPS * magnitude)
    with np.errstate(invalid="ignore"):
        misfit = np.sqrt(np.sum((_PROJECTOR @ stacked) ** 2, axis=0) / 3)
    misfit = np.where(np.isfinite(misfit), misfit, 0.0)
    error = np.abs(r1 - r2) + 4 * (sigma + misfit) / h
    # one-sided estimates: forward/backward differences, Richardson-combined (O(h^2))
    right = [(p - f0) / (m * h) for p, m in zip(plus, (1.0, 0.5, 0.25))]
    left = [(f0 - q) / (m * h) for q, m in zip(minus, (1.0, 0.5, 0.25))]
    right_r = (8 * right[2] - 6 * right[1] + right[0]) / 3
    left_r = (8 * left[2] - 6 * left[1] + left[0]) / 3
    scale = np.abs(right_r) + np.abs(left_r) + np.max(np.abs(r2), initial=0.0)
    smooth_error = np.abs(r1 - r2) + 4 * sigma / h
    kink = np.abs(right_r - left_r) > KINK_RELATIVE * scale + 1e3 * smooth_error
    rough = (misfit > 1e3 * sigma) & (4 * misfit / h > 1e-3 * (np.abs(r2) + 1e-3 * np.max(np.abs(r2), initial=0.0)) + 1e3 * 4 * sigma / h)
    if sides is not None:  # the one-sided slopes, for narrowing (see narrowed)
        sides.update(right=right_r, left=left_r, error=smooth_error)
    return r2, error, kink & ~undefined, rough & ~kink & ~undefined, undefined


NARROWING = 16.0
LEVELS = 6
"""A stencil that holds a kink, a jump or a domain edge is tried again at steps
``h / 16``, ``h / 256``, ... (at most six times, down to ``6e-8 h``): a point 1e-4 from
``|x|``'s kink or ``sqrt``'s edge is smooth within a stencil that narrow, and its entry is
compared instead of dropped. Only what stays flagged at the narrowest step -- within
rounding distance of the kink itself -- is reported as a kink. An entry whose error
estimate exceeds :data:`REFINE` of its value (a steep function: ``tan`` near its pole,
where the ordinary step is too wide for Richardson's error to be small) is tried at
narrower steps too, keeping the most precise."""

REFINE = 1e-7
"""Relative error estimate above which a clean entry is refined by narrower steps."""


def narrowed(stencil: Callable[..., Column], f: Function, x: np.ndarray, direction: np.ndarray, h: float, f0: np.ndarray, noise: np.ndarray | float = 0.0) -> Column:
    """`stencil` (:func:`along` or :func:`along_central`) at step `h`; where it flags an
    entry as a kink or outside the domain, or its error estimate is poor
    (:data:`REFINE`), the same at successively narrower steps (:data:`NARROWING`,
    :data:`LEVELS`), keeping for each such entry the clean result with the smallest error
    estimate. A forward that is only float32-accurate inside is a staircase at fine steps,
    where a narrow stencil sits on one stair and reads a slope of 0 with a tiny error bar;
    so a poor entry's refinement must agree with its coarser value within both error bars,
    and a kink's or a jump's must be the slope on one side of it (:func:`_one_sided`) --
    which a staircase (``round``, a quantised forward: the same slope on both sides, or
    none) never gives. Narrowing stops for an entry
    once a narrower step no longer improves its error (rounding has taken over), and
    altogether once no entry is left to improve."""
    sides: dict[str, np.ndarray] = {}
    col = stencil(f, x, direction, h, f0, noise, sides)
    flagged = col[2] | col[3] | col[4]
    size = np.max(np.abs(np.where(np.isfinite(col[0]), col[0], 0.0)), initial=0.0)
    with np.errstate(invalid="ignore"):
        poor = ~flagged & np.isfinite(col[0]) & (col[1] > REFINE * np.maximum(np.abs(col[0]), 1e-3 * size))
    if not (flagged.any() or poor.any()):
        return col
    values, errors, kinks, rough, undefined = (np.array(a, copy=True) for a in col)
    pending = flagged | poor
    best = np.where(poor, col[1], np.inf)
    for level in range(1, LEVELS + 1):
        c = stencil(f, x, direction, h / NARROWING**level, f0, noise)
        clean = pending & ~(c[2] | c[3] | c[4]) & np.isfinite(c[0])
        with np.errstate(invalid="ignore"):
            consistent = np.where(poor, np.abs(c[0] - col[0]) <= col[1] + c[1], col[4] | _one_sided(c[0], sides))
        better = clean & consistent & (c[1] < best)
        values[better], errors[better] = c[0][better], c[1][better]
        kinks[better] = rough[better] = undefined[better] = False
        done = np.isfinite(best) & ~better  # resolved at a wider step, and this one is no better
        best[better] = c[1][better]
        pending &= ~done
        if not pending.any():
            break
    return values, errors, kinks, rough, undefined


def _one_sided(value: np.ndarray, sides: dict[str, np.ndarray]) -> np.ndarray:
    """Whether a narrowed `value` is the slope on one side of a kink the wider stencil saw:
    within a tenth (plus ten times the smooth-function error) of its left or its right
    slope. A staircase (a forward only float32-accurate inside) looks like a kink at the
    ordinary step but has the same slope on both sides, and a narrow stencil on one of
    its stairs reads 0: neither side's slope, so it is not taken."""
    right, left, error = sides["right"], sides["left"], sides["error"]
    with np.errstate(invalid="ignore"):
        near_right = np.abs(value - right) <= 0.1 * np.abs(right) + 10 * error
        near_left = np.abs(value - left) <= 0.1 * np.abs(left) + 10 * error
    return near_right | near_left


def default_step(x: np.ndarray) -> np.ndarray:
    """Richardson's base step ``eps^(1/5) * max(1, |x|)``, per entry."""
    return EPS ** (1 / 5) * np.maximum(1.0, np.abs(x))


BatchFunction = Callable[[np.ndarray], np.ndarray]
"""``f`` for many points at once: ``(k, n) -> (k, m)`` (e.g. the forward under ``vmap``)."""

BATCHED_ENTRIES = 1 << 20
"""Coordinates (points times inputs) per batched call of :func:`jacobian`."""


def stencil_points(x: np.ndarray, steps: np.ndarray, columns: list[int]) -> np.ndarray:
    """The points :func:`along` evaluates at the ordinary step of each column, computed by
    the very expressions it uses (so that their bits match, see :func:`jacobian`)."""
    points = []
    for j in columns:
        e = np.zeros_like(x)
        e[j] = 1.0
        h = float(steps[j])
        points += [x + m * h * e for m in (1.0, 0.5, 0.25)] + [x - m * h * e for m in (1.0, 0.5, 0.25)] + [x + PROBE * h * e]
    return np.stack(points) if points else np.zeros((0, x.size))


def _tabled(flat: Function, batch: BatchFunction, x: np.ndarray, steps: np.ndarray, columns: list[int], outputs: int) -> Function:
    """`flat`, answering the ordinary stencil points of `columns` from batched calls of
    `batch` (narrower steps, and any other point, fall through to `flat`); a call holds at
    most :data:`BATCHED_ENTRIES` inputs or outputs (a few parameters of a field over
    millions of points run one point at a time)."""
    chunk_size = BATCHED_ENTRIES // max(x.size, outputs, 1)
    if chunk_size < 2:
        return flat
    points = stencil_points(x, steps, columns)
    table: dict[bytes, np.ndarray] = {}
    for start in range(0, len(points), chunk_size):
        chunk = points[start : start + chunk_size]
        try:
            values = np.asarray(batch(chunk), dtype=np.float64).reshape(len(chunk), -1)
        except Exception:  # noqa: BLE001 - a chunk that cannot run batched runs point by point
            continue
        for point, value in zip(chunk, values):
            table[point.tobytes()] = value

    def lookup(z: np.ndarray) -> np.ndarray:
        found = table.get(np.ascontiguousarray(z).tobytes())
        return found if found is not None else flat(z)

    return lookup


def jacobian(f: Function, x: np.ndarray, noise: np.ndarray | float = 0.0, f0: np.ndarray | None = None, batch: BatchFunction | None = None) -> Differences:
    """The full Jacobian ``(m, n)`` of ``f: R^n -> R^m`` at `x`. With `batch`, the ordinary
    stencils of all columns are evaluated by batched calls (the same values, many per call)."""
    x = np.asarray(x, dtype=np.float64)
    flat = lambda z: np.asarray(f(z), dtype=np.float64).ravel()  # noqa: E731
    f0 = flat(x) if f0 is None else f0
    steps = default_step(x)
    if batch is not None:
        flat = _tabled(flat, batch, x, steps, [j for j in range(x.size) if np.isfinite(x[j])], f0.size)
    values = np.empty((f0.size, x.size))
    errors = np.empty_like(values)
    kinks = np.zeros(values.shape, dtype=bool)
    rough = np.zeros(values.shape, dtype=bool)
    undefined = np.zeros(values.shape, dtype=bool)
    for j in range(x.size):
        if not np.isfinite(x[j]):  # no derivative with respect to an infinite coordinate
            values[:, j], errors[:, j], undefined[:, j] = 0.0, 0.0, True
            continue
        e = np.zeros_like(x)
        e[j] = 1.0
        values[:, j], errors[:, j], kinks[:, j], rough[:, j], undefined[:, j] = narrowed(along, flat, x, e, float(steps[j]), f0, noise)
    return Differences(values, errors, kinks, rough, undefined)


def directional_step(x: np.ndarray, v: np.ndarray, size: float | None = None) -> float:
    """The step along `v` that moves `x` by Richardson's base step whatever ``|v|`` is
    (`size`: ``max |x|`` over finite entries, when the caller has it)."""
    if size is None:
        size = float(np.max(np.abs(x[np.isfinite(x)]), initial=0.0))
    return EPS ** (1 / 5) * max(1.0, size) / max(float(np.sqrt(np.dot(v, v))), 1e-300)


def along_central(f: Function, x: np.ndarray, direction: np.ndarray, h: float, f0: np.ndarray, noise: np.ndarray | float = 0.0, sides: dict[str, np.ndarray] | None = None) -> Column:
    """The lean stencil of ``fast=True``: four evaluations (``x ± h v``, ``x ± h/2 v``),
    one Richardson step, the error estimate ``|D(h) - D(h/2)|`` plus rounding, kink and
    undefined flags (no quartic misfit: four points cannot show a staircase)."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        return _along_central(f, x, direction, h, f0, noise, sides)


def _along_central(f: Function, x: np.ndarray, direction: np.ndarray, h: float, f0: np.ndarray, noise: np.ndarray | float, sides: dict[str, np.ndarray] | None = None) -> Column:
    values = []
    for m in (1.0, 0.5):
        step = (m * h) * direction
        values += [f(x + step), f(x - step)]
    stacked = np.stack(values + [f0])
    undefined = np.isfinite(f0) & ~np.all(np.isfinite(stacked), axis=0)
    p1, m1, p2, m2 = (np.where(np.isfinite(v), v, f0) for v in values)
    d1, d2 = (p1 - m1) / (2 * h), (p2 - m2) / h
    value = (4 * d2 - d1) / 3
    magnitude = np.max(np.abs(np.where(np.isfinite(stacked), stacked, 0.0)), axis=0)
    sigma = np.maximum(np.asarray(noise, dtype=np.float64), 10 * EPS * magnitude)
    error = np.abs(d1 - d2) + 4 * sigma / h
    right = 2 * (p2 - f0) / (h / 2) - (p1 - f0) / h
    left = 2 * (f0 - m2) / (h / 2) - (f0 - m1) / h
    scale = np.abs(right) + np.abs(left) + np.max(np.abs(value), initial=0.0)
    kink = (np.abs(right - left) > KINK_RELATIVE * scale + 1e3 * error) & ~undefined
    if sides is not None:
        sides.update(right=right, left=left, error=error)
    return value, error, kink, np.zeros_like(kink), undefined


def directional(f: Function, x: np.ndarray, directions: np.ndarray, weights: np.ndarray, noise: np.ndarray | float = 0.0, f0: np.ndarray | None = None, method: str = "richardson") -> Differences:
    """``u_k . J v_k`` for each row ``v_k`` of `directions` ``(k, n)`` and ``u_k`` of
    `weights` ``(k, m)``: values and flags ``(1, k)``.

    Each direction differentiates the scalar ``s_k(z) = u_k . f(z)``, so the truncation
    error is that of the projected quantity and the rounding noise adds up in quadrature
    over the outputs (independent roundings), instead of output by output in absolute
    value -- which, over thousands of outputs, would bury the derivative.

    `method`: ``"richardson"`` (the eight-point stencil of :func:`along`) or ``"central"``
    (the four-point :func:`along_central`, at the step ``eps^(1/3)`` suits it).

    A direction whose stencil holds a kink is narrowed (:func:`narrowed`: a random
    direction through a large ReLU network crosses some unit's kink at the ordinary step);
    it stays flagged only if the kink is still inside at the narrowest step.
    """
    x = np.asarray(x, dtype=np.float64)
    flat = lambda z: np.asarray(f(z), dtype=np.float64).ravel()  # noqa: E731
    f0 = flat(x) if f0 is None else f0
    sigma = np.broadcast_to(np.asarray(noise, dtype=np.float64), f0.shape)
    stencil = along_central if method == "central" else along
    shrink = EPS ** (1 / 3 - 1 / 5) if method == "central" else 1.0
    size = float(np.max(np.abs(x[np.isfinite(x)]), initial=0.0))
    finite = np.isfinite(f0)
    cols = []
    for v, u in zip(directions, weights):
        u = np.where(finite, u, 0.0)

        def projected(z: np.ndarray, u: np.ndarray = u) -> np.ndarray:
            values = flat(z)
            return np.array([np.dot(u, np.where(finite, values, 0.0)) if np.all(np.isfinite(values[finite])) else np.nan])

        s0 = np.array([np.dot(u, np.where(finite, f0, 0.0))])
        s_noise = float(np.sqrt(np.sum((u * sigma) ** 2)) + 10 * EPS * np.dot(np.abs(u), np.abs(np.where(finite, f0, 0.0))) / max(np.sqrt(finite.sum()), 1.0))
        h = directional_step(x, v, size) * shrink
        cols.append(narrowed(stencil, projected, x, v, h, s0, s_noise))
    return Differences(*(np.stack([c[i] for c in cols], axis=1) for i in range(5)))


def second_directional(s: Callable[[np.ndarray], float], x: np.ndarray, u: np.ndarray, v: np.ndarray, noise: float = 0.0) -> tuple[float, float]:
    """``u^T H v`` of a scalar function by the mixed four-point stencil at steps h, h/2 and
    h/4, Richardson-extrapolated twice (``O(h^6)``); returns (value, error estimate): the
    difference of the last two extrapolations plus the forward's rounding noise `noise`
    through the stencil's ``1 / (h/4)^2``."""
    x = np.asarray(x, dtype=np.float64)
    h = EPS ** (1 / 6) * max(1.0, float(np.max(np.abs(x[np.isfinite(x)]), initial=0.0)))
    h = h / max(float(np.sqrt(np.linalg.norm(u) * np.linalg.norm(v))), 1e-300)

    def stencil(step: float) -> float:
        return (s(x + step * u + step * v) - s(x + step * u - step * v) - s(x - step * u + step * v) + s(x - step * u - step * v)) / (4 * step * step)

    d1, d2, d3 = stencil(h), stencil(h / 2), stencil(h / 4)
    r1, r2 = (4 * d2 - d1) / 3, (4 * d3 - d2) / 3
    value = (16 * r2 - r1) / 15
    sigma = max(float(noise), 10 * EPS * (abs(s(x)) + 1e-300))
    return value, abs(r1 - r2) + 4 * sigma / (h / 4) ** 2
