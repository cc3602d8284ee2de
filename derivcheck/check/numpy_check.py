"""``check_numpy``: a hand-written numpy backward against finite differences of its forward.

Written for code as people write it:

- ``forward(*inputs) -> out`` with ``backward(dout, *inputs) -> grads``, or the convention
  of the best-known course assignments, ``forward(*inputs) -> (out, cache)`` with
  ``backward(dout, cache) -> grads`` (``cache=None`` detects it: a forward that returns a
  2-tuple is taken to return ``(out, cache)``);
- inputs may be arrays, or dicts and lists of arrays (a model's ``params``); integer
  arrays (labels), numbers and ``None`` pass through untouched;
- ``grads`` is one array, a tuple/list (one entry per input, or per floating-point input),
  or a dict matching a dict input; inputs the backward returns no gradient for are left
  out (and said so);
- a gradient whose shape differs from its input's only by broadcast dimensions (``(1, M)``
  for ``(M,)``, the classic bias gradient) is summed to the input's shape as autograd's
  ``sum_to_size`` would, and noted.

The rounding noise of numpy code is measured by re-running the backward at inputs moved
by one to two units in the last place (numpy has no operator hook to perturb each result;
the input perturbation randomises the rounding of everything downstream).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from derivcheck.compare import Tolerance
from derivcheck.errors import InvalidArgument, InvalidType
from derivcheck.values import EngineValue
from derivcheck.check.differences import directional, jacobian
from derivcheck.check.evidence import compare
from derivcheck.check.noise import SCALES, NoiseSamples, spread
from derivcheck.check.preserve import leaves_state_unchanged
from derivcheck.check.result import CheckResult, Finding
from derivcheck.check.taylor import SAFETY, skipped, taylor_test
from derivcheck.check.torch_check import CHECK_TOLERANCE, DIRECTIONS, EVIDENCE_THRESHOLD, MAX_COLUMNS, MAX_FULL, REDUCTION_ORDER, ROUNDING_SAMPLES, check_common
from derivcheck.check.tree import Path, flatten, path_name, unflatten

EPS = float(np.finfo(np.float64).eps)


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray)


@dataclass
class _Slot:
    name: str
    path: Path
    array: np.ndarray
    offset: int = 0

    @property
    def size(self) -> int:
        return int(self.array.size)

    @property
    def cols(self) -> slice:
        return slice(self.offset, self.offset + self.size)

    def label(self, j: int) -> str:
        index = np.unravel_index(j, self.array.shape) if self.array.shape else ()
        return self.name + (f"[{', '.join(str(int(i)) for i in index)}]" if index else "")


def _names(fn: Any, count: int) -> list[str]:
    try:
        params = [p for p in inspect.signature(fn).parameters.values()]
    except (TypeError, ValueError):
        params = []
    names = []
    for p in params:
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            break
        names.append(p.name)
    names = names[:count] + [f"inputs[{i}]" for i in range(len(names[:count]), count)]
    return names if len(set(names)) == len(names) else [f"inputs[{i}]" for i in range(count)]


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


@leaves_state_unchanged
def check_numpy(
    forward: Callable[..., Any],
    backward: Callable[..., Any] | None,
    *inputs: Any,
    cache: bool | None = None,
    name: str | None = None,
    max_full: int = MAX_FULL,
    directions: int = DIRECTIONS,
    seed: int = 0,
    taylor: bool = True,
    tolerance: Tolerance | None = None,
    rounding_samples: int = ROUNDING_SAMPLES,
) -> CheckResult:
    """Check a hand-written numpy backward against finite differences of its forward.

    **Arguments:**

    - `forward`: ``forward(*inputs) -> out`` (an array, or a tuple/list/dict of arrays), or
      ``-> (out, cache)`` (see `cache`).
    - `backward`: ``backward(dout, *inputs) -> grads``, or ``backward(dout, cache) -> grads``;
      ``dout`` has the structure and shapes of ``out``. ``None``: `forward` returns
      ``(loss, grads)`` itself, as ``softmax_loss(x, y) -> (loss, dx)`` or a model's
      ``loss(X, y) -> (loss, grads)`` do (the loss must be a scalar).
    - `inputs`: arrays, dicts or lists of arrays, and pass-through values.
    - `cache`: ``True``: forward returns ``(out, cache)``; ``False``: it returns ``out``;
      ``None`` (default): a returned 2-tuple is ``(out, cache)``.
    - `name`, `max_full`, `directions`, `seed`, `taylor`, `tolerance`,
      `rounding_samples`: as for :func:`~derivcheck.check.torch_check.check_torch`.

    **Returns:** a :class:`~derivcheck.check.result.CheckResult`.
    """
    check_common(1, "auto", max_full, directions, seed=seed, tolerance=tolerance, name=name, flags={"taylor": taylor})
    if isinstance(rounding_samples, bool) or not isinstance(rounding_samples, int) or not 0 <= rounding_samples <= 16:
        raise InvalidArgument(f"rounding_samples must be an integer in 0..16, got {rounding_samples!r}")
    if not callable(forward) or not (backward is None or callable(backward)):
        raise InvalidType("forward and backward must be callables (backward=None: forward returns (loss, grads))")
    if not inputs:
        raise InvalidArgument("check_numpy needs at least one input array")
    if cache not in (None, True, False):
        raise InvalidArgument(f"cache must be None, True or False, got {cache!r}")
    tolerance = tolerance or CHECK_TOLERANCE
    what = name or getattr(forward, "__qualname__", None) or "forward"
    arg_names = _names(forward, len(inputs))
    candidates: list[_Slot] = []
    passthrough: list[str] = []
    for path, leaf in flatten(tuple(inputs), is_leaf=_is_array):
        label = path_name(arg_names[path[0]], path[1:])
        if isinstance(leaf, np.ndarray) and leaf.dtype.kind == "c":
            raise InvalidType(f"{label} is a complex array: check_numpy checks real code; use check_torch for complex functions")
        if isinstance(leaf, np.ndarray) and leaf.dtype.kind == "f" and leaf.size:
            candidates.append(_Slot(label, path, leaf))
        elif leaf is not None:
            passthrough.append(f"{label} ({leaf.dtype} array)" if isinstance(leaf, np.ndarray) else f"{label} ({type(leaf).__name__})")
    if not candidates:
        got = type(inputs[0]).__name__ + (f" of dtype {inputs[0].dtype}" if isinstance(inputs[0], np.ndarray) else "")
        raise InvalidType(f"inputs[0] must be a floating-point numpy array (or a dict/list of them), got {got}; no input holds a non-empty floating-point array to differentiate")

    def call_forward(args: tuple[Any, ...]) -> Any:
        try:
            return forward(*args)
        except Exception as exc:
            raise InvalidArgument(f"calling forward on the inputs failed: {_short(exc)}") from exc

    raw0 = call_forward(tuple(inputs))
    value_and_grad = backward is None
    if value_and_grad and not (isinstance(raw0, (tuple, list)) and len(raw0) == 2 and np.size(raw0[0]) == 1):
        raise InvalidArgument(f"backward=None: forward must return (loss, grads) with a scalar loss, got {type(raw0).__name__}")
    uses_cache = (isinstance(raw0, tuple) and len(raw0) == 2) if cache is None else cache
    uses_cache = uses_cache and not value_and_grad
    if uses_cache and not (isinstance(raw0, tuple) and len(raw0) == 2):
        raise InvalidArgument(f"cache=True: forward must return (out, cache), got {type(raw0).__name__}")

    def run_forward(args: tuple[Any, ...]) -> tuple[Any, Any]:
        raw = call_forward(args)
        if value_and_grad:
            return np.asarray(raw[0], dtype=np.float64).reshape(()), raw[1]
        return (raw[0], raw[1]) if uses_cache else (raw, None)

    out0 = run_forward(tuple(inputs))[0] if value_and_grad else (raw0[0] if uses_cache else raw0)
    out_leaves = flatten(out0, is_leaf=_is_array)
    out_arrays = []
    for path, leaf in out_leaves:
        array = np.asarray(leaf)
        if array.dtype.kind not in "fiu" and array.dtype != bool:
            raise InvalidType(f"forward must return arrays (or a tuple/list/dict of them){' and a cache' if uses_cache else ''}; {path_name('out', path)} is {type(leaf).__name__}")
        out_arrays.append((path, array))
    out_shapes = [a.shape for _, a in out_arrays]
    out_sizes = [int(a.size) for _, a in out_arrays]
    m = int(sum(out_sizes))
    out_names = ["out" if _is_array(out0) or np.isscalar(out0) else path_name("out", p) for p, _ in out_arrays]

    def out_label(i: int) -> str:
        offset = 0
        for nm, shape, size in zip(out_names, out_shapes, out_sizes):
            if i < offset + size:
                index = np.unravel_index(i - offset, shape) if shape else ()
                return nm + (f"[{', '.join(str(int(k)) for k in index)}]" if index else "")
            offset += size
        return f"out#{i}"

    def flat_out(raw: Any) -> np.ndarray:
        leaves = flatten(raw, is_leaf=_is_array)
        if len(leaves) != len(out_arrays):
            raise InvalidArgument(f"forward returned {len(leaves)} outputs on another call, {len(out_arrays)} at first")
        return np.concatenate([np.asarray(leaf, dtype=np.float64).ravel() for _, leaf in leaves]) if leaves else np.zeros(0)

    def structured_dout(w: np.ndarray, dtype: Any) -> Any:
        parts, offset = {}, 0
        for (path, array), size in zip(out_arrays, out_sizes):
            part = w[offset : offset + size].reshape(array.shape).astype(array.dtype if array.dtype.kind == "f" else dtype)
            parts[path] = part
            offset += size
        return unflatten(out0, parts)

    notes: list[str] = []

    def call_backward(w: np.ndarray, args: tuple[Any, ...]) -> Any:
        if value_and_grad:
            return _scaled(run_forward(args)[1], float(w.reshape(-1)[0]))
        if uses_cache:
            _, fresh_cache = run_forward(args)
            first = (structured_dout(w, np.float64), copy.deepcopy(fresh_cache))
        else:
            first = (structured_dout(w, np.float64), *args)
        assert backward is not None
        try:
            return backward(*first)
        except Exception as exc:
            convention = "backward(dout, cache)" if uses_cache else "backward(dout, *inputs)"
            raise InvalidArgument(f"calling backward failed ({convention}): {_short(exc)}") from exc

    # which inputs does the backward return gradients for?
    rng = np.random.default_rng(seed)
    try:
        probe = call_backward(rng.standard_normal(m), tuple(inputs))
        matched = _match_gradients(probe, inputs, arg_names, candidates)
        for s in candidates:
            if s.path in matched and matched[s.path] is not None:
                _sum_to(np.asarray(matched[s.path]), s, {})
    except InvalidArgument as exc:
        second = raw0[1] if isinstance(raw0, tuple) and len(raw0) == 2 else None
        looks_like_output = _is_array(second) or (isinstance(second, (tuple, list)) and bool(second) and all(_is_array(v) for v in second))
        if uses_cache and cache is None and looks_like_output:  # the guess may be what went wrong: say so
            raise InvalidArgument(f"{exc}; forward returned a 2-tuple, taken as (out, cache): pass cache=False if it returns two outputs") from exc
        raise
    slots = [s for s in candidates if s.path in matched]
    unmatched = [s.name for s in candidates if s.path not in matched]
    if unmatched:
        notes.append("no gradient returned for " + ", ".join(unmatched) + ": not checked")
    if passthrough:
        notes.append("passed through, not differentiated: " + ", ".join(passthrough))
    offset = 0
    for s in slots:
        s.offset = offset
        offset += s.size
    n = offset
    user_dtype = "float32" if any(s.array.dtype == np.float32 for s in slots) else "float64"
    reshaped: dict[str, str] = {}

    def pullback_at(w: np.ndarray, args: tuple[Any, ...]) -> np.ndarray:
        grads = _match_gradients(call_backward(w, args), args, arg_names, candidates)
        parts = []
        for s in slots:
            g = grads.get(s.path)
            if g is None:
                raise InvalidArgument(f"backward returned no gradient for {s.name} on another call")
            parts.append(_sum_to(np.asarray(g), s, reshaped).astype(np.float64).ravel())
        return np.concatenate(parts)

    def pullback(w: np.ndarray) -> np.ndarray:
        return pullback_at(w, tuple(inputs))

    def rebuild(flat: np.ndarray, dtype: Any | None = np.float64) -> tuple[Any, ...]:
        replace = {s.path: flat[s.cols].reshape(s.array.shape).astype(dtype or s.array.dtype) for s in slots}
        return tuple(unflatten(tuple(inputs), replace))

    def f(flat: np.ndarray) -> np.ndarray:
        out, _ = run_forward(rebuild(flat))
        return flat_out(out)

    x0 = np.concatenate([s.array.astype(np.float64).ravel() for s in slots])
    f0 = f(x0)

    def ulp_runs(compute: Callable[[tuple[Any, ...], np.ndarray], np.ndarray], own_dtype: bool) -> NoiseSamples:
        """`compute` at inputs moved by one to four ``eps`` (times the run's scale, see
        :data:`~derivcheck.check.noise.SCALES`): in each input's own dtype, or in float64."""
        runs = NoiseSamples()
        for k in range(rounding_samples):
            scale = SCALES[k % len(SCALES)]
            noise_rng = np.random.default_rng(seed + 1 + k)
            moved = x0.copy()
            for s in slots:
                dtype = s.array.dtype if own_dtype else np.float64
                step = np.finfo(dtype).eps * scale * (1 + 3 * noise_rng.random(s.size)) * noise_rng.choice([-1.0, 1.0], s.size)
                moved[s.cols] = (x0[s.cols] * (1 + step)).astype(dtype)
            try:
                value = np.asarray(compute(rebuild(moved, None if own_dtype else np.float64), moved), dtype=np.float64)
            except Exception:  # noqa: BLE001 - a moved input the code cannot handle tells nothing
                continue
            runs.append(value)
            runs.scales.append(scale)
        return runs

    def backward_noise(compute: Callable[[tuple[Any, ...]], np.ndarray], base: np.ndarray) -> np.ndarray:
        """The rounding noise of the backward's `base` result. In float64: the spread over
        inputs moved by float64 ulps. In float32: the same code run on float64 inputs --
        numpy code is dtype-generic, so the difference is exactly the float32 rounding
        (moving float32 inputs by float32 ulps would change the function, not just its
        rounding, and bury a 1e-3 error); if the code cannot run in float64, the spread."""
        if user_dtype != "float64":
            try:
                twin = np.asarray(compute(rebuild(x0, np.float64)), dtype=np.float64)
                if twin.shape == base.shape:
                    with np.errstate(invalid="ignore"):
                        return np.where(np.isfinite(twin - base), np.abs(twin - base), 0.0)
            except Exception:  # noqa: BLE001 - not dtype-generic: fall back to the spread
                pass
        return spread(ulp_runs(lambda args, moved: compute(args), own_dtype=True), base)

    # the finite-difference forward runs in float64: its noise is float64 rounding
    f_runs = ulp_runs(lambda args, moved: f(moved), own_dtype=False)
    f_noise = spread(f_runs, f0)
    again = f(x0)
    with np.errstate(invalid="ignore"):
        differs = ~((again == f0) | (np.isnan(again) & np.isnan(f0)))
    if differs.any():
        result = CheckResult(what=what, quantities=[], dtype=user_dtype)
        result.findings.append(
            Finding(
                "deterministic forward",
                "nondeterministic",
                False,
                f"cannot check a non-deterministic forward by finite differences: two calls of {what} with the same inputs differ (by up to {float(np.nanmax(np.abs(again - f0))):.3g}); seed its randomness (np.random.default_rng(seed) inside forward) or check it in eval mode",
            )
        )
        result.notes.extend(notes)
        return result
    full = all(m * s.size <= max_full for s in slots) and n <= MAX_COLUMNS
    rtol = tolerance.rtol_for(user_dtype, "float64")
    result = CheckResult(what=what, quantities=[], mode="full" if full else "directional", dtype=user_dtype, tolerances={f"rtol {user_dtype} vs float64": rtol, "fd_safety": tolerance.fd_safety})
    result.reference = "finite differences of your forward in float64"
    repeated = _repeated_backward(pullback, m, user_dtype, seed)
    if repeated is not None:
        result.findings.append(repeated)
        if not repeated.ok:
            result.notes.extend(notes)
            return result
    fd_note = "Richardson central differences of your forward, float64"
    quantity_out = "out" if out_names == ["out"] else "outputs"
    # the size derivatives of this function have: its outputs' over its inputs' (>= 1)
    natural_scale = float(np.max(np.abs(f0[np.isfinite(f0)]), initial=0.0)) / max(1.0, float(np.max(np.abs(x0[np.isfinite(x0)]), initial=0.0)))
    kinks = np.zeros(n, dtype=bool)
    threshold = max(EVIDENCE_THRESHOLD, rtol)
    advice = "check at other points; if the forward is not accurate to float64 inside (a float32 array, a quantised value), make it compute in float64"
    if full:
        rows = np.stack([pullback(e) for e in np.eye(m)]) if m else np.zeros((0, n))
        noise = backward_noise(lambda args: np.stack([pullback_at(e, args) for e in np.eye(m)]), rows)
        fd = jacobian(f, x0, noise=f_noise, f0=f0)
        kinks = np.asarray(fd.kinks.any(axis=0) | fd.excluded.any(axis=0))
        for s in slots:
            cols = s.cols
            refs = {
                "backward": EngineValue(rows[:, cols], dtype=user_dtype, error_estimate=noise[:, cols]),
                "finite_diff": EngineValue(
                    fd.values[:, cols],
                    error_estimate=fd.errors[:, cols],
                    excluded=fd.excluded[:, cols],
                    excluded_reason="a jump or staircase inside the finite-difference stencil, or the stencil leaves the function's domain",
                    note=fd_note,
                ),
            }

            def entry_label(index: tuple[int, ...], s: _Slot = s) -> str:
                return f"d {out_label(index[0])}/d {s.label(index[1])}"

            result.quantities.append(
                compare(f"d {quantity_out}/d {s.name}", refs, tolerance=tolerance, kink_mask=fd.kinks[:, cols], label=entry_label, precision_scale=natural_scale, threshold=threshold, advice=advice)
            )
    else:
        U = rng.standard_normal((directions, m))
        V = rng.standard_normal((directions, n))
        pulled = np.stack([pullback(u) for u in U])
        grad_noise = backward_noise(lambda args: np.stack([pullback_at(u, args) for u in U]), pulled)

        def quantity(label: str, Vm: np.ndarray, d: Any = None) -> Any:
            d = d if d is not None else directional(f, x0, Vm, U, noise=f_noise, f0=f0)
            refs = {
                # entries' noise adds up in quadrature over the entries (independent roundings)
                "backward": EngineValue(np.einsum("dn,dn->d", pulled, Vm), dtype=user_dtype, error_estimate=np.sqrt(np.einsum("dn,dn->d", grad_noise**2, Vm**2))),
                "finite_diff": EngineValue(
                    d.values[0],
                    error_estimate=d.errors[0],
                    excluded=d.excluded[0],
                    excluded_reason="a jump or staircase inside the finite-difference stencil, or the stencil leaves the function's domain",
                    note=fd_note,
                ),
            }
            return compare(label, refs, tolerance=tolerance, kink_mask=d.kinks[0], label=lambda i: f"direction {i[0]}", precision_scale=natural_scale, threshold=threshold, advice=advice), d

        joint, fd = quantity("u^T J v (all inputs)", V)
        result.quantities.append(joint)
        result.notes.append(f"Jacobians above {max_full} entries: checked {directions} random directional derivatives u^T J v, each direction through all inputs jointly")
        if joint.verdict == "disagree" and len(slots) > 1:
            result.notes.append("the joint directional derivatives disagree: each input checked alone below")
            for s in slots:
                Vs = np.zeros_like(V)
                Vs[:, s.cols] = V[:, s.cols]
                result.quantities.append(quantity(f"u^T (d out/d {s.name}) v", Vs)[0])
        if fd.kinks.any() or fd.excluded.any():
            kinks[:] = True
    if taylor and m:
        w = rng.standard_normal(m)
        g = pullback(w)
        g_noise = backward_noise(lambda args: pullback_at(w, args), g)
        s_noise = max(float(spread(f_runs.map(lambda r: np.dot(w, r)), np.asarray(np.dot(w, f0)))), 10 * EPS * float(np.dot(np.abs(w), np.abs(f0))))
        targets: list[_Slot | None] = list(slots) if full else [None]
        for target in targets:
            label = target.name if target is not None else "all inputs"
            v = np.zeros(n)
            cols = target.cols if target is not None else slice(0, n)
            v[cols] = rng.standard_normal(cols.stop - cols.start)
            if target is None and kinks.any():
                result.taylor[label] = skipped(label, "the random direction crosses a kink or jump")
                continue
            v[kinks] = 0.0
            if not np.any(v):
                result.taylor[label] = skipped(label, "every coordinate sits at a kink or jump")
                continue
            bound = float(rtol * np.dot(np.abs(g), np.abs(v)) + SAFETY * np.sqrt(np.dot(g_noise**2, v**2)))
            result.taylor[label] = taylor_test(label, lambda z: float(np.dot(w, f(z))), x0, g, v, noise=s_noise, slope_bound=bound)
    # a zero output gradient must give zero input gradients
    zero = pullback(np.zeros(m)) if not value_and_grad else np.zeros(0)
    if np.any(zero[np.isfinite(zero)] != 0):
        worst = float(np.max(np.abs(zero[np.isfinite(zero)])))
        result.findings.append(
            Finding(
                "zero output gradient",
                "not multiplied by dout",
                False,
                f"with dout = 0 the backward returns non-zero gradients (max |grad| = {worst:.3g}): it is not multiplied by dout",
                measured=worst,
                bound=0.0,
            )
        )
    elif not value_and_grad:
        result.findings.append(Finding("zero output gradient", "zero", True, "dout = 0 gives zero gradients"))
    for s in slots:
        if s.name in reshaped:
            notes.append(reshaped[s.name])
    dtypes = {str(np.asarray(gr).dtype) for gr in _match_gradients(probe, inputs, arg_names, candidates).values() if gr is not None}
    if user_dtype == "float32" and "float64" in dtypes:
        notes.append("the backward returns float64 gradients for float32 inputs (compared as they are)")
    if uses_cache:
        notes.append("convention: forward -> (out, cache), backward(dout, cache)")
    if value_and_grad:
        notes.append("convention: forward -> (loss, grads)")
    result.notes.extend(notes)
    return result


def _repeated_backward(pullback: Callable[[np.ndarray], np.ndarray], m: int, dtype: str, seed: int) -> Finding | None:
    """The backward called three times with the same inputs and output gradient. numpy code
    is deterministic; results that differ by more than reductions in another order could
    explain (:data:`~derivcheck.check.torch_check.REDUCTION_ORDER` ``eps`` of the
    gradient's size) come from a wrong backward that depends on set or dict iteration
    order, or on state kept between calls: a failure, checked before anything else (its
    spread would otherwise widen every bound until everything agreed). ``None`` when the
    calls agree bit for bit."""
    if m == 0:
        return None
    w = np.random.default_rng(seed + 300).standard_normal(m)
    results = [pullback(w) for _ in range(3)]
    with np.errstate(invalid="ignore"):
        spreads = [np.where(np.isfinite(r - results[0]), np.abs(r - results[0]), 0.0) for r in results[1:]]
    nondet = float(max(np.max(d, initial=0.0) for d in spreads))
    if nondet == 0:
        return None
    scale = float(np.max(np.abs(results[0][np.isfinite(results[0])]), initial=0.0))
    eps = float(np.finfo(np.float32 if dtype == "float32" else np.float64).eps)
    allowed = max(REDUCTION_ORDER * eps, np.sqrt(eps)) * scale
    if nondet <= allowed:
        return Finding("nondeterminism", "nondeterministic", True, f"repeated backward calls differ by up to {nondet:.3g}, as summing in another order can", measured=nondet, bound=allowed)
    relative = nondet / scale if scale > 0 else float("inf")
    return Finding(
        "nondeterminism",
        "nondeterministic",
        False,
        f"your backward gives different answers on repeated calls ({relative:.2g} relative): three calls with the same inputs and dout differ by up to {nondet:.3g}, "
        f"beyond the {allowed:.3g} that summing in another order explains; a result that depends on set or dict iteration order (a graph traversal over a set), "
        "or state kept between calls",
        measured=nondet,
        bound=allowed,
    )


def _match_gradients(grads: Any, inputs: Sequence[Any], names: list[str], candidates: list[_Slot]) -> dict[Path, Any]:
    """Map what the backward returned onto input paths (see the module docstring)."""
    by_top: dict[int, list[_Slot]] = {}
    for s in candidates:
        by_top.setdefault(s.path[0], []).append(s)
    differentiable = sorted(by_top)
    out: dict[Path, Any] = {}

    def assign(top: int, value: Any) -> None:
        if value is None:
            return
        for s in by_top.get(top, []):
            node = value
            try:
                for key in s.path[1:]:
                    node = node[key]
            except (KeyError, IndexError, TypeError):
                raise InvalidArgument(f"backward's gradient for {names[top]} has no entry for {s.name}: it must mirror the structure of {names[top]}") from None
            out[s.path] = node

    if _is_array(grads) or np.isscalar(grads):
        if len(differentiable) == 1 and len(by_top[differentiable[0]]) == 1:
            out[by_top[differentiable[0]][0].path] = grads
            return out
        # loss(W, X, y, reg) -> (loss, dW): the one input of the gradient's shape
        same = [s for s in candidates if len(s.path) == 1 and s.array.shape == np.shape(grads)]
        if len(same) == 1:
            out[same[0].path] = grads
            return out
        raise InvalidArgument(
            f"backward returned one array of shape {np.shape(grads)}, but {len(candidates)} inputs are floating-point arrays ({', '.join(f'{s.name} {s.array.shape}' for s in candidates)}) and the shape does not tell which; return one gradient per input"
        )
    if isinstance(grads, dict):
        dict_inputs = [i for i in differentiable if isinstance(inputs[i], dict) and set(inputs[i]) >= set(grads)]
        if len(dict_inputs) == 1:
            assign(dict_inputs[0], grads)
            return {p: g for p, g in out.items()}
        raise InvalidArgument(f"backward returned a dict with keys {sorted(map(str, grads))}, which matches no single dict input")
    if isinstance(grads, (tuple, list)):
        if len(grads) == len(inputs):
            for i, value in enumerate(grads):
                assign(i, value)
            return out
        if len(grads) == len(differentiable):
            for i, value in zip(differentiable, grads):
                assign(i, value)
            return out
        raise InvalidArgument(f"backward must return {len(differentiable)} gradient(s), one per floating-point input ({', '.join(names[i] for i in differentiable)}), got {len(grads)}")
    raise InvalidArgument(f"backward must return an array, a tuple/list of arrays or a dict of arrays, got {type(grads).__name__}")


def _scaled(grads: Any, factor: float) -> Any:
    """`grads` (an array or a tuple/list/dict of them) times `factor`."""
    if isinstance(grads, dict):
        return {k: _scaled(v, factor) for k, v in grads.items()}
    if isinstance(grads, (tuple, list)):
        return type(grads)(_scaled(v, factor) for v in grads)
    return None if grads is None else np.asarray(grads) * factor


def _sum_to(g: np.ndarray, slot: _Slot, notes: dict[str, str]) -> np.ndarray:
    """`g` summed over broadcast dimensions to the slot's shape (noted), or an error."""
    shape = slot.array.shape
    if g.shape == shape:
        return g
    if g.size == slot.size and tuple(d for d in g.shape if d != 1) == tuple(d for d in shape if d != 1):
        notes[slot.name] = f"the gradient of {slot.name} has shape {g.shape}, its input {shape}: reshaped (they differ only by singleton dimensions)"
        return g.reshape(shape)
    try:
        if np.broadcast_shapes(shape, g.shape) == g.shape:
            lead = g.ndim - len(shape)
            summed = g.sum(axis=tuple(range(lead))) if lead else g
            axes = tuple(i for i, d in enumerate(shape) if d == 1 and summed.shape[i] != 1)
            summed = summed.sum(axis=axes, keepdims=True) if axes else summed
            notes[slot.name] = f"the gradient of {slot.name} has shape {g.shape}, its input {shape}: summed over the broadcast dimensions (like autograd's sum_to_size)"
            return summed.reshape(shape)
    except ValueError:
        pass
    raise InvalidArgument(f"backward's gradient for {slot.name} has shape {g.shape}, expected {shape} (the shape of {slot.name})")
