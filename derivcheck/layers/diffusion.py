"""Diffusion-model layers: the DDPM forward (noising) process and the sinusoidal time embedding.

- ``DdpmNoise(in, schedule, steps, beta_start, beta_end, t, seed)``: the training-time
  forward process. Sample ``n`` gets a timestep ``t_n`` (uniform on ``1..T``, or the fixed
  `t`) and noise ``eps_n ~ N(0, I)``, both drawn from ``numpy.random.default_rng`` seeded
  with `seed` (``[seed, 1]`` for t, ``[seed, 0]`` for the noise, shape ``(N, in)``), and
  the layer outputs ``in + 1`` features::

      [ x_t, t ]    with    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps

  so the denoiser after it sees the noised point and its timestep (``t`` is a constant of
  the sample: ``d t / d x_0 = 0``). The noise is also what the noise-prediction loss
  compares with (a case's ``inputs.targets = "noise"``). Each engine computes ``abar_t``
  with its own schedule code (:mod:`derivcheck.schedules`): SymPy's 40-digit schedule
  enters the symbolic engine as a per-sample constant; the numpy forward and the torch
  module build theirs from ``numpy`` and ``torch``.
- ``TimeEmbedding(dim, max_period)``: reads the last input feature as ``t`` and replaces it
  by the sinusoidal embedding of Ho et al. / "Attention is all you need"::

      [ h, sin(t w_0), ..., sin(t w_{k-1}), cos(t w_0), ..., cos(t w_{k-1}) ],
      w_j = max_period ** (-j / k),  k = dim / 2

  (``diffusers``' ``get_timestep_embedding`` with ``flip_sin_to_cos=False``,
  ``downscale_freq_shift=0``). It is differentiable in ``t`` like any smooth layer.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from derivcheck._lazy import sympy as sp

from derivcheck.schedules import SCHEDULES, Schedule, numpy_schedule, sympy_schedule, torch_schedule
from derivcheck.layers.base import Layer, Option, positive_int


def diffusion_draws(seed: int, n: int, features: int, steps: int, fixed_t: int) -> tuple[np.ndarray, np.ndarray]:
    """The seeded noise ``(n, features)`` and integer timesteps ``(n,)`` of :class:`DdpmNoise`.

    The first rows do not depend on `n` (a case's first sample has the same t and noise
    when ``derivcheck explain`` takes it alone).
    """
    eps = np.random.default_rng([seed, 0]).standard_normal((n, features))
    t = np.full(n, fixed_t) if fixed_t else np.random.default_rng([seed, 1]).integers(1, steps + 1, size=n)
    return eps, t.astype(np.int64)


@lru_cache(maxsize=16)
def _numpy_coefficients(schedule: Schedule) -> np.ndarray:
    abar = numpy_schedule(schedule)[1]
    abar.setflags(write=False)
    return abar


def _check_schedule(value: str) -> str | None:
    return None if value in SCHEDULES else " or ".join(repr(s) for s in SCHEDULES)


class DdpmNoise(Layer):
    """See the module docstring."""

    kind = "ddpm_noise"
    OPTIONS = (
        Option("in", int, check=positive_int, help="data features d"),
        Option("schedule", str, default="linear", check=_check_schedule),
        Option("steps", int, default=1000, check=lambda v: None if 2 <= v <= 100_000 else "an integer in 2..100000"),
        Option("beta_start", float, default=1e-4, check=lambda v: None if 0 < v < 1 else "a number in (0, 1)"),
        Option("beta_end", float, default=0.02, check=lambda v: None if 0 < v < 1 else "a number in (0, 1)"),
        Option("t", int, default=0, check=lambda v: None if v >= 0 else "0 (uniform per sample) or a timestep 1..steps"),
        Option("seed", int, default=0, check=lambda v: None if v >= 0 else "an integer >= 0"),
    )

    def __init__(self, **options: Any):
        super().__init__(**options)
        o = self.options
        self.schedule = Schedule(o["schedule"], o["steps"], o["beta_start"], o["beta_end"])
        problem = self.schedule.check()
        if problem is None and o["t"] > o["steps"]:
            problem = f"t must be 0 (uniform per sample) or a timestep in 1..{o['steps']}, got {o['t']}"
        if problem:
            raise ValueError(problem)

    @property
    def features(self) -> int:
        return int(self.options["in"])

    def output_size(self, in_size: int) -> int:
        if in_size != self.features:
            raise ValueError(f"expects {self.features} input features, receives {in_size}")
        return in_size + 1

    def draws(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``(noise (n, in), t (n,))`` for a batch of `n` samples."""
        o = self.options
        return diffusion_draws(o["seed"], n, self.features, o["steps"], o["t"])

    @property
    def n_sample_constants(self) -> int:  # type: ignore[override]
        return self.features + 2

    def sample_constants(self, x: np.ndarray) -> np.ndarray:
        """Per sample: the noise, ``t`` and SymPy's ``abar_t`` (the symbolic engine's input)."""
        eps, t = self.draws(x.shape[0])
        abar = sympy_schedule(self.schedule)[1]
        return np.column_stack([eps, t.astype(np.float64), [float(abar[int(s)]) for s in t]])

    def sympy_forward(self, inputs, params):
        constants = list(params["@constants"])
        eps, t, abar = constants[: self.features], constants[-2], constants[-1]
        return [sp.sqrt(abar) * x + sp.sqrt(1 - abar) * e for x, e in zip(inputs, eps)] + [t]

    def numpy_forward(self, x, params):
        eps, t = self.draws(x.shape[0])
        abar = _numpy_coefficients(self.schedule)[t][:, None]
        a, b = np.sqrt(abar).astype(x.dtype), np.sqrt(1 - abar).astype(x.dtype)
        return np.concatenate([a * x + b * eps.astype(x.dtype), t[:, None].astype(x.dtype)], axis=1), a

    def numpy_backward(self, grad_y, cache, params):
        return grad_y[:, : self.features] * cache, {}

    def torch_module(self) -> Any:
        import torch

        layer = self

        class DDPMForwardProcess(torch.nn.Module):
            """``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``, then append ``t``."""

            def forward(self, x: Any) -> Any:
                eps, t = layer.draws(x.shape[0])
                abar = torch_schedule(layer.schedule, str(x.device))[1][torch.as_tensor(t, device=x.device)].to(x.dtype)[:, None]
                noise = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
                steps = torch.as_tensor(t, dtype=x.dtype, device=x.device)[:, None]
                return torch.cat([abar.sqrt() * x + (1 - abar).sqrt() * noise, steps], dim=1)

        return DDPMForwardProcess()


class TimeEmbedding(Layer):
    """See the module docstring."""

    kind = "time_embedding"
    OPTIONS = (
        Option("dim", int, default=8, check=lambda v: None if v >= 2 and v % 2 == 0 else "an even integer >= 2"),
        Option("max_period", float, default=10000.0, check=lambda v: None if v > 1 else "a number > 1"),
    )

    @property
    def half(self) -> int:
        return int(self.options["dim"]) // 2

    def output_size(self, in_size: int) -> int:
        if in_size < 1:
            raise ValueError("needs at least one input feature (the timestep t, last)")
        return in_size - 1 + 2 * self.half

    def sympy_forward(self, inputs, params):
        *h, t = inputs
        period = sp.Float(self.options["max_period"])
        freqs = [sp.exp(-sp.log(period) * sp.Rational(j, self.half)) for j in range(self.half)]
        return list(h) + [sp.sin(t * w) for w in freqs] + [sp.cos(t * w) for w in freqs]

    def _freqs(self, dtype: Any) -> np.ndarray:
        return np.exp(-np.log(self.options["max_period"]) * np.arange(self.half) / self.half).astype(dtype)

    def numpy_forward(self, x, params):
        w = self._freqs(x.dtype)
        angles = x[:, -1:] * w
        return np.concatenate([x[:, :-1], np.sin(angles), np.cos(angles)], axis=1), (angles, w)

    def numpy_backward(self, grad_y, cache, params):
        angles, w = cache
        m, k = grad_y.shape[1] - 2 * self.half, self.half
        g_sin, g_cos = grad_y[:, m : m + k], grad_y[:, m + k :]
        grad_t = (g_sin * np.cos(angles) * w - g_cos * np.sin(angles) * w).sum(axis=1, keepdims=True)
        return np.concatenate([grad_y[:, :m], grad_t], axis=1), {}

    def torch_module(self) -> Any:
        import math

        import torch

        half, period = self.half, float(self.options["max_period"])

        class SinusoidalTimeEmbedding(torch.nn.Module):
            """Replace the last feature ``t`` by ``[sin(t w), cos(t w)]``."""

            def forward(self, x: Any) -> Any:
                freqs = torch.exp(-math.log(period) * torch.arange(half, dtype=x.dtype, device=x.device) / half)
                angles = x[:, -1:] * freqs
                return torch.cat([x[:, :-1], torch.sin(angles), torch.cos(angles)], dim=1)

        return SinusoidalTimeEmbedding()
