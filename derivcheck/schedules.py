"""DDPM noise schedules: beta_t and alpha-bar_t, computed three independent ways.

Timesteps run ``t = 1 .. T``. The forward (noising) process is::

    q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I),   abar_t = prod_{s<=t} (1 - beta_s)

- ``"linear"`` (Ho et al. 2020): ``beta_t`` evenly spaced from `beta_start` to `beta_end`
  (defaults 1e-4 and 0.02, for T = 1000);
- ``"cosine"`` (Nichol & Dhariwal 2021): ``f(u) = cos^2((u + s) / (1 + s) * pi / 2)``,
  ``beta_t = min(1 - f(t/T) / f((t-1)/T), 0.999)`` with ``s = 0.008``, then
  ``abar_t = prod (1 - beta_s)`` (the clipping makes this differ from ``f(t/T)/f(0)`` only
  at the last steps) -- as in ``improved-diffusion``.

:func:`numpy_schedule` (float64 ``cumprod``), :func:`sympy_schedule` (SymPy arithmetic at
40 significant digits, exact rationals for the linear betas) and :func:`torch_schedule`
(``torch.linspace`` / ``torch.cumprod`` in float64) never share code, so a schedule bug in
one of them shows up as an engine disagreement.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from derivcheck._lazy import sympy as sp

SCHEDULES = ("linear", "cosine")
MAX_STEPS = 100_000
COSINE_OFFSET = 0.008
MAX_BETA = 0.999
_DIGITS = 40


@dataclass(frozen=True)
class Schedule:
    """A DDPM schedule: `kind` (``"linear"`` or ``"cosine"``), `steps` T, and the linear
    schedule's `beta_start` / `beta_end`."""

    kind: str = "linear"
    steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def check(self) -> str | None:
        """``None`` when valid, else what is wrong (for error messages)."""
        if self.kind not in SCHEDULES:
            return f"schedule must be one of {', '.join(SCHEDULES)}, got {self.kind!r}"
        if not 2 <= self.steps <= MAX_STEPS:
            return f"steps must be an integer in 2..{MAX_STEPS}, got {self.steps}"
        if self.kind == "linear" and not 0 < self.beta_start <= self.beta_end < 1:
            return f"need 0 < beta_start <= beta_end < 1, got beta_start={self.beta_start}, beta_end={self.beta_end}"
        return None

    def describe(self) -> str:
        if self.kind == "linear":
            return f"linear beta {self.beta_start:g}..{self.beta_end:g}, T={self.steps}"
        return f"cosine (s={COSINE_OFFSET}), T={self.steps}"


def numpy_schedule(schedule: Schedule) -> tuple[np.ndarray, np.ndarray]:
    """``(beta, abar)``, each ``(T + 1,)`` float64 indexed by t (entry 0: beta 0, abar 1)."""
    if schedule.kind == "linear":
        betas = np.linspace(schedule.beta_start, schedule.beta_end, schedule.steps, dtype=np.float64)
    else:
        u = np.arange(schedule.steps + 1, dtype=np.float64) / schedule.steps
        f = np.cos((u + COSINE_OFFSET) / (1 + COSINE_OFFSET) * np.pi / 2) ** 2
        betas = np.minimum(1 - f[1:] / f[:-1], MAX_BETA)
    beta = np.concatenate([[0.0], betas])
    return beta, np.cumprod(1.0 - beta)


@lru_cache(maxsize=16)
def _sympy_schedule(schedule: Schedule) -> tuple[tuple[sp.Float, ...], tuple[sp.Float, ...]]:
    T = schedule.steps
    if schedule.kind == "linear":
        start, end = sp.Rational(repr(schedule.beta_start)), sp.Rational(repr(schedule.beta_end))
        betas = [start + (end - start) * sp.Rational(t - 1, T - 1) for t in range(1, T + 1)]
    else:
        s, half_pi = sp.Rational(repr(COSINE_OFFSET)), (sp.pi / 2).evalf(_DIGITS)
        values = [sp.cos(sp.Float((sp.Rational(t, T) + s) / (1 + s), _DIGITS) * half_pi) ** 2 for t in range(T + 1)]
        cap = sp.Rational(repr(MAX_BETA))
        betas = [sp.Min(1 - values[t] / values[t - 1], cap) for t in range(1, T + 1)]
    beta = [sp.Float(0, _DIGITS)] + [sp.Float(b, _DIGITS) for b in betas]
    abar, running = [sp.Float(1, _DIGITS)], sp.Float(1, _DIGITS)
    for b in beta[1:]:
        running = running * (1 - b)
        abar.append(running)
    return tuple(beta), tuple(abar)


def sympy_schedule(schedule: Schedule) -> tuple[list[sp.Float], list[sp.Float]]:
    """``(beta, abar)`` as SymPy Floats of 40 digits, indexed by t like :func:`numpy_schedule`."""
    beta, abar = _sympy_schedule(schedule)
    return list(beta), list(abar)


def torch_schedule(schedule: Schedule, device: str = "cpu") -> tuple[Any, Any]:
    """``(beta, abar)`` as float64 torch tensors ``(T + 1,)`` on `device`."""
    import torch

    kw: dict[str, Any] = {"dtype": torch.float64, "device": device}
    if schedule.kind == "linear":
        betas = torch.linspace(schedule.beta_start, schedule.beta_end, schedule.steps, **kw)
    else:
        u = torch.arange(schedule.steps + 1, **kw) / schedule.steps
        f = torch.cos((u + COSINE_OFFSET) / (1 + COSINE_OFFSET) * torch.pi / 2) ** 2
        betas = torch.clamp(1 - f[1:] / f[:-1], max=MAX_BETA)
    beta = torch.cat([torch.zeros(1, **kw), betas])
    return beta, torch.cumprod(1 - beta, dim=0)
