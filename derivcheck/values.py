"""What an engine hands to the comparison: numbers plus what the engine knows about them.

This module is shared by engines and :mod:`derivcheck.compare`, and knows nothing of how
a number was computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class EngineValue:
    """One engine's value of one quantity.

    - `values`: float64 array in the quantity's shape.
    - `dtype`: the precision the engine computed in (``"float64"`` or ``"float32"``).
    - `error_estimate`: per-entry estimate of the absolute error, for approximate engines
      (finite differences); ``None`` for exact engines.
    - `excluded`: boolean mask of entries the engine cannot vouch for (e.g. a
      finite-difference step that crossed a kink); `excluded_reason` says why.
    - `note`: a short human-readable remark (step size used, device, ...).
    - `study`: optional step-size study of an approximate engine:
      ``{"h": [...], "error": [...], "chosen": h}`` (error = max over entries of
      ``|D(h) - D(h/2)|``, which falls like ``h^2`` while truncation dominates and rises
      like ``1/h^n`` once rounding does).
    """

    values: np.ndarray
    dtype: str = "float64"
    error_estimate: np.ndarray | None = None
    excluded: np.ndarray | None = None
    excluded_reason: str = ""
    note: str = ""
    study: dict | None = None


@dataclass
class Skipped:
    """An engine did not compute a quantity; `reason` says why."""

    reason: str


EngineResult = dict[str, "EngineValue | Skipped"]
"""An engine's results by quantity name."""


def computed(value: "EngineValue | Skipped") -> EngineValue:
    """`value`, which the caller knows was computed; a :class:`Skipped` raises
    ``ValueError`` with its reason."""
    if isinstance(value, Skipped):
        raise ValueError(f"the engine did not compute this quantity: {value.reason}")
    return value
