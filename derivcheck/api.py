"""Check your own derivative code: ``check_torch``, ``check_numpy``, ``check_operator``.

Each compares the derivatives your code produces with independent references and returns a
:class:`~derivcheck.check_result.CheckResult`; the ``assert_*`` twins raise
:class:`~derivcheck.check_result.DerivativeMismatch` (an ``AssertionError``) instead, so
they drop into any test suite.

References: finite differences of your *forward* in float64 (Richardson, with error
estimates and kink detection; see :mod:`derivcheck.user_fd`) -- even when your code runs
in float32 -- and, when you pass ``expr="..."``, SymPy's closed form. A Taylor test reports
the convergence order of the first-order remainder (2 for a right gradient, 1 for a wrong
one) without any tolerance. Above `max_full` Jacobian entries, random directional
derivatives ``u^T J v`` replace the full Jacobian, and the result says so.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from ._lazy import sympy as sp

from .check_result import CheckResult, DerivativeMismatch
from .compare import Tolerance, compare_quantity
from .errors import InvalidArgument, InvalidType
from .expr import NUMPY_MODULES, make_symbol, parse_expression
from .user_fd import directional, jacobian, second_directional, taylor_orders
from .values import EngineValue

MAX_FULL = 4096
"""Default largest Jacobian (entries, per input) checked in full."""

DIRECTIONS = 4
REFERENCES = ("auto", "finite_diff", "symbolic")


# -- argument checking ---------------------------------------------------------------------


def _check_common(order: int, reference: str, max_full: int, directions: int) -> None:
    if isinstance(order, bool) or order not in (1, 2):
        raise InvalidArgument(f"order must be 1 or 2, got {order!r}")
    if reference not in REFERENCES:
        raise InvalidArgument(f"reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
    if isinstance(max_full, bool) or not isinstance(max_full, int) or max_full < 1:
        raise InvalidArgument(f"max_full must be a positive integer, got {max_full!r}")
    if isinstance(directions, bool) or not isinstance(directions, int) or not 1 <= directions <= 64:
        raise InvalidArgument(f"directions must be an integer in 1..64, got {directions!r}")


def _torch_inputs(inputs: Sequence[Any]) -> list[Any]:
    import torch

    if not inputs:
        raise InvalidArgument("check_torch needs at least one input tensor")
    out = []
    for i, value in enumerate(inputs):
        if not isinstance(value, torch.Tensor):
            raise InvalidType(f"inputs[{i}] must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise InvalidType(f"inputs[{i}] must be a floating-point tensor, got dtype {value.dtype}")
        out.append(value.detach())
    return out


def _dtype_name(dtype: Any) -> str:
    text = str(dtype).replace("torch.", "")
    return text if text in ("float64", "float32") else "float32"


# -- check_torch ---------------------------------------------------------------------------


def check_torch(
    fn: Callable[..., Any],
    *inputs: Any,
    order: int = 1,
    reference: str = "auto",
    expr: str | None = None,
    params: bool = True,
    max_full: int = MAX_FULL,
    directions: int = DIRECTIONS,
    seed: int = 0,
    taylor: bool = True,
    tolerance: Tolerance | None = None,
) -> CheckResult:
    """Check the autograd derivatives of `fn` at `inputs`.

    **Arguments:**

    - `fn`: a callable on tensors, or an ``nn.Module`` (its parameters are checked too,
      unless ``params=False``). Its output may have any shape.
    - `inputs`: floating-point tensors; every one is differentiated.
    - `order`: 1 checks Jacobians; 2 also checks second derivatives of ``w . fn(...)`` (a
      seeded random ``w``) through ``create_graph=True``.
    - `reference`: ``"auto"`` (finite differences, plus SymPy when `expr` is given),
      ``"finite_diff"`` or ``"symbolic"`` (requires `expr`).
    - `expr`: for a single-input elementwise `fn`, its formula in ``x`` (e.g.
      ``"log(1 + exp(x))"``); SymPy derives the reference derivatives from it.
    - `max_full`: largest Jacobian checked entry by entry; above it, `directions` random
      directional derivatives ``u^T J v`` are checked instead.
    - `seed`: seeds every random direction.
    - `taylor`: also run the tolerance-free Taylor test (first order).

    **Returns:** a :class:`CheckResult`; ``result.ok`` is the verdict.
    """
    import torch

    _check_common(order, reference, max_full, directions)
    if not callable(fn):
        raise InvalidType(f"fn must be callable (a function or an nn.Module), got {type(fn).__name__}")
    tensors = _torch_inputs(inputs)
    if (reference == "symbolic" or expr is not None) and (len(tensors) != 1):
        raise InvalidArgument("expr= describes an elementwise function of a single input x; got " + f"{len(tensors)} inputs")
    if reference == "symbolic" and expr is None:
        raise InvalidArgument("reference='symbolic' needs expr='...' (the function's formula in x)")
    tolerance = tolerance or Tolerance()
    module_params: list[tuple[str, Any]] = []
    if isinstance(fn, torch.nn.Module) and params:
        module_params = [(n, p) for n, p in fn.named_parameters() if p.requires_grad and p.is_floating_point()]
    user_dtype = _dtype_name(tensors[0].dtype)
    names = [f"inputs[{i}]" for i in range(len(tensors))] + [f"param {n}" for n, _ in module_params]
    values = [t for t in tensors] + [p.detach() for _, p in module_params]

    def call(*args: Any, module_state: dict | None = None) -> Any:
        if module_params and module_state is not None:
            return torch.func.functional_call(fn, module_state, args)
        return fn(*args)

    # -- autograd (the code under test), in the user's dtype
    leaves = [v.clone().requires_grad_(True) for v in values]

    def run(leaves_: list[Any]) -> Any:
        state = {n: leaf for (n, _), leaf in zip(module_params, leaves_[len(tensors) :])} if module_params else None
        out = call(*leaves_[: len(tensors)], module_state=state)
        if not isinstance(out, torch.Tensor):
            raise InvalidType(f"fn must return a tensor, got {type(out).__name__}")
        return out

    try:
        out = run(leaves)
    except (InvalidType, InvalidArgument):
        raise
    except Exception as exc:
        raise InvalidArgument(f"calling fn on the inputs failed: {type(exc).__name__}: {exc}") from None
    m = out.numel()
    sizes = [v.numel() for v in values]
    full = all(m * n <= max_full for n in sizes)
    rng = np.random.default_rng(seed)

    # -- float64 forward for finite differences (a copy of the module in float64)
    fd_fn, fd_dtype, fd_note = _float64_forward(fn, tensors, module_params, call)

    def forward_flat(flat: np.ndarray) -> np.ndarray:
        parts = _split(flat, values)
        args = [torch.as_tensor(p, dtype=fd_dtype) for p in parts]
        with torch.no_grad():
            return fd_fn(args).detach().to(torch.float64).numpy(force=True).ravel()

    x0 = np.concatenate([v.detach().to(torch.float64).numpy(force=True).ravel() for v in values])
    offsets = np.cumsum([0] + sizes)
    results = []
    if full:
        rows = []
        for i in range(m):
            grads = torch.autograd.grad(out.reshape(-1)[i], leaves, retain_graph=True, allow_unused=True)
            rows.append(np.concatenate([_np(g, v) for g, v in zip(grads, values)]))
        auto_jac = np.stack(rows) if rows else np.zeros((0, x0.size))
        fd = jacobian(forward_flat, x0)
        for k, name in enumerate(names):
            cols = slice(offsets[k], offsets[k + 1])
            shape = (m, sizes[k])
            label = _jacobian_label(out.shape, values[k].shape)
            refs = {
                "autograd": EngineValue(auto_jac[:, cols].reshape(shape), dtype=user_dtype),
                "finite_diff": EngineValue(
                    fd.values[:, cols].reshape(shape),
                    dtype=_dtype_name(fd_dtype),
                    error_estimate=fd.errors[:, cols].reshape(shape),
                    note=fd_note,
                ),
            }
            kink = fd.kinks[:, cols].reshape(shape)
            if expr is not None:
                refs["symbolic"] = EngineValue(_symbolic_jacobian(expr, values[0]), note=f"SymPy: d/dx of {expr}")
                if reference == "symbolic":
                    refs.pop("finite_diff")
            results.append(compare_quantity(f"d out/d {name}", refs, tolerance=tolerance, kink_mask=kink if kink.any() else None, label=label))
    else:
        u = rng.standard_normal((directions, m))
        for k, name in enumerate(names):
            v_local = rng.standard_normal((directions, sizes[k]))
            v_full = np.zeros((directions, x0.size))
            v_full[:, offsets[k] : offsets[k + 1]] = v_local
            auto = []
            for d in range(directions):
                weight = torch.as_tensor(u[d], dtype=out.dtype, device=out.device).reshape(out.shape)
                grads = torch.autograd.grad((out * weight).sum(), leaves[k], retain_graph=True, allow_unused=True)
                auto.append(float(np.dot(_np(grads[0], values[k]), v_local[d])))
            fd = directional(forward_flat, x0, v_full)
            fd_values = np.array([float(np.dot(u[d], fd.values[:, d])) for d in range(directions)])
            fd_errors = np.array([float(np.dot(np.abs(u[d]), fd.errors[:, d])) for d in range(directions)])
            kink = fd.kinks.any(axis=0)
            refs = {
                "autograd": EngineValue(np.array(auto), dtype=user_dtype),
                "finite_diff": EngineValue(fd_values, dtype=_dtype_name(fd_dtype), error_estimate=fd_errors, note=fd_note),
            }
            results.append(
                compare_quantity(f"u^T (d out/d {name}) v", refs, tolerance=tolerance, kink_mask=kink if kink.any() else None, label=lambda i: f"direction {i[0]}")
            )
    result = CheckResult(
        what=_describe(fn),
        quantities=results,
        mode="full" if full else "directional",
        dtype=user_dtype,
        tolerances={f"rtol {user_dtype} vs float64": tolerance.rtol_for(user_dtype, "float64"), "fd_safety": tolerance.fd_safety},
    )
    if fd_dtype != torch.float64:
        result.notes.append(f"finite differences ran in {_dtype_name(fd_dtype)}: the function failed in float64 ({fd_note})")
    if not full:
        result.notes.append(f"Jacobians above {max_full} entries: checked {directions} random directional derivatives u^T J v per input (seed {seed})")

    weights = rng.standard_normal(m)
    weight_t = torch.as_tensor(weights, dtype=out.dtype, device=out.device).reshape(out.shape)

    def scalar(flat: np.ndarray) -> float:
        return float(np.dot(weights, forward_flat(flat)))

    if taylor or order == 2:
        grads = torch.autograd.grad((out * weight_t).sum(), leaves, retain_graph=True, create_graph=order == 2, allow_unused=True)
        gradient = np.concatenate([_np(g, v) for g, v in zip(grads, values)])
    if taylor:
        for k, name in enumerate(names):
            v = np.zeros_like(x0)
            v[offsets[k] : offsets[k + 1]] = rng.standard_normal(sizes[k])
            result.taylor[name] = taylor_orders(scalar, x0, gradient, v)
    if order == 2:
        results.append(_second_order(grads, leaves, values, names, offsets, sizes, x0, scalar, rng, directions, user_dtype, tolerance))
    return result


def _second_order(grads, leaves, values, names, offsets, sizes, x0, scalar, rng, directions, user_dtype, tolerance):
    """``u^T H v`` of ``w . out`` by double backward vs the four-point stencil."""
    import torch

    flat_grad = torch.cat([(g if g is not None else torch.zeros_like(l)).reshape(-1) for g, l in zip(grads, leaves)])
    auto, ref, err = [], [], []
    for _ in range(directions):
        u = rng.standard_normal(x0.size)
        v = rng.standard_normal(x0.size)
        u_t = torch.as_tensor(u, dtype=flat_grad.dtype, device=flat_grad.device)
        if not flat_grad.requires_grad:
            hv = np.zeros(x0.size)
        else:
            second = torch.autograd.grad((flat_grad * u_t).sum(), leaves, retain_graph=True, allow_unused=True)
            hv = np.concatenate([_np(g, val) for g, val in zip(second, values)])
        auto.append(float(np.dot(hv, v)))
        value, error = second_directional(scalar, x0, u, v)
        ref.append(value)
        err.append(error)
    refs = {
        "autograd (create_graph)": EngineValue(np.array(auto), dtype=user_dtype),
        "finite_diff": EngineValue(np.array(ref), error_estimate=np.array(err), note="four-point mixed stencil, float64"),
    }
    return compare_quantity("u^T (d2 w.out/d all^2) v", refs, tolerance=tolerance, label=lambda i: f"direction {i[0]}")


def _np(grad: Any, like: Any) -> np.ndarray:
    import torch

    if grad is None:
        return np.zeros(like.numel())
    return grad.detach().to(torch.float64).numpy(force=True).ravel()


def _split(flat: np.ndarray, like: Sequence[Any]) -> list[np.ndarray]:
    """Cut a flat vector into arrays shaped like `like` (tensors or numpy arrays)."""
    parts, offset = [], 0
    for v in like:
        shape = tuple(v.shape)
        size = int(np.prod(shape))
        parts.append(flat[offset : offset + size].reshape(shape))
        offset += size
    return parts


def _float64_forward(fn: Any, tensors: list[Any], module_params: list[tuple[str, Any]], call: Callable[..., Any]) -> tuple[Callable[[list[Any]], Any], Any, str]:
    """A forward in float64 (a float64 copy of a module); falls back to the user's dtype."""
    import torch

    n_inputs = len(tensors)
    target = fn
    if isinstance(fn, torch.nn.Module):
        try:
            target = copy.deepcopy(fn).to(torch.float64)
        except Exception:  # a module that cannot be copied: use it as is
            target = fn

    def forward(args: list[Any]) -> Any:
        if module_params:
            state = {n: a for (n, _), a in zip(module_params, args[n_inputs:])}
            return torch.func.functional_call(target, state, tuple(args[:n_inputs]))
        return target(*args[:n_inputs])

    try:
        with torch.no_grad():
            probe = [t.to(torch.float64) for t in tensors] + [p.detach().to(torch.float64) for _, p in module_params]
            forward(probe)
        return forward, torch.float64, "Richardson central differences of the forward, float64"
    except Exception as exc:
        dtype = tensors[0].dtype
        return forward, dtype, f"float64 forward failed with {type(exc).__name__}; differences in {_dtype_name(dtype)}"


def _symbolic_jacobian(text: str, x: Any) -> np.ndarray:
    """Diagonal Jacobian ``(n, n)`` of an elementwise formula in ``x``, derived by SymPy."""
    import torch

    expression = parse_expression(text, ["x"], what="expr")
    derivative = sp.diff(expression, make_symbol("x"))
    fn = sp.lambdify([make_symbol("x")], derivative, modules=NUMPY_MODULES, cse=True)
    flat = x.detach().to(torch.float64).numpy(force=True).ravel()
    with np.errstate(all="ignore"):
        values = np.broadcast_to(np.asarray(fn(flat), dtype=float), flat.shape)
    return np.diag(values)


def _jacobian_label(out_shape: Any, in_shape: Any) -> Callable[[tuple[int, ...]], str]:
    def label(index: tuple[int, ...]) -> str:
        i, j = index
        o = np.unravel_index(i, tuple(out_shape)) if len(tuple(out_shape)) else ()
        n = np.unravel_index(j, tuple(in_shape)) if len(tuple(in_shape)) else ()
        out_part = f"out{list(map(int, o))}" if o else "out"
        in_part = f"in{list(map(int, n))}" if n else "in"
        return f"d {out_part}/d {in_part}"

    return label


def _describe(fn: Any) -> str:
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return f"{type(fn).__name__}" if hasattr(fn, "named_parameters") else str(name)


# -- check_numpy ---------------------------------------------------------------------------


def check_numpy(
    forward: Callable[..., Any],
    backward: Callable[..., Any],
    *inputs: Any,
    max_full: int = MAX_FULL,
    directions: int = DIRECTIONS,
    seed: int = 0,
    taylor: bool = True,
    tolerance: Tolerance | None = None,
) -> CheckResult:
    """Check a hand-written numpy backward against finite differences of its forward.

    **Arguments:**

    - `forward`: ``forward(*inputs) -> output`` (an array of any shape).
    - `backward`: ``backward(grad_output, *inputs) -> tuple of input gradients`` (one per
      input, each shaped like its input; a single array is accepted for one input).
    - `inputs`: floating-point numpy arrays.

    The Jacobian rows come from `backward` applied to one-hot output gradients (or, above
    `max_full` entries, random ``u^T J v``). Returns a :class:`CheckResult`.
    """
    _check_common(1, "auto", max_full, directions)
    if not callable(forward) or not callable(backward):
        raise InvalidType("forward and backward must be callables")
    if not inputs:
        raise InvalidArgument("check_numpy needs at least one input array")
    arrays = []
    for i, value in enumerate(inputs):
        if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
            raise InvalidType(f"inputs[{i}] must be a floating-point numpy array, got {type(value).__name__}" + (f" of dtype {value.dtype}" if isinstance(value, np.ndarray) else ""))
        arrays.append(value)
    tolerance = tolerance or Tolerance()
    user_dtype = "float64" if arrays[0].dtype == np.float64 else "float32"
    try:
        out = np.asarray(forward(*arrays))
    except Exception as exc:
        raise InvalidArgument(f"calling forward on the inputs failed: {type(exc).__name__}: {exc}") from None
    m = out.size
    sizes = [a.size for a in arrays]
    offsets = np.cumsum([0] + sizes)

    def pullback(grad_out: np.ndarray) -> list[np.ndarray]:
        grads = backward(grad_out.reshape(out.shape).astype(out.dtype), *arrays)
        if isinstance(grads, np.ndarray):
            grads = (grads,)
        grads = list(grads)
        if len(grads) != len(arrays):
            raise InvalidArgument(f"backward must return {len(arrays)} gradient(s), one per input, got {len(grads)}")
        for i, (g, a) in enumerate(zip(grads, arrays)):
            if np.shape(g) != a.shape:
                raise InvalidArgument(f"backward's gradient {i} has shape {np.shape(g)}, expected {a.shape} (the shape of inputs[{i}])")
        return [np.asarray(g, dtype=np.float64).ravel() for g in grads]

    def forward_flat(flat: np.ndarray) -> np.ndarray:
        parts = _split(flat, arrays)
        return np.asarray(forward(*parts), dtype=np.float64).ravel()

    x0 = np.concatenate([a.astype(np.float64).ravel() for a in arrays])
    rng = np.random.default_rng(seed)
    full = all(m * n <= max_full for n in sizes)
    results = []
    if full:
        rows = []
        for i in range(m):
            seed_vec = np.zeros(m)
            seed_vec[i] = 1.0
            rows.append(np.concatenate(pullback(seed_vec)))
        manual = np.stack(rows)
        fd = jacobian(forward_flat, x0)
        for k in range(len(arrays)):
            cols = slice(offsets[k], offsets[k + 1])
            shape = (m, sizes[k])
            refs = {
                "backward": EngineValue(manual[:, cols].reshape(shape), dtype=user_dtype),
                "finite_diff": EngineValue(fd.values[:, cols].reshape(shape), error_estimate=fd.errors[:, cols].reshape(shape), note="Richardson central differences of forward, float64"),
            }
            kink = fd.kinks[:, cols].reshape(shape)
            results.append(compare_quantity(f"d out/d inputs[{k}]", refs, tolerance=tolerance, kink_mask=kink if kink.any() else None, label=_jacobian_label(out.shape, arrays[k].shape)))
    else:
        u = rng.standard_normal((directions, m))
        pulled = [pullback(u[d]) for d in range(directions)]
        for k in range(len(arrays)):
            v_local = rng.standard_normal((directions, sizes[k]))
            v_full = np.zeros((directions, x0.size))
            v_full[:, offsets[k] : offsets[k + 1]] = v_local
            fd = directional(forward_flat, x0, v_full)
            refs = {
                "backward": EngineValue(np.array([float(np.dot(pulled[d][k], v_local[d])) for d in range(directions)]), dtype=user_dtype),
                "finite_diff": EngineValue(
                    np.array([float(np.dot(u[d], fd.values[:, d])) for d in range(directions)]),
                    error_estimate=np.array([float(np.dot(np.abs(u[d]), fd.errors[:, d])) for d in range(directions)]),
                ),
            }
            kink = fd.kinks.any(axis=0)
            results.append(compare_quantity(f"u^T (d out/d inputs[{k}]) v", refs, tolerance=tolerance, kink_mask=kink if kink.any() else None, label=lambda i: f"direction {i[0]}"))
    result = CheckResult(
        what=getattr(forward, "__qualname__", "forward"),
        quantities=results,
        mode="full" if full else "directional",
        dtype=user_dtype,
        tolerances={f"rtol {user_dtype} vs float64": tolerance.rtol_for(user_dtype, "float64"), "fd_safety": tolerance.fd_safety},
    )
    if not full:
        result.notes.append(f"Jacobians above {max_full} entries: checked {directions} random directional derivatives u^T J v per input (seed {seed})")
    if taylor:
        weights = rng.standard_normal(m)
        gradient = np.concatenate(pullback(weights))
        for k in range(len(arrays)):
            v = np.zeros_like(x0)
            v[offsets[k] : offsets[k + 1]] = rng.standard_normal(sizes[k])
            result.taylor[f"inputs[{k}]"] = taylor_orders(lambda z: float(np.dot(weights, forward_flat(z))), x0, gradient, v)
    return result


# -- assert twins --------------------------------------------------------------------------


def assert_torch(fn: Callable[..., Any], *inputs: Any, **options: Any) -> CheckResult:
    """:func:`check_torch`, raising :class:`DerivativeMismatch` unless ``ok``."""
    result = check_torch(fn, *inputs, **options)
    if not result.ok:
        raise DerivativeMismatch(result)
    return result


def assert_numpy(forward: Callable[..., Any], backward: Callable[..., Any], *inputs: Any, **options: Any) -> CheckResult:
    """:func:`check_numpy`, raising :class:`DerivativeMismatch` unless ``ok``."""
    result = check_numpy(forward, backward, *inputs, **options)
    if not result.ok:
        raise DerivativeMismatch(result)
    return result




# -- check_operator ------------------------------------------------------------------------


def _manufactured_fields(variables: Sequence[str], fields: Sequence[str], count: int, rng: np.random.Generator) -> list[dict[str, str]]:
    """Seeded smooth closed forms, one formula per field, for each of `count` fields:
    ``sin(a.x + b) * exp(c.x / 2) + sum d_i x_i^2 + e`` with random coefficients."""
    out = []
    for _ in range(count):
        formulas = {}
        for _name in fields:
            a, c, d = rng.uniform(0.5, 2.0, len(variables)), rng.uniform(-1.0, 1.0, len(variables)), rng.uniform(-1.0, 1.0, len(variables))
            b, e = rng.uniform(-1.0, 1.0, 2)
            lin_a = " + ".join(f"{ai:.6f}*{v}" for ai, v in zip(a, variables))
            lin_c = " + ".join(f"{ci:.6f}*{v}" for ci, v in zip(c, variables))
            quad = " + ".join(f"{di:.6f}*{v}**2" for di, v in zip(d, variables))
            formulas[_name] = f"sin({lin_a} + {b:.6f}) * exp(({lin_c})/2) + {quad} + {e:.6f}"
        out.append(formulas)
    return out


class _UserOperator:
    """An engine that evaluates the user's operator (``op_fn(u, x)``) as the residual."""

    name = "user"

    def __init__(self, op_fn: Callable[..., Any], dtype: Any):
        self.op_fn = op_fn
        self.dtype = dtype

    def compute(self, problem: Any, quantities: Sequence[Any]) -> dict[str, Any]:
        import torch

        from .evaluate import Evaluator
        from .values import Skipped

        spec = problem.spec
        if problem.kind == "network":
            model = problem.network.torch_model(problem.params, self.dtype)

        def field(index: int, name: str) -> Callable[[Any], Any]:
            def u(x: Any) -> Any:
                if problem.kind == "network":
                    return model(x)[:, index]
                env = {s: x[:, i] for i, s in enumerate(spec.variable_symbols)}
                return Evaluator("torch", env, {}, None, like=x[:, 0])(problem.solution_exprs()[name])

            return u

        callables = {name: field(i, name) for i, name in enumerate(spec.fields)}
        x = torch.tensor(problem.points, dtype=self.dtype, requires_grad=True)
        result: dict[str, Any] = {}
        for q in quantities:
            if q.kind != "residual":
                result[q.name] = Skipped("the user's operator gives the operator's value only")
                continue
            value = self.op_fn(callables[spec.fields[0]] if len(spec.fields) == 1 else callables, x)
            if not isinstance(value, torch.Tensor):
                raise InvalidType(f"op_fn must return a tensor, got {type(value).__name__}")
            if value.numel() != problem.n_points:
                raise InvalidArgument(f"op_fn must return one value per point ({problem.n_points}), got shape {tuple(value.shape)}")
            result[q.name] = EngineValue(value.detach().to(torch.float64).numpy(force=True).reshape(-1).copy(), dtype=_dtype_name(self.dtype), note="your operator")
        return result


def check_operator(
    op_fn: Callable[..., Any],
    operator: str,
    variables: Sequence[str],
    *,
    constants: Mapping[str, float] | None = None,
    domain: Mapping[str, Sequence[float]] | None = None,
    fields: Sequence[str] = ("u",),
    points: int = 32,
    manufactured: int = 2,
    networks: int = 2,
    seed: int = 0,
    dtype: str = "float64",
    tolerance: Tolerance | None = None,
) -> CheckResult:
    """Check a PDE operator implemented with torch autograd against SymPy.

    **Arguments:**

    - `op_fn`: ``op_fn(u, x) -> (P,)`` where ``x`` is a ``(P, d)`` tensor with
      ``requires_grad=True`` (columns in the order of `variables`) and ``u`` is a callable
      field, ``u(x) -> (P,)`` (a dict of such callables when there are several `fields`).
    - `operator`: the operator in case-file syntax, e.g. ``"laplacian(u) + k**2*u"``.
    - `variables`, `constants`, `fields`: names used by `operator`; a variable named ``t``
      is time (no spatial operators act on it).
    - `domain`: ``{variable: [low, high]}`` (default ``[-1, 1]`` for each).
    - `points`, `manufactured`, `networks`, `seed`: how many random points, seeded smooth
      manufactured fields and seeded random tanh networks ``[d, 8, 8, len(fields)]`` to try;
      an operator that is right on one field only is caught on another.

    **Returns:** a :class:`CheckResult` with one quantity per field tried; the engines are
    ``symbolic`` (SymPy), ``torch`` and ``finite_diff`` (derivcheck's own) and ``user``.
    """
    import torch

    from .case import case_from_dict
    from .engines import make_engines
    from .runner import run_field_problem

    if not callable(op_fn):
        raise InvalidType(f"op_fn must be callable, got {type(op_fn).__name__}")
    if not isinstance(operator, str):
        raise InvalidType(f"operator must be a string in case-file syntax, got {type(operator).__name__}")
    if isinstance(variables, str) or not isinstance(variables, Sequence) or not variables:
        raise InvalidType(f"variables must be a non-empty list of names, got {variables!r}")
    for name, value in (("points", points), ("manufactured", manufactured), ("networks", networks)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (name == "points" and value < 1):
            raise InvalidArgument(f"{name} must be a non-negative integer (points >= 1), got {value!r}")
    if manufactured + networks < 1:
        raise InvalidArgument("try at least one field: manufactured + networks must be >= 1")
    if dtype not in ("float64", "float32"):
        raise InvalidArgument(f"dtype must be float64 or float32, got {dtype!r}")
    tolerance = tolerance or Tolerance()
    domain = dict(domain or {v: [-1.0, 1.0] for v in variables})
    rng = np.random.default_rng(seed)
    base = {
        "variables": list(variables),
        "fields": list(fields),
        "constants": dict(constants or {}),
        "pde": operator,
        "sources": [],
        "domain": {k: list(map(float, v)) for k, v in domain.items()},
        "points": {"count": points},
        "seed": seed,
        "dtype": dtype,
    }
    torch_dtype = torch.float64 if dtype == "float64" else torch.float32
    quantities = []
    tried = [("manufactured field", f, i) for i, f in enumerate(_manufactured_fields(list(variables), list(fields), manufactured, rng))]
    tried += [("tanh network", None, i) for i in range(networks)]
    for kind, formulas, index in tried:
        net_seed = index
        table = dict(base)
        if formulas is not None:
            table.update(solution=formulas if len(fields) > 1 else formulas[fields[0]], check=["exact"])
        else:
            table.update(check=["network"], network={"widths": [len(variables), 8, 8, len(fields)]}, seed=seed + 1 + net_seed)
        try:
            case = case_from_dict(table, file="check_operator")
        except InvalidArgument as exc:
            raise InvalidArgument(str(exc).replace("check_operator: key 'pde'", "operator")) from None
        (problem,) = case.problems
        engines = make_engines(["symbolic", "finite_diff", "torch"]) + [_UserOperator(op_fn, torch_dtype)]
        result = run_field_problem(problem, engines, ["residual"], tolerance=tolerance, zero_residual=False)  # type: ignore[arg-type]
        if result.errors:
            user_errors = [e for e in result.errors if e.startswith("engine user")]
            if user_errors:
                raise InvalidArgument(f"op_fn failed on {kind} {index + 1}: {user_errors[0]}")
            raise RuntimeError("; ".join(result.errors))
        (q,) = result.quantities
        q.name = f"{operator} on {kind} {index + 1}"
        quantities.append(q)
    return CheckResult(
        what=f"operator {operator!r}",
        quantities=quantities,
        dtype=dtype,
        tolerances={f"rtol {dtype} vs float64": tolerance.rtol_for(dtype, "float64"), "fd_safety": tolerance.fd_safety},
        notes=[f"{points} points per field; fields tried: {manufactured} manufactured, {networks} tanh networks (seed {seed})"],
    )


def assert_operator(op_fn: Callable[..., Any], operator: str, variables: Sequence[str], **options: Any) -> CheckResult:
    """:func:`check_operator`, raising :class:`DerivativeMismatch` unless ``ok``."""
    result = check_operator(op_fn, operator, variables, **options)
    if not result.ok:
        raise DerivativeMismatch(result)
    return result
