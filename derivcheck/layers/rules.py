"""Local rules: a layer written as many applications of a few small *cells*.

A convolution applies one dot product at every output position; an LSTM applies one cell
at every time step; attention applies one softmax-weighted sum per query. Deriving the
whole layer as one expression repeats the same derivation thousands of times (and a
recurrence nests it T deep). A :class:`LocalRule` instead says:

- **cells**: small SymPy functions ``cell(inputs K, params P) -> outputs Q``;
- **value space**: the layer's flat input (indices ``0 .. in_size-1``) followed by
  intermediate values the stages write (``in_size .. n_values-1``); index ``-1`` reads
  a constant zero (zero padding) and, as a parameter index, a zero parameter;
- **stages**, run in order: stage ``s`` applies cell ``cell`` ``M`` times, application
  ``m`` reading ``input_index[m]`` (``K`` value-space indices) and ``param_index[m]``
  (``P`` indices into the layer's flat parameters, in :meth:`Layer.param_shapes` order)
  and writing ``output_index[m]`` (``Q`` fresh value-space indices);
- **output**: the value-space indices of the layer output, in flat output order.

The symbolic engine derives each cell's Jacobians once with SymPy, compiles them, and
evaluates every application of a stage in one vectorized call; the vector chain rule
over the value space does the rest (see :mod:`derivcheck.engines.symbolic.layers`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from derivcheck._lazy import sympy as sp

CellFunction = Callable[["list[sp.Expr]", "list[sp.Expr]"], "list[sp.Expr]"]


@dataclass(frozen=True)
class Cell:
    """``fn(inputs, params) -> outputs`` on `n_inputs` and `n_params` SymPy symbols.

    `key` identifies the cell's maths for the compile cache (same key, same function)."""

    fn: CellFunction
    n_inputs: int
    n_params: int
    key: tuple


@dataclass(frozen=True)
class Stage:
    """`cell` (an index into :attr:`LocalRule.cells`) applied once per row of the index
    arrays: ``input_index (M, K)``, ``param_index (M, P)``, ``output_index (M, Q)``."""

    cell: int
    input_index: np.ndarray
    param_index: np.ndarray
    output_index: np.ndarray


@dataclass
class LocalRule:
    """See the module docstring. Build with :class:`RuleBuilder`."""

    in_size: int
    n_values: int
    cells: list[Cell]
    stages: list[Stage]
    output: np.ndarray

    @property
    def out_size(self) -> int:
        return int(self.output.size)


@dataclass
class RuleBuilder:
    """Incremental construction of a :class:`LocalRule` over a layer input of `in_size`."""

    in_size: int
    cells: list[Cell] = field(default_factory=list)
    stages: list[Stage] = field(default_factory=list)
    n_values: int = 0

    def __post_init__(self) -> None:
        self.n_values = self.in_size

    def cell(self, fn: CellFunction, n_inputs: int, n_params: int, key: tuple) -> int:
        """Register a cell (reused when `key` was registered before); returns its index."""
        for index, existing in enumerate(self.cells):
            if existing.key == key:
                return index
        self.cells.append(Cell(fn, n_inputs, n_params, key))
        return len(self.cells) - 1

    def stage(self, cell: int, input_index: "Sequence[Any] | np.ndarray", param_index: "Sequence[Any] | np.ndarray", n_outputs: int) -> np.ndarray:
        """Apply `cell` once per row; returns the fresh output indices ``(M, n_outputs)``."""
        inputs = np.asarray(input_index, dtype=np.int64)
        params = np.asarray(param_index, dtype=np.int64)
        m = len(inputs)
        inputs = inputs.reshape(m, inputs.size // m if m else 0)
        params = params.reshape(m, params.size // m if m else 0)
        cell_def = self.cells[cell]
        if inputs.shape[1] != cell_def.n_inputs or params.shape[1] != cell_def.n_params:
            raise ValueError(f"stage of cell {cell_def.key} reads {inputs.shape[1]} inputs and {params.shape[1]} parameters, cell takes {cell_def.n_inputs} and {cell_def.n_params}")
        outputs = np.arange(self.n_values, self.n_values + m * n_outputs, dtype=np.int64).reshape(m, n_outputs)
        self.n_values += m * n_outputs
        self.stages.append(Stage(cell, inputs, params, outputs))
        return outputs

    def build(self, output: Sequence | np.ndarray) -> LocalRule:
        return LocalRule(self.in_size, self.n_values, self.cells, self.stages, np.asarray(output, dtype=np.int64).ravel())


@dataclass(frozen=True)
class ProductCell:
    """A dense layer ``y_o = sum_k term(a_k, W_ok) (+ b_o)``: the layer states its term
    (``nn.Linear``: ``w * a``) and the symbolic engine derives it once, for any width
    (see :mod:`derivcheck.engines.symbolic.products`)."""

    term: Callable[[Any, Any], Any]
    bias: bool


def param_offsets(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Flat parameter indices of each parameter, shaped like it (``-1`` never appears)."""
    offsets: dict[str, np.ndarray] = {}
    start = 0
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        offsets[name] = np.arange(start, start + size, dtype=np.int64).reshape(shape)
        start += size
    return offsets


def dot_cell(n: int, bias: bool) -> tuple[CellFunction, int]:
    """``sum_k w_k a_k (+ b)``: inputs ``a`` (n), params ``w`` (n) then ``b``."""

    def fn(inputs: list[sp.Expr], params: list[sp.Expr]) -> list[sp.Expr]:
        total = sp.Add(*[w * a for w, a in zip(params[:n], inputs)])
        return [total + params[n] if bias else total]

    return fn, n + (1 if bias else 0)
