"""The symbolic engine for layers given as a :class:`~derivcheck.layers.rules.LocalRule`.

Each cell is derived once by SymPy -- outputs and the nonzero entries of its Jacobians
with respect to its inputs and its parameters -- and compiled with
``lambdify(..., cse=True)``. A stage evaluates the compiled cell on all its applications
at once (arrays ``(M, N)``: applications x samples). The layer's derivatives are then the
vector chain rule over the value space:

- VJP (reverse): cotangents of the value space are pulled back stage by stage, from the
  last to the first, scatter-adding into the inputs and parameters each application read;
- Jacobian (forward): each value's derivative with respect to the layer input is pushed
  forward stage by stage.

A convolution thus costs one derivation of a ``K``-term dot product whatever the image
size, and an LSTM one derivation of one unit's cell whatever the sequence length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from derivcheck._lazy import sympy as sp

from derivcheck import compile_cache
from derivcheck.expr import NUMPY_MODULES, make_symbol
from derivcheck.layers.rules import Cell, LocalRule


def partials(expr: sp.Expr, wanted: set[sp.Symbol]) -> dict[sp.Symbol, sp.Expr]:
    """``{s: d expr / d s}`` for every symbol ``s`` of `wanted` that `expr` depends on.

    Differentiation is linear, so for a sum only the terms containing ``s`` are
    differentiated (SymPy's own ``diff`` of a sum differentiates every term for every
    symbol: 65x more work for one output of a 64-wide linear layer).
    """
    terms = expr.args if isinstance(expr, sp.Add) else (expr,)
    by_symbol: dict[sp.Symbol, list[sp.Expr]] = {}
    for term in terms:
        for sym in term.free_symbols & wanted:
            by_symbol.setdefault(sym, []).append(term)
    return {sym: sp.Add(*[sp.diff(term, sym) for term in group]) for sym, group in by_symbol.items()}


class CompiledCell:
    """One cell's outputs and nonzero Jacobian entries, derived and compiled.

    `in_entries` / `param_entries` are ``(q, k)`` pairs: output ``q`` depends on input
    (parameter) ``k``; :meth:`evaluate` returns their values in that order.
    """

    def __init__(self, cell: Cell):
        inputs = [make_symbol(f"c{k}") for k in range(cell.n_inputs)]
        params = [make_symbol(f"w{k}") for k in range(cell.n_params)]
        # cell outputs are SymPy expressions or numbers built in code, never text
        outputs = [sp.sympify(o, strict=True) for o in cell.fn(inputs, params)]  # safe: strict=True refuses strings
        self.n_outputs = len(outputs)
        in_index = {s: k for k, s in enumerate(inputs)}
        param_index = {s: k for k, s in enumerate(params)}
        in_entries: list[tuple[int, int]] = []
        param_entries: list[tuple[int, int]] = []
        in_exprs: list[sp.Expr] = []
        param_exprs: list[sp.Expr] = []
        wanted = set(inputs) | set(params)
        for q, out in enumerate(outputs):
            for sym, derivative in sorted(partials(out, wanted).items(), key=lambda item: item[0].name):
                if derivative == 0:
                    continue
                if sym in in_index:
                    in_entries.append((q, in_index[sym]))
                    in_exprs.append(derivative)
                else:
                    param_entries.append((q, param_index[sym]))
                    param_exprs.append(derivative)
        self.in_q = np.array([q for q, _ in in_entries], dtype=np.int64)
        self.in_k = np.array([k for _, k in in_entries], dtype=np.int64)
        self.param_q = np.array([q for q, _ in param_entries], dtype=np.int64)
        self.param_k = np.array([k for _, k in param_entries], dtype=np.int64)
        self.outputs = outputs
        self._forward = sp.lambdify([inputs, params], outputs, modules=NUMPY_MODULES, cse=True)
        self._full = sp.lambdify([inputs, params], outputs + in_exprs + param_exprs, modules=NUMPY_MODULES, cse=True)

    def to_record(self) -> dict[str, Any]:
        """What :meth:`from_record` needs, for the on-disk compile cache."""
        return {
            "functions": {"forward": compile_cache.function_source(self._forward), "full": compile_cache.function_source(self._full)},
            "n_outputs": self.n_outputs, "in_q": self.in_q.tolist(), "in_k": self.in_k.tolist(),
            "param_q": self.param_q.tolist(), "param_k": self.param_k.tolist(),
        }  # fmt: skip

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "CompiledCell":
        self = cls.__new__(cls)
        self.n_outputs = int(record["n_outputs"])
        for name in ("in_q", "in_k", "param_q", "param_k"):
            setattr(self, name, np.array(record[name], dtype=np.int64))
        self._forward = compile_cache.restore(record, "forward")
        self._full = compile_cache.restore(record, "full")
        return self

    @staticmethod
    def _args(ins: np.ndarray, ps: np.ndarray) -> tuple[list[Any], list[Any]]:
        return [ins[:, k, :] for k in range(ins.shape[1])], [ps[:, k, None] for k in range(ps.shape[1])]

    def forward(self, ins: np.ndarray, ps: np.ndarray) -> np.ndarray:
        """`ins` ``(M, K, N)``, `ps` ``(M, P)`` -> outputs ``(M, Q, N)``."""
        return _stack(self._forward(*self._args(ins, ps)), ins.shape[0], ins.shape[2])

    def evaluate(self, ins: np.ndarray, ps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Outputs ``(M, Q, N)``, input-Jacobian entries ``(M, Zi, N)`` and parameter-
        Jacobian entries ``(M, Zp, N)``."""
        values = _stack(self._full(*self._args(ins, ps)), ins.shape[0], ins.shape[2])
        q, zi = self.n_outputs, len(self.in_q)
        return values[:, :q], values[:, q : q + zi], values[:, q + zi :]


def _stack(results: list[Any], m: int, n: int) -> np.ndarray:
    out = np.empty((m, len(results), n), dtype=np.float64)
    for i, value in enumerate(results):
        out[:, i, :] = value
    return out


_CELLS: dict[tuple, CompiledCell] = {}


def compile_cell(cell: Cell) -> CompiledCell:
    """The compiled cell for `cell.key` (cached: a cell is derived once per process, and
    stored in the on-disk :mod:`~derivcheck.compile_cache`)."""
    if cell.key not in _CELLS:
        content = repr((cell.key, cell.n_inputs, cell.n_params))
        _CELLS[cell.key] = compile_cache.cached("cell", content, lambda: CompiledCell(cell), CompiledCell.from_record)
    return _CELLS[cell.key]


class CompiledRule:
    """A layer's :class:`LocalRule` with compiled cells; same interface as the whole-layer
    ``CompiledLayer``: inputs ``(in, N)``, flat parameter lists."""

    def __init__(self, rule: LocalRule, shapes: dict[str, tuple[int, ...]]):
        self.rule = rule
        self.in_size = rule.in_size
        self.out_size = rule.out_size
        self.shapes = shapes
        self.n_params = int(sum(int(np.prod(s)) for s in shapes.values()))
        self.cells = [compile_cell(cell) for cell in rule.cells]

    def _run(self, a: np.ndarray, params: "Sequence[float] | np.ndarray", with_jacobians: bool) -> tuple[np.ndarray, list[Any]]:
        n = a.shape[1]
        values = np.zeros((self.rule.n_values + 1, n))  # the last row is the constant 0 (index -1)
        values[: self.in_size] = a
        theta = np.append(np.asarray(params, dtype=np.float64), 0.0)
        jacobians = []
        for stage in self.rule.stages:
            cell = self.cells[stage.cell]
            ins = values[stage.input_index]
            ps = theta[stage.param_index]
            if with_jacobians:
                outs, j_in, j_p = cell.evaluate(ins, ps)
                jacobians.append((j_in, j_p))
            else:
                outs = cell.forward(ins, ps)
            values[stage.output_index] = outs
        return values, jacobians

    def forward(self, a: np.ndarray, params: "Sequence[float] | np.ndarray", consts: Any = None) -> np.ndarray:
        """``a`` is ``(in, N)``; returns ``(out, N)``."""
        values, _ = self._run(a, params, False)
        return values[self.rule.output]

    def vjp(self, a: np.ndarray, params: "Sequence[float] | np.ndarray", g: np.ndarray, consts: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Cotangent ``g`` ``(out, N)`` pulled back: ``(input cotangent (in, N),
        per-sample parameter cotangents (P, N))``."""
        n = a.shape[1]
        _, jacobians = self._run(a, params, True)
        cot = np.zeros((self.rule.n_values + 1, n))
        np.add.at(cot, self.rule.output, g)
        param_cot = np.zeros((self.n_params + 1, n))
        for stage, (j_in, j_p) in zip(reversed(self.rule.stages), reversed(jacobians)):
            cell = self.cells[stage.cell]
            g_out = cot[stage.output_index]  # (M, Q, N)
            if len(cell.in_q):
                np.add.at(cot, stage.input_index[:, cell.in_k], g_out[:, cell.in_q] * j_in)
            if len(cell.param_q):
                np.add.at(param_cot, stage.param_index[:, cell.param_k], g_out[:, cell.param_q] * j_p)
        cot[-1] = 0.0
        return cot[: self.in_size], param_cot[: self.n_params]

    def jacobian(self, a: np.ndarray, params: "Sequence[float] | np.ndarray", consts: Any = None) -> np.ndarray:
        """Local Jacobian per sample, ``(N, out, in)``, by forward accumulation."""
        n = a.shape[1]
        _, jacobians = self._run(a, params, True)
        tangent = np.zeros((self.rule.n_values + 1, n, self.in_size))
        tangent[np.arange(self.in_size), :, np.arange(self.in_size)] = 1.0
        for stage, (j_in, _) in zip(self.rule.stages, jacobians):
            cell = self.cells[stage.cell]
            m, q = stage.output_index.shape
            new = np.zeros((m, q, n, self.in_size))
            if len(cell.in_q):
                contribution = j_in[..., None] * tangent[stage.input_index[:, cell.in_k]]
                np.add.at(new, (slice(None), cell.in_q), contribution)  # type: ignore[arg-type]  # numpy stubs: a slice and an index array are a valid index
            tangent[stage.output_index] = new
        tangent[-1] = 0.0
        return np.transpose(tangent[self.rule.output], (1, 0, 2))

    def hessian_entries(self, a: np.ndarray, params: "Sequence[float] | np.ndarray") -> Any:
        raise NotImplementedError("second derivatives through local-rule layers are not derived")


class BatchCoupledRule:
    """A layer that couples the samples of a batch (batch normalisation in training mode):
    its rule indexes the whole batch, value ``n * in_size + i`` being feature ``i`` of
    sample ``n``, and is evaluated as one "sample" of size ``N * in_size``."""

    def __init__(self, rule: LocalRule, shapes: dict[str, tuple[int, ...]], batch: int):
        self.inner = CompiledRule(rule, shapes)
        self.batch = batch
        self.in_size = rule.in_size // batch
        self.out_size = rule.out_size // batch
        self.shapes = shapes

    def forward(self, a: np.ndarray, params: "Sequence[float] | np.ndarray", consts: Any = None) -> np.ndarray:
        out = self.inner.forward(a.T.reshape(-1, 1), params)
        return out.reshape(self.batch, self.out_size).T

    def vjp(self, a: np.ndarray, params: "Sequence[float] | np.ndarray", g: np.ndarray, consts: Any = None) -> tuple[np.ndarray, np.ndarray]:
        cot_in, cot_params = self.inner.vjp(a.T.reshape(-1, 1), params, g.T.reshape(-1, 1))
        return cot_in.reshape(self.batch, self.in_size).T, cot_params

    def jacobian(self, a: np.ndarray, params: "Sequence[float] | np.ndarray", consts: Any = None) -> np.ndarray:
        raise ValueError("a layer couples the samples of the batch: there is no per-sample Jacobian")
