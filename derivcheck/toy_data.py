"""Seeded 2-D toy distributions for diffusion examples (no scikit-learn needed).

- ``"two_moons"``: like ``sklearn.datasets.make_moons``: half the points on the upper arc
  ``(cos a, sin a)``, half on the lower arc ``(1 - cos a, 1/2 - sin a)``, ``a`` uniform on
  ``[0, pi]``, plus Gaussian noise of standard deviation `noise`, then centred at the origin
  (shifted by ``(-1/2, -1/4)``);
- ``"ring"``: angle uniform, radius ``1 + noise * N(0, 1)``;
- ``"normal"``: standard normal in any dimension, times `scale`.
"""

from __future__ import annotations

import numpy as np

DISTRIBUTIONS = ("normal", "two_moons", "ring")
TWO_D = ("two_moons", "ring")


def sample_points(kind: str, rng: np.random.Generator, n: int, features: int, *, scale: float = 1.0, noise: float = 0.05) -> np.ndarray:
    """`n` points ``(n, features)`` from distribution `kind`; the 2-D ones need ``features == 2``.

    Raises :class:`ValueError` for an unknown kind or a dimension that does not fit.
    """
    if kind not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {kind!r}; allowed: {', '.join(DISTRIBUTIONS)}")
    if kind == "normal":
        return rng.standard_normal((n, features)) * scale
    if features != 2:
        raise ValueError(f"{kind} points are 2-D but the network takes {features} input features")
    angle = rng.uniform(0.0, np.pi if kind == "two_moons" else 2 * np.pi, size=n)
    if kind == "ring":
        radius = 1.0 + noise * rng.standard_normal(n)
        return scale * np.column_stack([radius * np.cos(angle), radius * np.sin(angle)])
    upper = np.arange(n) < (n + 1) // 2
    x = np.where(upper, np.cos(angle), 1.0 - np.cos(angle)) - 0.5
    y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle)) - 0.25
    return scale * (np.column_stack([x, y]) + noise * rng.standard_normal((n, 2)))
