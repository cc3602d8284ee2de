"""The engine interface. Engines never import one another."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from derivcheck.problem import Problem
from derivcheck.quantities import Quantity
from derivcheck.values import EngineResult


class Engine(ABC):
    """Computes every quantity it can for a :class:`~derivcheck.problem.Problem`.

    Quantities an engine cannot compute are returned as
    :class:`~derivcheck.values.Skipped` with a reason, never silently dropped.
    """

    name: ClassVar[str]

    @abstractmethod
    def compute(self, problem: Problem, quantities: Sequence[Quantity]) -> EngineResult:
        """Return one entry per quantity name."""
