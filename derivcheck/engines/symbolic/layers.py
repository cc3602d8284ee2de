"""Symbolic engine: SymPy derives every derivative; nothing is written by hand.

For each layer the forward map is written on explicit, real element symbols (local input
symbols ``a_j``, parameter symbols ``weight_i_j``). SymPy then differentiates it:

- the local input Jacobian ``d out_k / d a_j``;
- the vector-Jacobian products ``sum_k g_k d out_k / d a_j`` and
  ``sum_k g_k d out_k / d theta`` for a cotangent of local symbols ``g_k``.

Each is compiled once with ``lambdify(..., modules=NUMPY_MODULES, cse=True)`` and evaluated on
the whole batch at once (sample values broadcast, parameters as scalars). The loss is
handled the same way: ``d l / d y`` is derived from the per-sample loss expression.

The total derivative is the vector chain rule over these derived local pieces: reverse
accumulation for dL/dtheta and dL/dx, and the product of local Jacobians for dy/dx.
Working layer by layer with local symbols keeps the expressions small (a 20->20->20 net
builds in well under a second) where substituting one giant closed form would grow
exponentially with depth.

The engine always computes in float64: it is a reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
from derivcheck._lazy import sympy as sp

from derivcheck import compile_cache
from derivcheck.expr import NUMPY_MODULES, make_symbol
from derivcheck.layers import Layer, Loss
from derivcheck.engines.symbolic.products import CompiledProduct, CompiledUnit, compile_product, compile_unit
from derivcheck.engines.symbolic.rules import CompiledRule, partials


def _compile(args: list[Any], exprs: list[sp.Expr]) -> Callable[..., list[Any]]:
    return sp.lambdify(args, exprs, modules=NUMPY_MODULES, cse=True)


def _param_symbols(shapes: dict[str, tuple[int, ...]]) -> tuple[dict[str, np.ndarray], list[sp.Symbol]]:
    arrays: dict[str, np.ndarray] = {}
    flat: list[sp.Symbol] = []
    for name, shape in shapes.items():
        symbols = [make_symbol(f"{name}_" + "_".join(map(str, idx))) for idx in np.ndindex(*shape)]
        flat.extend(symbols)
        arrays[name] = np.array(symbols, dtype=object).reshape(shape)
    return arrays, flat


class CompiledLayer:
    """One layer's forward, local Jacobian and VJPs, derived by SymPy and compiled.

    All compiled functions take the layer input as a sequence of ``in_size`` arrays of
    shape ``(N,)`` and the parameters as a flat list in the layer's parameter order.
    """

    _origin: Any  # what a restored copy was derived from (set by from_record)

    def __init__(self, layer: Layer, in_size: int):
        self.in_size = in_size
        bound = bool(layer.in_shape) and layer.in_size == in_size
        self.out_size = int(np.prod(layer.out_shape)) if bound else layer.output_size(in_size)
        self.shapes = layer.param_shapes()
        inputs = [make_symbol(f"a{j}") for j in range(in_size)]
        param_arrays, param_flat = _param_symbols(self.shapes)
        # per-sample constants (a dropout mask, an embedding's one-hot indices) are passed
        # like inputs but never differentiated
        self.n_constants = layer.n_sample_constants
        constants = [make_symbol(f"k{j}") for j in range(self.n_constants)]
        if constants:
            param_arrays = {**param_arrays, "@constants": np.array(constants, dtype=object)}
        outputs = layer.sympy_forward(inputs, param_arrays)
        cotangent = [make_symbol(f"g{k}") for k in range(self.out_size)]
        self.forward_exprs = outputs
        self.inputs = inputs
        self.param_flat = param_flat
        self._hessian: Callable[..., list[Any]] | None = None
        self._hessian_keys: list[tuple[int, int, int]] = []

        input_index = {sym: j for j, sym in enumerate(inputs)}
        param_index = {sym: i for i, sym in enumerate(param_flat)}
        jacobian: list[sp.Expr] = [sp.Integer(0)] * (self.out_size * in_size)
        vjp_input_terms: list[list[sp.Expr]] = [[] for _ in range(in_size)]
        vjp_param_terms: list[list[sp.Expr]] = [[] for _ in param_flat]
        wanted = set(input_index) | set(param_index)
        for k, expr in enumerate(outputs):
            for sym, derivative in partials(expr, wanted).items():
                if sym in input_index:
                    j = input_index[sym]
                    jacobian[k * in_size + j] = derivative
                    vjp_input_terms[j].append(cotangent[k] * derivative)
                else:
                    vjp_param_terms[param_index[sym]].append(cotangent[k] * derivative)
        self.jacobian_exprs = jacobian
        vjp = [sp.Add(*terms) for terms in vjp_input_terms] + [sp.Add(*terms) for terms in vjp_param_terms]
        sample = inputs + constants
        self._forward = _compile([sample, param_flat], outputs)
        # Split the Jacobian: entries that depend on the sample, entries that depend only
        # on parameters (a linear layer's W), and structural zeros (skipped).
        input_set = set(inputs) | set(constants)
        self._jac_sample = [i for i, e in enumerate(jacobian) if e.free_symbols & input_set]
        self._jac_fixed = [i for i, e in enumerate(jacobian) if e != 0 and not e.free_symbols & input_set]
        self._jacobian_sample = _compile([sample, param_flat], [jacobian[i] for i in self._jac_sample])
        self._jacobian_fixed = _compile([param_flat], [jacobian[i] for i in self._jac_fixed])
        self._vjp = _compile([sample, param_flat, cotangent], vjp)

    _LAZY = ("forward_exprs", "jacobian_exprs", "inputs", "param_flat")

    def to_record(self) -> dict[str, Any]:
        """What :meth:`from_record` needs, for the on-disk compile cache."""
        functions = {"forward": self._forward, "jacobian_sample": self._jacobian_sample, "jacobian_fixed": self._jacobian_fixed, "vjp": self._vjp}
        return {
            "functions": {name: compile_cache.function_source(fn) for name, fn in functions.items()},
            "in_size": self.in_size, "out_size": self.out_size, "n_constants": self.n_constants,
            "jac_sample": list(self._jac_sample), "jac_fixed": list(self._jac_fixed),
        }  # fmt: skip

    @classmethod
    def from_record(cls, layer: Layer, record: dict[str, Any]) -> "CompiledLayer":
        """A compiled layer restored from the cache; its SymPy expressions are derived
        again only if someone asks for them (explain, second derivatives)."""
        self = cls.__new__(cls)
        self._origin = layer
        self.in_size, self.out_size, self.n_constants = record["in_size"], record["out_size"], record["n_constants"]
        self.shapes = layer.param_shapes()
        self._jac_sample, self._jac_fixed = list(record["jac_sample"]), list(record["jac_fixed"])
        functions = {name: compile_cache.restore(record, name) for name in record["functions"]}
        self._forward, self._jacobian_sample = functions["forward"], functions["jacobian_sample"]
        self._jacobian_fixed, self._vjp = functions["jacobian_fixed"], functions["vjp"]
        self._hessian, self._hessian_keys = None, []
        return self

    def __getattr__(self, name: str) -> Any:
        if name in CompiledLayer._LAZY and "_origin" in self.__dict__:
            fresh = CompiledLayer(self.__dict__["_origin"], self.in_size)
            for attr in CompiledLayer._LAZY:
                setattr(self, attr, getattr(fresh, attr))
            return getattr(self, name)
        raise AttributeError(name)

    def _sample(self, a: np.ndarray, consts: np.ndarray | None) -> np.ndarray:
        """The compiled functions' sample argument: inputs then constants, ``(in + C, N)``."""
        if self.n_constants and (consts is None or len(consts) != self.n_constants):
            raise ValueError(f"this layer needs {self.n_constants} per-sample constants")
        return np.concatenate([a, consts]) if self.n_constants else a

    def forward(self, a: np.ndarray, params: "Sequence[float] | np.ndarray", consts: np.ndarray | None = None) -> np.ndarray:
        """``a`` is ``(in, N)`` (per-sample constants `consts` ``(C, N)``); returns ``(out, N)``."""
        return _batched(self._forward, a.shape[1], self._sample(a, consts), params)

    def jacobian(self, a: np.ndarray, params: "Sequence[float] | np.ndarray", consts: np.ndarray | None = None) -> np.ndarray:
        """Local Jacobian per sample, ``(N, out, in)``."""
        n = a.shape[1]
        flat = np.zeros((n, self.out_size * self.in_size))
        if self._jac_fixed:
            flat[:, self._jac_fixed] = np.asarray(self._jacobian_fixed(params), dtype=np.float64)
        if self._jac_sample:
            flat[:, self._jac_sample] = _batched(self._jacobian_sample, n, self._sample(a, consts), params).T
        return flat.reshape(n, self.out_size, self.in_size)

    def hessian_entries(self, a: np.ndarray, params: "Sequence[float] | np.ndarray") -> list[tuple[tuple[int, int, int], np.ndarray]]:
        """Nonzero local second derivatives ``d^2 out_k / d a_i d a_j`` per sample, derived
        (lazily, on first use) from the local Jacobian: ``[((k, i, j), values (N,)), ...]``."""
        if self._hessian is None:
            input_set = set(self.inputs)
            index = {s: j for j, s in enumerate(self.inputs)}
            exprs = []
            for flat, first in enumerate(self.jacobian_exprs):
                if first == 0:
                    continue
                k, i = divmod(flat, self.in_size)
                for sym, second in partials(first, input_set).items():
                    self._hessian_keys.append((k, i, index[sym]))
                    exprs.append(second)
            self._hessian = _compile([self.inputs, self.param_flat], exprs)
        if not self._hessian_keys:
            return []
        values = _batched(self._hessian, a.shape[1], a, params)
        return list(zip(self._hessian_keys, values))

    def vjp(self, a: np.ndarray, params: "Sequence[float] | np.ndarray", g: np.ndarray, consts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Cotangent ``g`` ``(out, N)`` pulled back: ``(input cotangent (in, N),
        per-sample parameter cotangents (P, N))``."""
        stacked = _batched(self._vjp, a.shape[1], self._sample(a, consts), params, g)
        return stacked[: self.in_size], stacked[self.in_size :]


class CompiledLoss:
    """Per-sample loss and ``d l / d y``, derived by SymPy and compiled."""

    _origin: Any  # what a restored copy was derived from (set by from_record)

    def __init__(self, loss: Loss, out_size: int, target_size: int):
        outputs = [make_symbol(f"y{k}") for k in range(out_size)]
        targets = [make_symbol(f"t{k}") for k in range(target_size)]
        per_sample = loss.sympy_per_sample(outputs, targets)
        # only the terms of the (scaled) sum that contain y_k are differentiated for y_k:
        # a 576-output MSE derives in milliseconds instead of a minute
        coefficient, rest = per_sample.as_coeff_Mul()
        found = partials(rest, set(outputs))
        gradient = [coefficient * found.get(y, sp.Integer(0)) for y in outputs]
        self.expr = per_sample
        self._fn = _compile([outputs, targets], [per_sample] + gradient)

    def to_record(self) -> dict[str, Any]:
        return {"functions": {"loss": compile_cache.function_source(self._fn)}}

    @classmethod
    def from_record(cls, loss: Loss, out_size: int, target_size: int, record: dict[str, Any]) -> "CompiledLoss":
        self = cls.__new__(cls)
        self._origin = (loss, out_size, target_size)
        self._fn = compile_cache.restore(record, "loss")
        return self

    def __getattr__(self, name: str) -> Any:
        if name == "expr" and "_origin" in self.__dict__:
            loss, out_size, target_size = self.__dict__["_origin"]
            self.expr = loss.sympy_per_sample([make_symbol(f"y{k}") for k in range(out_size)], [make_symbol(f"t{k}") for k in range(target_size)])
            return self.expr
        raise AttributeError(name)

    def value_and_grad(self, y: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``y`` ``(out, N)``, ``t`` ``(T, N)`` -> per-sample loss ``(N,)`` and ``dl/dy`` ``(out, N)``."""
        stacked = _batched(self._fn, y.shape[1], y, t)
        return stacked[0], stacked[1:]


SCALAR_BATCH = 16
"""Batches of up to this many samples are evaluated one sample at a time on Python floats.
The generated code does one arithmetic operation per term of the derived expressions: ~30 ns
on a float, ~0.7 us on a numpy array of the batch. On a 64x64 linear layer's VJP, 8 samples
take 5 ms this way against 15 ms on arrays (identical bits); the two break even near 24."""


def _batched(fn: Callable[..., list[Any]], n: int, *args: Any) -> np.ndarray:
    """``fn(*args)`` for `n` samples, stacked ``(outputs, n)`` float64. A 2-D array argument
    ``(k, n)`` holds per-sample values (a row per symbol), anything else (parameters) is
    shared. Small batches go sample by sample on Python floats (:data:`SCALAR_BATCH`); a
    sample whose float arithmetic raises (division by zero, overflow of ``**``) or turns
    complex (a negative base to a fractional power) sends the batch to numpy's array
    arithmetic, which gives inf/nan where the derived formula has them."""
    per_sample = [isinstance(arg, np.ndarray) and arg.ndim == 2 for arg in args]
    if n <= SCALAR_BATCH:
        columns = [arg.T.tolist() if batch else [float(v) for v in arg] for arg, batch in zip(args, per_sample)]
        try:
            rows = [fn(*[column[s] if batch else column for column, batch in zip(columns, per_sample)]) for s in range(n)]
            return np.array(rows, dtype=np.float64).reshape(n, -1).T
        except (ArithmeticError, TypeError, ValueError):
            pass
    return _stack(fn(*[list(arg) if batch else arg for arg, batch in zip(args, per_sample)]), n)


def _stack(results: list[Any], n: int) -> np.ndarray:
    """Stack lambdify outputs (arrays or constants) into ``(len(results), n)`` float64."""
    try:  # usually every output depends on the sample: one conversion, ~10x faster than the loop
        stacked = np.asarray(results, dtype=np.float64)
        if stacked.shape == (len(results), n):
            return stacked
    except ValueError:  # constants among arrays (a ragged list): broadcast each below
        pass
    out = np.empty((len(results), n), dtype=np.float64)
    for i, value in enumerate(results):
        out[i] = value
    return out


_COMPILED: dict[tuple, Any] = {}
_COMPILED_LOSSES: dict[tuple, CompiledLoss] = {}


def _bound(layer: Layer, in_size: int) -> bool:
    """Whether `layer` is bound to a per-sample shape of `in_size` values (otherwise it is
    compiled on a flat input vector)."""
    return bool(layer.in_shape) and int(np.prod(layer.in_shape)) == in_size


def _layer_key(layer: Layer, in_size: int, whole: bool) -> tuple:
    shape = layer.in_shape if _bound(layer, in_size) else (in_size,)
    return (type(layer), repr(sorted(layer.options.items())), shape, whole)


def _layer_content(layer: Layer, key: tuple, in_size: int) -> str:
    return repr((type(layer).__module__, type(layer).__qualname__, key[1:], in_size))


def _is_unit(layer: Layer) -> bool:
    """An elementwise, parameter-free layer without per-sample constants: one derived unit."""
    return bool(layer.ELEMENTWISE) and not layer.param_shapes() and not layer.n_sample_constants and layer.per_sample


def needs_derivation(network: Any) -> bool:
    """Whether running `network` would derive a whole layer that is neither compiled in
    this process nor stored in the compile cache (local-rule cells, small and quick to
    derive, do not count)."""
    for layer, size in zip(network.layers, network.sizes):
        key = _layer_key(layer, size, False)
        if not layer.per_sample or key in _COMPILED or layer.product_cell() is not None or _is_unit(layer) or (_bound(layer, size) and layer.local_rule() is not None):
            continue
        if not compile_cache.has("layer", _layer_content(layer, key, size)):
            return True
    return False


def compile_layer(layer: Layer, in_size: int, whole: bool = False) -> "CompiledLayer | CompiledRule | CompiledProduct | CompiledUnit":
    """The compiled derivation of `layer` at `in_size` inputs (cached per configuration):
    a :class:`~derivcheck.engines.symbolic.products.CompiledProduct` for a dense layer (one
    derived product term), a :class:`~derivcheck.engines.symbolic.products.CompiledUnit` for
    an elementwise one (one derived unit), a :class:`CompiledRule` when the layer has a
    local rule, else (or with `whole`, for callers that need the element expressions) a
    whole-layer :class:`CompiledLayer`."""
    key = _layer_key(layer, in_size, whole)
    try:
        return _COMPILED[key]
    except KeyError:
        product = None if whole else layer.product_cell()
        if product is not None:
            out_size = layer.output_size(in_size)
            _COMPILED[key] = compile_product(product, in_size, out_size, layer.param_shapes())
            return _COMPILED[key]
        if not whole and _is_unit(layer):
            _COMPILED[key] = compile_unit(layer, in_size)
            return _COMPILED[key]
        rule = layer.local_rule() if _bound(layer, in_size) and not whole else None
        if rule is not None:  # its cells are cached one by one
            compiled: Any = CompiledRule(rule, layer.param_shapes())
        else:
            content = _layer_content(layer, key, in_size)
            compiled = compile_cache.cached("layer", content, lambda: CompiledLayer(layer, in_size), lambda record: CompiledLayer.from_record(layer, record))
        _COMPILED[key] = compiled
        return compiled


def compile_loss(loss: Loss, out_size: int, target_size: int) -> CompiledLoss:
    """The compiled derivation of `loss` (cached per configuration)."""
    key = (type(loss), tuple(sorted(loss.options.items())), out_size, target_size)
    if key not in _COMPILED_LOSSES:
        content = repr((type(loss).__module__, type(loss).__qualname__, key[1:]))
        _COMPILED_LOSSES[key] = compile_cache.cached("loss", content, lambda: CompiledLoss(loss, out_size, target_size), lambda record: CompiledLoss.from_record(loss, out_size, target_size, record))
    return _COMPILED_LOSSES[key]


MAX_WHOLE_LAYER_ENTRIES = 10_000
"""Largest ``in x out`` local Jacobian derived as one expression per entry (a 100x100
linear layer derives and compiles in ~10 s; the cost grows with the entry count)."""

MAX_CELL_SYMBOLS = 2_000
"""Largest cell (inputs + parameters) of a local rule; an LSTM unit with F inputs and H
hidden units has ``F + H + 1 + 4 (F + H + 2)`` symbols."""

MAX_RULE_VALUES = 2_000_000
"""Largest value space (intermediate values x samples) a local rule is evaluated on."""


def size_problem(network: Any, batch: int) -> str | None:
    """Why the symbolic engine will not derive `network`, or ``None`` when it will."""
    for index, layer in enumerate(network.layers):
        where = f"layer {index} ({layer.kind})"
        if layer.product_cell() is not None or _is_unit(layer):
            continue  # one derived term or unit, applied as matrix products: any width
        rule = layer.local_rule() if layer.per_sample else None
        if not layer.per_sample:
            size = batch * layer.in_size
            if size * 4 > MAX_RULE_VALUES:
                return f"{where} couples {batch} samples of {layer.in_size} values: too large for the symbolic batch rule"
            continue
        if rule is None:
            entries = layer.in_size * int(np.prod(layer.out_shape))
            if entries > MAX_WHOLE_LAYER_ENTRIES:
                return (f"{where} has a {int(np.prod(layer.out_shape))}x{layer.in_size} local Jacobian ({entries} entries); "
                        f"the symbolic engine derives up to {MAX_WHOLE_LAYER_ENTRIES} (about 10 s), the other engines still run")  # fmt: skip
            continue
        largest = max(cell.n_inputs + cell.n_params for cell in rule.cells)
        if largest > MAX_CELL_SYMBOLS:
            return f"{where}: one application of its local rule has {largest} symbols (limit {MAX_CELL_SYMBOLS}); the other engines still run"
        if rule.n_values * batch > MAX_RULE_VALUES:
            return f"{where}: its local rule holds {rule.n_values} values per sample x {batch} samples (limit {MAX_RULE_VALUES}); the other engines still run"
    return None
