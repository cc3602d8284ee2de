"""Width-independent derivations: a dense layer from one derived product term, an
elementwise layer from one derived unit.

**Dense layers** (:class:`~derivcheck.layers.rules.ProductCell`). ``nn.Linear`` computes
``y_o = sum_k t(a_k, W_ok) + b_o`` with the term ``t(a, w) = w a``. SymPy derives the term's
partial derivatives once -- ``dt/da``, ``dt/dw``, ``d2t/da2`` -- whatever the layer's width,
and :class:`CompiledProduct` applies them to the whole layer:

- when ``dt/da`` does not depend on ``a``, the layer's Jacobian is the matrix
  ``J_ok = dt/da(W_ok)``, the same for every sample: forward ``J A + b`` (when ``t = a dt/da``),
  VJP ``J^T G``, forward-mode jets ``J @ jac``, all matrix products (BLAS);
- when ``dt/dw`` does not depend on ``w``, the weight gradient is ``G P^T`` with
  ``P_kn = dt/dw(a_kn)``;
- otherwise (a term that is not bilinear) the same formulas are evaluated entry by entry
  on ``(out, in, N)`` arrays: slower, still exact.

Nothing about the product is written by hand: a seeded wrong term (``w a + a^2``) is
derived, evaluated and seen to disagree with the other engines.

**Elementwise layers** (activations): SymPy derives the unit ``f(z)``, ``f'(z)`` and
``f''(z)`` once; :class:`CompiledUnit` evaluates them on whole arrays. The second
derivative gives the forward-mode jet ``(h, J, H) -> (f(h), f' J, f'' J J^T + f' H)`` that
network fields of PINN size need.

Both are stored in the compile cache (kinds ``product`` and ``unit``), keyed by the
derived expressions themselves.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from derivcheck._lazy import sympy as sp

from derivcheck import compile_cache
from derivcheck.expr import NUMPY_MODULES, make_symbol
from derivcheck.layers.rules import ProductCell


def _array(value: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A lambdify result (an array, or a constant where the derivative is one) as float64 of `shape`."""
    return np.broadcast_to(np.asarray(value, dtype=np.float64), shape)


class CompiledProduct:
    """A dense layer's derivatives from its derived product term (see the module docstring).

    Inputs ``a`` are ``(in, N)``; parameters a flat list ``[W (out, in) row-major, b (out,)]``
    in the layer's parameter order."""

    FUNCTIONS = ("term", "d_a", "d_w", "d_aa")

    def __init__(self, cell: ProductCell, in_size: int, out_size: int, shapes: dict[str, tuple[int, ...]]):
        self.in_size, self.out_size, self.shapes, self.bias = in_size, out_size, shapes, cell.bias
        a, w = make_symbol("a"), make_symbol("w")
        term = product_term(cell)
        d_a, d_w = sp.diff(term, a), sp.diff(term, w)
        d_aa = sp.diff(d_a, a)
        self.flags = {
            "linear_in_a": a not in d_a.free_symbols,  # J is a matrix of parameters
            "homogeneous": sp.expand(term - a * d_a) == 0,  # t = a dt/da: forward is J A
            "linear_in_w": w not in d_w.free_symbols,  # dW = G P^T
            "affine_in_a": d_aa == 0,
        }
        self.exprs = {"term": term, "d_a": d_a, "d_w": d_w, "d_aa": d_aa}
        self._fns = {name: sp.lambdify([a, w], expr, modules=NUMPY_MODULES) for name, expr in self.exprs.items()}

    def to_record(self) -> dict[str, Any]:
        """The derived term (width-free): one entry serves every width."""
        return {"functions": {name: compile_cache.function_source(fn) for name, fn in self._fns.items()}, "flags": dict(self.flags)}

    @classmethod
    def from_record(cls, record: dict[str, Any], cell: ProductCell, in_size: int, out_size: int, shapes: dict[str, tuple[int, ...]]) -> "CompiledProduct":
        self = cls.__new__(cls)
        self.in_size, self.out_size, self.bias, self.shapes = in_size, out_size, cell.bias, shapes
        self.flags = {k: bool(v) for k, v in record["flags"].items()}
        self._fns = {name: compile_cache.restore(record, name) for name in cls.FUNCTIONS}
        return self

    # -- parameters ---------------------------------------------------------------------
    def _split(self, params: Any) -> tuple[np.ndarray, np.ndarray | None]:
        flat = np.asarray(params, dtype=np.float64)
        n_w = self.out_size * self.in_size
        weight = flat[:n_w].reshape(self.out_size, self.in_size)
        return weight, (flat[n_w : n_w + self.out_size] if self.bias else None)

    def _matrix(self, weight: np.ndarray) -> np.ndarray:
        """``J_ok = dt/da(W_ok)`` (only when the term is linear in ``a``)."""
        return _array(self._fns["d_a"](0.0, weight), weight.shape)

    def _entries(self, name: str, a: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """Function `name` at every ``(o, k, n)``: ``a`` ``(in, N)``, ``W`` ``(out, in)``."""
        shape = (weight.shape[0], a.shape[0], a.shape[1])
        return _array(self._fns[name](a[None, :, :], weight[:, :, None]), shape)

    # -- the interface of the other compiled layers ---------------------------------------
    def forward(self, a: np.ndarray, params: Any, consts: Any = None) -> np.ndarray:
        weight, bias = self._split(params)
        if self.flags["linear_in_a"] and self.flags["homogeneous"]:
            out = self._matrix(weight) @ a
        else:
            out = self._entries("term", a, weight).sum(axis=1)
        return out + bias[:, None] if bias is not None else out

    def jacobian(self, a: np.ndarray, params: Any, consts: Any = None) -> np.ndarray:
        """``(N, out, in)``."""
        weight, _ = self._split(params)
        if self.flags["linear_in_a"]:
            return np.broadcast_to(self._matrix(weight), (a.shape[1], self.out_size, self.in_size))
        return np.transpose(self._entries("d_a", a, weight), (2, 0, 1))

    def apply_jacobian(self, a: np.ndarray, params: Any, tangent: np.ndarray) -> np.ndarray:
        """``J_n @ tangent_n`` for every sample: `tangent` ``(N, in, d)`` -> ``(N, out, d)``."""
        weight, _ = self._split(params)
        if self.flags["linear_in_a"]:
            n, _in, d = tangent.shape
            return (self._matrix(weight) @ tangent.transpose(1, 0, 2).reshape(self.in_size, n * d)).reshape(self.out_size, n, d).transpose(1, 0, 2)
        return np.matmul(np.transpose(self._entries("d_a", a, weight), (2, 0, 1)), tangent)

    def left_apply_jacobian(self, a: np.ndarray, params: Any, left: np.ndarray) -> np.ndarray:
        """``left_n @ J_n`` for every sample: `left` ``(N, k, out)`` -> ``(N, k, in)`` (the
        reverse-mode product, cheaper than :meth:`apply_jacobian` when few outputs)."""
        weight, _ = self._split(params)
        if self.flags["linear_in_a"]:
            # one matrix product for all samples (numpy's batched matmul would call BLAS once per sample)
            n, k, _out = left.shape
            return (left.reshape(n * k, -1) @ self._matrix(weight)).reshape(n, k, -1)
        return np.matmul(left, np.transpose(self._entries("d_a", a, weight), (2, 0, 1)))

    def _input_cotangent(self, a: np.ndarray, weight: np.ndarray, g: np.ndarray) -> np.ndarray:
        """``J^T g``: ``(in, N)``."""
        if self.flags["linear_in_a"]:
            return self._matrix(weight).T @ g
        return np.einsum("okn,on->kn", self._entries("d_a", a, weight), g)

    def vjp_sum(self, a: np.ndarray, params: Any, g: np.ndarray, consts: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Cotangent ``g`` ``(out, N)`` pulled back: input cotangent ``(in, N)`` and the
        parameter gradient summed over samples ``(P,)``."""
        weight, bias = self._split(params)
        cot_in = self._input_cotangent(a, weight, g)
        if self.flags["linear_in_w"]:
            grad_w = g @ _array(self._fns["d_w"](a, 0.0), a.shape).T
        else:
            grad_w = np.einsum("on,okn->ok", g, self._entries("d_w", a, weight))
        parts = [grad_w.ravel()] + ([g.sum(axis=1)] if bias is not None else [])
        return cot_in, np.concatenate(parts)

    def vjp(self, a: np.ndarray, params: Any, g: np.ndarray, consts: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Per-sample parameter cotangents ``(P, N)`` as the other compiled layers give them."""
        weight, bias = self._split(params)
        cot_in = self._input_cotangent(a, weight, g)
        d_w = self._entries("d_w", a, weight)  # (out, in, N)
        per_sample = (g[:, None, :] * d_w).reshape(self.out_size * self.in_size, a.shape[1])
        if bias is not None:
            per_sample = np.concatenate([per_sample, g])
        return cot_in, per_sample

    def jet(self, h: np.ndarray, jac: np.ndarray, hess: np.ndarray, params: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Forward-mode second-order jet: values ``h`` ``(P, in)``, Jacobians ``jac``
        ``(P, in, d)`` and Hessians ``hess`` ``(P, in, d, d)`` along the input variables, through
        the layer: ``J' = J_loc jac``, ``H' = J_loc hess + sum_k t_aa jac_k jac_k^T``."""
        p, _, d = jac.shape
        a = h.T
        out = self.forward(a, params).T
        weight, _ = self._split(params)
        if self.flags["linear_in_a"]:
            matrix = self._matrix(weight)
            new_jac = (matrix @ jac.transpose(1, 0, 2).reshape(self.in_size, p * d)).reshape(self.out_size, p, d).transpose(1, 0, 2)
            new_hess = (matrix @ hess.transpose(1, 0, 2, 3).reshape(self.in_size, p * d * d)).reshape(self.out_size, p, d, d).transpose(1, 0, 2, 3)
        else:
            local = np.transpose(self._entries("d_a", a, weight), (2, 0, 1))  # (P, out, in)
            new_jac = np.matmul(local, jac)
            new_hess = np.einsum("poi,pide->pode", local, hess)
        if not self.flags["affine_in_a"]:
            second = np.transpose(self._entries("d_aa", a, weight), (2, 0, 1))  # (P, out, in)
            new_hess = new_hess + np.einsum("poi,pid,pie->pode", second, jac, jac)
        return out, np.ascontiguousarray(new_jac), np.ascontiguousarray(new_hess)

    def jet_by_unit(self, h: np.ndarray, jac: np.ndarray, hess: np.ndarray, params: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`jet` with units first: ``h`` ``(in, P)``, ``jac`` ``(in, P, d)``, ``hess``
        ``(in, P, d, d)`` -- each a matrix of ``in`` rows, so the layer is one matrix product
        per jet part, without transposes."""
        if not (self.flags["linear_in_a"] and self.flags["affine_in_a"]):
            out, new_jac, new_hess = self.jet(h.T, jac.transpose(1, 0, 2), hess.transpose(1, 0, 2, 3), params)
            return out.T.copy(), np.ascontiguousarray(new_jac.transpose(1, 0, 2)), np.ascontiguousarray(new_hess.transpose(1, 0, 2, 3))
        weight, bias = self._split(params)
        matrix = self._matrix(weight)
        out = matrix @ h
        if bias is not None:
            out += bias[:, None]
        n, p, d = jac.shape
        return out, (matrix @ jac.reshape(n, -1)).reshape(-1, p, d), (matrix @ hess.reshape(n, -1)).reshape(-1, p, d, d)


class CompiledUnit:
    """An elementwise, parameter-free layer from its derived unit ``f``, ``f'``, ``f''``."""

    FUNCTIONS = ("value", "first", "second")

    def __init__(self, unit: Any, in_size: int):
        self.in_size = self.out_size = in_size
        self.shapes: dict[str, tuple[int, ...]] = {}
        z = make_symbol("z")
        value = sp.sympify(unit(z), strict=True)  # safe: strict=True refuses strings; the unit is code
        first = sp.diff(value, z)
        self.exprs = {"value": value, "first": first, "second": sp.diff(first, z)}
        self._fns = {name: sp.lambdify([z], expr, modules=NUMPY_MODULES) for name, expr in self.exprs.items()}

    def to_record(self) -> dict[str, Any]:
        return {"functions": {name: compile_cache.function_source(fn) for name, fn in self._fns.items()}}

    @classmethod
    def from_record(cls, record: dict[str, Any], in_size: int) -> "CompiledUnit":
        self = cls.__new__(cls)
        self.in_size = self.out_size = in_size
        self.shapes = {}
        self._fns = {name: compile_cache.restore(record, name) for name in cls.FUNCTIONS}
        return self

    def _eval(self, name: str, a: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return _array(self._fns[name](a), a.shape)

    def forward(self, a: np.ndarray, params: Any = None, consts: Any = None) -> np.ndarray:
        return np.array(self._eval("value", a))

    def jacobian(self, a: np.ndarray, params: Any = None, consts: Any = None) -> np.ndarray:
        """``(N, in, in)``: diagonal."""
        first = self._eval("first", a).T  # (N, in)
        out = np.zeros((a.shape[1], self.in_size, self.in_size))
        index = np.arange(self.in_size)
        out[:, index, index] = first
        return out

    def apply_jacobian(self, a: np.ndarray, params: Any, tangent: np.ndarray) -> np.ndarray:
        return self._eval("first", a).T[:, :, None] * tangent

    def left_apply_jacobian(self, a: np.ndarray, params: Any, left: np.ndarray) -> np.ndarray:
        return left * self._eval("first", a).T[:, None, :]

    def vjp_sum(self, a: np.ndarray, params: Any, g: np.ndarray, consts: Any = None) -> tuple[np.ndarray, np.ndarray]:
        return g * self._eval("first", a), np.zeros(0)

    def vjp(self, a: np.ndarray, params: Any, g: np.ndarray, consts: Any = None) -> tuple[np.ndarray, np.ndarray]:
        return g * self._eval("first", a), np.zeros((0, a.shape[1]))

    def jet(self, h: np.ndarray, jac: np.ndarray, hess: np.ndarray, params: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from derivcheck.layers.base import elementwise_jet

        return elementwise_jet(self._eval("value", h), self._eval("first", h), self._eval("second", h), jac, hess)

    def jet_by_unit(self, h: np.ndarray, jac: np.ndarray, hess: np.ndarray, params: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The same jet on units-first arrays (see :meth:`CompiledProduct.jet_by_unit`),
        with one temporary per part: ``H' = f' H + f'' J J^T``."""
        first, second = self._eval("first", h), self._eval("second", h)
        new_jac = jac * first[..., None]
        new_hess = hess * first[..., None, None]
        scaled = jac * second[..., None]
        new_hess += scaled[..., :, None] * jac[..., None, :]
        return np.array(self._eval("value", h)), new_jac, new_hess


def product_term(cell: ProductCell) -> Any:
    """The derived term ``t(a, w)`` of a dense layer (SymPy, on the symbols ``a``, ``w``)."""
    return sp.sympify(cell.term(make_symbol("a"), make_symbol("w")), strict=True)  # safe: strict=True refuses strings; the term is code


def _source(fn: Any) -> str:
    """What identifies the maths of `fn` without importing SymPy (a warm run never does):
    its qualified name and its source (a seeded, different function has a different one)."""
    import inspect

    target = getattr(fn, "__func__", fn)
    try:
        text = inspect.getsource(target)
    except (OSError, TypeError):
        text = repr(getattr(target, "__code__", target))
    return f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', '')}:{text}"


def compile_product(cell: ProductCell, in_size: int, out_size: int, shapes: dict[str, tuple[int, ...]]) -> CompiledProduct:
    """The compiled product layer, from the compile cache when the same term was derived
    before (at any width: the entry is the term's)."""
    content = repr(("product", _source(cell.term)))
    return compile_cache.cached("product", content, lambda: CompiledProduct(cell, in_size, out_size, shapes), lambda record: CompiledProduct.from_record(record, cell, in_size, out_size, shapes))


def compile_unit(layer: Any, in_size: int) -> CompiledUnit:
    """The compiled unit of an elementwise, parameter-free layer (``sympy_forward`` of one symbol)."""

    def unit(z: Any) -> Any:
        return layer.sympy_forward([z], {})[0]

    content = repr(("unit", type(layer).__module__, type(layer).__qualname__, sorted(layer.options.items()), _source(layer.sympy_forward)))
    return compile_cache.cached("unit", content, lambda: CompiledUnit(unit, in_size), lambda record: CompiledUnit.from_record(record, in_size))
