"""``check_torch``: the derivatives of your own torch code, against references, with a
noise model behind every verdict.

What runs (each piece is evidence with its own bound; see :mod:`derivcheck.check.result`):

1. Your function in your dtype, reverse mode (``autograd``): the full Jacobian (one backward
   per output coordinate), or above `max_full` entries random ``u^T J v``.
2. Forward mode (``forward_ad``: dual tensors, so a custom Function's ``jvp`` runs) where
   your function supports it.
3. References: Richardson finite differences of your *forward* in float64 (a float64 copy
   of a module; complex128 for complex tensors), with per-entry error estimates, kink, jump
   and domain flags (:mod:`derivcheck.check.differences`); SymPy's derivative when `expr`
   is given.
4. The rounding noise of 1, 2 and of the forward, measured (:mod:`derivcheck.check.noise`):
   tolerances widen exactly where your computation cancels or saturates, and nowhere else.
5. The Taylor test (:mod:`derivcheck.check.taylor`), properties gradcheck checks
   (:mod:`derivcheck.check.torch_properties`), nondeterminism, and for ``order=2`` the
   double backward (``create_graph=True``) against a four-point stencil.

Random forwards (dropout) are checked with torch's RNG re-seeded before every call, so the
forward is one fixed function; a forward that is random anyway is refused with the reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from derivcheck._lazy import sympy as sp
from derivcheck.compare import QuantityResult, Tolerance
from derivcheck.errors import InvalidArgument, InvalidType
from derivcheck.expr import NUMPY_MODULES, make_symbol, parse_expression
from derivcheck.values import EngineValue
from derivcheck.check.differences import Differences, directional, jacobian, second_directional
from derivcheck.check.evidence import compare
from derivcheck.check.noise import EPS_BY_NAME, NoiseSamples, magnitude_floor, noisy_runs, observed, observed_sizes, spread
from derivcheck.check.preserve import leaves_state_unchanged
from derivcheck.check.result import CheckResult, Finding
from derivcheck.check.taylor import BATCHED_ENTRIES, SAFETY, STEPS, skipped, taylor_test
from derivcheck.check.torch_autograd import Graph, flat_grads, forward_jacobian, forward_mode_support, jvp
from derivcheck.check.torch_call import OutputSpec, TorchCall, describe, dtype_mismatch_hint, to_real
from derivcheck.check.torch_properties import batched_gradients, gradient_attributes, undefined_output_gradients, zero_output_gradient

MAX_FULL = 4096
"""Default largest Jacobian (entries, per input) checked in full."""

MAX_COLUMNS = 1024
"""Largest number of real input coordinates checked in full: finite differences of a full
Jacobian cost eight forward passes per coordinate (a scalar CNN loss over a 3,888-entry
batch took 19 s that way, against 0.1 s for directional derivatives)."""

DIRECTIONS = 2
CHECK_TOLERANCE = Tolerance(exact_factor=256.0)
"""The default tolerance of the checks: ``256 eps`` relative (6e-14 in float64, 3e-5 in
float32), far tighter than the case runner's ``4500 eps``, because every check also
measures its own rounding noise (:mod:`derivcheck.check.noise`) and widens the bound
exactly where the computation needs it. On 2,000 random compositions of torch ops the
noise model alone (``exact_factor=4``) leaves one false alarm; 256 leaves none."""

LARGE = 100_000
"""Input coordinates above which the Taylor test takes 7 steps instead of 12."""

EVIDENCE_THRESHOLD = 1e-5
"""Agreement proves a derivative right only where the reference is sharp: a reference whose
typical error exceeds ``1e-5`` of the derivative's size (or the check's own relative
tolerance, where that is larger: float16 and bfloat16) makes a quantity ``inconclusive``
(:func:`derivcheck.check.evidence.judge`). Measured on correct code: float64 finite
differences of the 2,000 random programs and of OpInfo's first samples stay below 1e-6
(typically 1e-10), except at singular points (``linalg.pinv`` of a singular matrix: 1e18);
a forward only float32-accurate inside (soft-DTW built with ``torch.Tensor``) gives 1e-3,
finite differences of a float32 forward 3e-3 to 1e-2."""

SECOND_ORDER_THRESHOLD = 1e-4
""":data:`EVIDENCE_THRESHOLD` for ``u^T H v``: the four-point stencil, extrapolated twice,
is precise to about 1e-6 of a smooth function's second derivative (measured: 1.6e-6 for
``sin``, 2.8e-6 for a swish at inputs up to 17), not to 1e-10."""

REFERENCES = ("auto", "finite_diff", "symbolic")
MODES = ("rev", "fwd")
ROUNDING_SAMPLES = 2
EXCLUDED_FD = "finite differences cannot vouch for these (a jump or staircase inside the stencil, or the stencil leaves the function's domain)"


def check_common(order: int, reference: str, max_full: int, directions: int, *, seed: Any = 0, tolerance: Any = None, name: Any = None, flags: dict[str, Any] | None = None) -> None:
    """Validate the options every check shares (each error names the option and value)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
        raise InvalidArgument(f"seed must be a non-negative integer, got {seed!r}")
    if tolerance is not None and not isinstance(tolerance, Tolerance):
        raise InvalidType(f"tolerance must be a derivcheck.Tolerance (e.g. dc.Tolerance(rtol=1e-6)), got {type(tolerance).__name__} {tolerance!r}")
    if name is not None and not isinstance(name, str):
        raise InvalidType(f"name must be a string, got {type(name).__name__}")
    for flag, value in (flags or {}).items():
        if not isinstance(value, bool):
            raise InvalidType(f"{flag} must be True or False, got {value!r}")
    if isinstance(order, bool) or order not in (1, 2):
        raise InvalidArgument(f"order must be 1 or 2, got {order!r}")
    if reference not in REFERENCES:
        raise InvalidArgument(f"reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
    if isinstance(max_full, bool) or not isinstance(max_full, int) or max_full < 1:
        raise InvalidArgument(f"max_full must be a positive integer, got {max_full!r}")
    if isinstance(directions, bool) or not isinstance(directions, int) or not 1 <= directions <= 64:
        raise InvalidArgument(f"directions must be an integer in 1..64, got {directions!r}")


def _modes(modes: Any) -> tuple[bool, bool, bool]:
    """(reverse, forward, forward explicitly required) from the `modes` option."""
    if modes == "auto":
        return True, True, False
    if isinstance(modes, str):
        modes = (modes,)
    try:
        chosen = tuple(modes)
    except TypeError:
        raise InvalidArgument(f"modes must be 'auto' or a tuple of 'rev' and/or 'fwd', got {modes!r}") from None
    if not chosen or any(m not in MODES for m in chosen):
        raise InvalidArgument(f"modes must be 'auto' or a non-empty tuple of 'rev' and/or 'fwd', got {modes!r}")
    return "rev" in chosen, "fwd" in chosen, "fwd" in chosen


PRECISION = ("float64", "float32", "float16", "bfloat16")
"""Dtype names from most to least precise."""

HALF_FACTOR = 4.0
"""The default tolerance's ``exact_factor`` for float16 and bfloat16 (4e-3 and 3e-2
relative): ``256 eps`` would be 25% and 200% there; the measured noise carries the rest.
On 200 random programs each: no false alarm; a 20% error caught wherever it shows."""


def _dtype_name(dtype: Any) -> str:
    text = str(dtype).replace("torch.", "")
    return {"complex128": "float64", "complex64": "float32", "complex32": "float16", "float64": "float64", "float16": "float16", "bfloat16": "bfloat16"}.get(text, "float32")


@dataclass
class _Check:
    """Everything one ``check_torch`` call shares between its pieces of evidence."""

    what: str
    call: TorchCall
    spec: OutputSpec
    graph: Graph
    tolerance: Tolerance
    user_dtype: str
    fd_dtype: str
    f: Callable[[np.ndarray], np.ndarray]
    x0: np.ndarray
    f0: np.ndarray
    f_noise: np.ndarray
    f_samples: NoiseSamples
    rev: bool
    fwd: bool
    samples: int
    seed: int
    rng: np.random.Generator
    nondet: float = 0.0
    fd_note: str = ""
    f_floor: float = 0.0
    reentrant: bool = True
    threshold: float = 1e-5
    """The largest typical relative error of a reference that still proves agreement (see
    :data:`EVIDENCE_THRESHOLD`)."""
    advice: str = ""
    """How to get a verdict where the reference is too imprecise."""
    batch: Callable[[np.ndarray], np.ndarray] | None = None
    """The float64 forward for many points at once (vmap), where it gives what one point at
    a time gives (see :func:`_checked_batch`)."""
    natural_scale: float = 0.0
    """The size derivatives of this function have: its outputs' (or its forward's largest
    cancelling operands') size over its inputs' (at least 1) -- a floor under the scale
    precision is stated against (:func:`~derivcheck.compare.compare_quantity`)."""
    input_size: float = 1.0

    def backward_graph(self) -> Graph:
        """The graph for one more backward pass: the first one, or a fresh one when the
        backward is not reentrant (see :func:`_nondeterminism`)."""
        return self.graph if self.reentrant else Graph(self.call, self.spec)

    def jacobian(self) -> tuple[np.ndarray, np.ndarray]:
        """The reverse-mode Jacobian and each row's operand magnitude, a fresh graph per
        row when the backward is not reentrant."""
        if self.reentrant:
            return self.graph.jacobian(observe=True)
        m = self.spec.size
        rows, magnitudes = np.zeros((m, self.call.size)), np.zeros(m)
        for i in range(m):
            e = np.zeros(m)
            e[i] = 1.0
            rows[i], magnitudes[i] = Graph(self.call, self.spec).vjp_observed(e)
        return rows, magnitudes

    result: CheckResult = field(default_factory=lambda: CheckResult("", []))

    @property
    def rtol(self) -> float:
        return self.tolerance.rtol_for(self.user_dtype, self.fd_dtype)

    @property
    def finite_inputs(self) -> np.ndarray:
        """Coordinates with a finite value (no derivative is checked at an infinite one)."""
        return np.isfinite(self.x0)

    @property
    def finite_outputs(self) -> np.ndarray:
        return np.isfinite(self.f0)

    def floor(self, magnitude: float, runs: NoiseSamples | None = None) -> float:
        """The rounding floor ``eps * magnitude`` of a tested result whose operands reach
        `magnitude` -- only where no Monte-Carlo run measured its noise (`runs` empty):
        the runs see cancellation scaled by what follows it, which a floor on the result
        is not (``1 - s`` deep in a sigmoid chain errs by ``eps`` of ``s``, the gradient it
        feeds by that times the rest of the chain), and fused kernels' internal
        cancellation is injected into them (:func:`derivcheck.check.noise.fused_error_size`)."""
        if runs:
            return 0.0
        return magnitude_floor(self.user_dtype, magnitude)


@leaves_state_unchanged
def check_torch(
    fn: Callable[..., Any],
    *inputs: Any,
    order: int = 1,
    modes: Any = "auto",
    reference: str = "auto",
    expr: str | None = None,
    params: bool = True,
    name: str | None = None,
    max_full: int = MAX_FULL,
    directions: int = DIRECTIONS,
    seed: int = 0,
    taylor: bool = True,
    tolerance: Tolerance | None = None,
    batched: bool | str = "auto",
    check_undefined: bool = True,
    nondet_tol: float | None = None,
    rounding_samples: int = ROUNDING_SAMPLES,
    fast: bool = False,
) -> CheckResult:
    """Check the autograd derivatives of `fn` at `inputs`.

    **Arguments:**

    - `fn`: a callable, or an ``nn.Module`` (its floating parameters are checked too, by
      name, unless ``params=False``). It may return a tensor or a tuple/list/dict of
      tensors (integer outputs, and outputs that do not require grad, are left out), real
      or complex.
    - `inputs`: positional arguments as you would pass them. Floating-point and complex
      tensors (also inside tuples, lists and dicts) are differentiated -- only those with
      ``requires_grad=True`` when some have it, as in ``gradcheck``; everything else --
      integer tensors (labels, indices), numbers, ``None`` -- passes through untouched.
    - `order`: 1 checks first derivatives; 2 also checks ``u^T H v`` of a random
      projection of the output by double backward (``create_graph=True``).
    - `modes`: ``"auto"`` (reverse mode, and forward mode where `fn` supports it),
      ``("rev",)``, ``("fwd",)`` or ``("rev", "fwd")`` -- an explicit ``"fwd"`` requires
      forward-mode support, as ``jax.test_util.check_grads(modes=...)`` does.
    - `reference`: ``"auto"`` (finite differences, plus SymPy when `expr` is given),
      ``"finite_diff"`` or ``"symbolic"`` (requires `expr`).
    - `expr`: for a single-input elementwise `fn`, its formula in ``x``; SymPy derives the
      reference derivative from it.
    - `name`: how messages call `fn` (default: its class or function name).
    - `max_full`: largest Jacobian (entries, per input) checked entry by entry; above it,
      `directions` random directional derivatives ``u^T J v`` (all inputs jointly, then
      input by input if they disagree).
    - `seed`: seeds every random direction, the rounding-noise runs and torch's RNG for
      random forwards (dropout).
    - `taylor`: also run the Taylor test.
    - `tolerance`: a :class:`~derivcheck.compare.Tolerance` (default ``256 eps``, see
      :data:`CHECK_TOLERANCE`).
    - `batched`: ``"auto"`` checks the backward under ``vmap`` and ``fn`` under
      ``torch.func.vmap`` where they run; ``True`` requires both; ``False`` skips them.
    - `check_undefined`: check zero and undefined (``None``) output gradients.
    - `nondet_tol`: a repeated backward may differ by this much; ``None`` (default): by
      what summing in another order explains (:data:`REDUCTION_ORDER` ``eps`` of its
      operands), which is reported and allowed for; more fails ("your backward gives
      different answers on repeated calls").
    - `rounding_samples`: Monte-Carlo-arithmetic runs used to measure rounding noise
      (0: the noise bound comes from operand magnitudes alone).
    - `fast`: like ``gradcheck(fast_mode=True)``: one random directional derivative through
      all inputs (whatever their size) by a four-point stencil, no Taylor test, forward
      mode, vmap or nondeterminism checks; in float64 the noise bound comes from operand
      magnitudes alone, in float32 one Monte-Carlo run measures it.

    **Returns:** a :class:`~derivcheck.check.result.CheckResult`; ``result.ok`` is the verdict.
    """
    check_common(order, reference, max_full, directions, seed=seed, tolerance=tolerance, name=name, flags={"params": params, "taylor": taylor, "check_undefined": check_undefined, "fast": fast})
    rev, fwd, fwd_required = _modes(modes)
    if batched not in ("auto", True, False):
        raise InvalidArgument(f"batched must be 'auto', True or False, got {batched!r}")
    if nondet_tol is not None and (isinstance(nondet_tol, bool) or not isinstance(nondet_tol, (int, float)) or nondet_tol < 0):
        raise InvalidArgument(f"nondet_tol must be None or a non-negative number, got {nondet_tol!r}")
    if isinstance(rounding_samples, bool) or not isinstance(rounding_samples, int) or not 0 <= rounding_samples <= 16:
        raise InvalidArgument(f"rounding_samples must be an integer in 0..16, got {rounding_samples!r}")
    if not callable(fn):
        raise InvalidType(f"fn must be callable (a function or an nn.Module), got {type(fn).__name__}")
    if not inputs:
        raise InvalidArgument("check_torch needs at least one input")
    if reference == "symbolic" and expr is None:
        raise InvalidArgument("reference='symbolic' needs expr='...' (the function's formula in x)")
    if order == 2 and not rev:
        raise InvalidArgument("order=2 checks the double backward: modes must include 'rev'")
    if fast:
        fwd = fwd and fwd_required
        taylor = False
        batched = True if batched is True else False
    tolerance = tolerance or CHECK_TOLERANCE
    what = describe(fn, name)
    call = TorchCall(fn, inputs, params=params, seed=seed)
    if expr is not None and (len(call.slots) != 1 or call.slots[0].is_complex):
        raise InvalidArgument(f"expr= describes an elementwise real function of a single input x; {what} has {len(call.slots)} differentiated tensors")
    if not call.slots:
        result = CheckResult(what=what, quantities=[], mode="empty")
        result.notes.extend(call.notes + ["nothing to check: every differentiated tensor is empty"])
        return result
    try:
        graph = Graph(call)
    except (InvalidType, InvalidArgument):
        raise
    except Exception as exc:
        hint = dtype_mismatch_hint(call, exc)
        raise InvalidArgument(f"calling {what} on the inputs failed: {type(exc).__name__}: {exc}" + (f"\n{hint}" if hint else "")) from exc
    spec = graph.spec
    dtypes = {_dtype_name(s.tensor.dtype) for s in call.slots} | {_dtype_name(o.dtype) for o in graph.outs}
    user_dtype = max(dtypes, key=PRECISION.index)  # the least precise
    if fast:
        # float64 rounding sits far below the dtype's tolerance: operand floors suffice; a
        # float32 (or half) computation needs its noise measured (one run, at 8x: an
        # ill-conditioned LayerNorm amplifies its rounding beyond any operand floor)
        rounding_samples = 0 if user_dtype == "float64" else 1
    if user_dtype in ("float16", "bfloat16"):
        if tolerance is CHECK_TOLERANCE:
            tolerance = replace(tolerance, exact_factor=HALF_FACTOR)
        if fwd and not fwd_required:  # forward-mode formulas overflow there (rstd**3 in layer_norm)
            fwd = False
            result_notes = [f"forward mode not checked in {user_dtype} unless asked for (modes=('rev', 'fwd')): its formulas overflow at half precision"]
        else:
            result_notes = []
        result_notes.append(
            f"checked at {user_dtype} precision: the bounds are wide (a {user_dtype} gradient is right to a few 1e-{2 if user_dtype == 'bfloat16' else 3} at best); run the same code in float32 or float64 for a sharper verdict"
        )
    else:
        result_notes = []
    result = CheckResult(what=what, quantities=[], dtype=user_dtype)
    result.notes.extend(call.notes + result_notes)
    if call.passthrough:
        result.notes.append("passed through, not differentiated: " + ", ".join(call.passthrough))
    if spec.ignored:
        result.notes.append("outputs not checked: " + ", ".join(spec.ignored))
    if not any(graph.live):
        result.notes.append(
            f"no output requires grad: {what}'s result does not depend on its inputs through autograd, so its derivative is taken as zero and checked as such (finite differences show whether the forward really is constant)"
        )
    if spec.size == 0:
        result.mode = "empty"
        result.notes.append("every output is empty: nothing to check")
        return result
    rng = np.random.default_rng(seed)
    with np.errstate(invalid="ignore"):
        finite_out = np.isfinite(spec.real(graph.raw))
    w = _directions(rng, 1, spec.size)[0] * finite_out
    if fast and rev:  # one pass, observed: fast mode asks no reentrancy or determinism question
        raw_w, w_magnitude = observed(lambda: _first_backward(graph, what, w))
        g_w, observer_differs = flat_grads(raw_w, call), False
    else:
        raw_w = _first_backward(graph, what, w) if rev else [None] * len(call.slots)
        g_w = flat_grads(raw_w, call)
        # the backward's operand sizes, observed on a fresh graph (a second backward through
        # the first one is the reentrancy question, asked later); whether the observing mode
        # changed the result is settled once the backward is known to be deterministic
        watched, w_magnitude = _observed_backward(call, spec, w) if rev else (g_w, 0.0)
        observer_differs = rev and not _same_results(watched, g_w)

    try:
        refs = _references(call, spec, what, user_dtype, rounding_samples, seed, result, batched=not fast)
    except _Nondeterministic as exc:
        result.findings.append(Finding("deterministic forward", "nondeterministic", False, str(exc)))
        return result
    if not refs.dispatch_ok:
        rounding_samples = 0
    # -- forward mode: supported? ----------------------------------------------------------
    if fwd:
        unsupported, broken = forward_mode_support(call, spec, graph)
        if unsupported is not None and broken:
            result.findings.append(
                Finding("forward mode", "jvp raised", False, f"forward-mode AD of {what} raised: {unsupported} (a custom Function's jvp that fails, e.g. without ctx.save_for_forward)")
            )
            fwd = False
        elif unsupported is not None:
            silent = unsupported.startswith("PyTorch returned no forward-mode tangent")
            if fwd_required and silent:  # asked for, and PyTorch gives zeros: a failure, with the reason
                result.findings.append(Finding("forward mode", "no tangent", False, f"modes includes 'fwd', but forward mode is not implemented here: {unsupported}"))
            elif fwd_required:
                raise InvalidArgument(f"modes includes 'fwd' but {what} does not support forward-mode AD ({unsupported}); implement jvp (custom Function) or pass modes=('rev',)")
            else:
                result.notes.append(f"forward mode not checked: {unsupported}" if silent else f"forward mode not checked: {what} does not support it ({unsupported})")
            fwd = False

    ctx = _Check(
        what,
        call,
        spec,
        graph,
        tolerance,
        user_dtype,
        refs.dtype,
        refs.f,
        refs.x0,
        refs.f0,
        refs.noise,
        refs.samples,
        rev,
        fwd,
        rounding_samples,
        seed,
        rng,
        fd_note=f"Richardson central differences of your forward, {refs.dtype}",
        result=result,
        f_floor=refs.floor,
    )
    ctx.threshold = max(EVIDENCE_THRESHOLD, ctx.rtol)
    ctx.advice = (
        f"let {what} run as a float64 copy (pass the tensors it closes over as inputs, keep its arithmetic in torch, no hard-coded float32), so finite differences run in float64"
        if refs.dtype != "float64"
        else "check at other points; if the forward is not accurate to float64 inside (a float32 tensor, torch.Tensor(...) which is float32, a quantised value), "
        "make it compute in float64; or give expr= for a symbolic reference"
    )
    ctx.batch = refs.batch
    ctx.input_size = max(1.0, float(np.max(np.abs(refs.x0[np.isfinite(refs.x0)]), initial=0.0)))
    ctx.natural_scale = refs.magnitude / ctx.input_size
    full = not fast and all(spec.size * s.size <= max_full for s in call.slots) and call.size <= MAX_COLUMNS
    result.mode = "full" if full else "directional"
    result.tolerances = {f"rtol {user_dtype} vs {ctx.fd_dtype}": ctx.rtol, "fd_safety": tolerance.fd_safety}

    if rev and not fast:
        _nondeterminism(ctx, w, g_w, w_magnitude, nondet_tol)
    if observer_differs and _mode_changes_backward(ctx, w, g_w):
        ctx.samples, w_magnitude = 0, 0.0
        result.notes.append(MODE_CHANGES_RESULT.format(what=what, part="backward"))

    first = (w, g_w, w_magnitude) if rev else None
    blocked = _full(ctx, expr, reference) if full else _directional(ctx, 1 if fast else directions, max_full, fast, first)
    if taylor and rev:
        _taylor(ctx, w, g_w, w_magnitude, blocked, full)
    if order == 2:
        second = _second_order(ctx, w, directions)
        (result.findings if isinstance(second, Finding) else result.quantities).append(second)  # type: ignore[arg-type]
    if rev:
        _properties(ctx, g_w, raw_w, check_undefined, batched)
    return result


class _Nondeterministic(Exception):
    """The forward gives different results for the same inputs (message: what to do)."""


@dataclass
class _References:
    """The float64 forward finite differences perturb, where they start, and its noise."""

    f: Callable[[np.ndarray], np.ndarray]
    x0: np.ndarray
    f0: np.ndarray
    noise: np.ndarray
    samples: NoiseSamples
    floor: float
    dtype: str
    magnitude: float = 0.0
    dispatch_ok: bool = True
    batch: Callable[[np.ndarray], np.ndarray] | None = None


def _references(call: TorchCall, spec: OutputSpec, what: str, user_dtype: str, samples: int, seed: int, result: CheckResult, batched: bool = True) -> _References:
    """A float64 (complex128) forward in real coordinates, checked to be deterministic,
    with its rounding noise: measured, and at least ``eps`` times the operands of its
    cancelling operators (a fused kernel that cancels inside -- ``1 + erf(x)`` in GELU far
    left -- is flat to perturbation yet rounds to ``eps`` of its operands)."""
    import torch

    twin = call.float64_twin()
    forward, failure = twin.forward, twin.failure
    dtype = "float64" if failure is None else user_dtype

    def f(flat: np.ndarray) -> np.ndarray:
        # with grad enabled: a forward may take derivatives itself (a gradient penalty,
        # forces -dE/dx, a PINN loss); its inputs do not require grad, so no graph is kept
        with torch.enable_grad():
            try:
                return spec.real(forward(flat))
            except (InvalidType, InvalidArgument):
                raise
            except Exception:  # noqa: BLE001 - outside the function's domain: flagged undefined
                return np.full(spec.size, np.nan)

    x0 = call.base()
    f0 = f(x0)
    again = f(x0)
    watched, magnitude, size = observed_sizes(lambda: f(x0))
    with np.errstate(invalid="ignore"):
        difference = np.where((f0 == again) | (np.isnan(f0) & np.isnan(again)), 0.0, np.abs(f0 - again))
    scale = float(np.max(np.abs(f0[np.isfinite(f0)]), initial=0.0))
    if not np.all(difference <= 1e-6 * scale + 1e-300) or not np.array_equal(np.isfinite(f0), np.isfinite(again)):
        worst = float(np.nanmax(difference))
        raise _Nondeterministic(
            f"cannot check a non-deterministic forward by finite differences: two calls of {what} with the same inputs differ by up to {worst:.3g}. "
            "torch's global RNG is re-seeded before every call (dropout and torch.rand inside fn are fine); seed any other randomness (a torch.Generator, numpy) inside fn, or use eval mode"
        )
    dispatch_ok = _same_results(watched, f0)
    if not dispatch_ok:  # under any dispatch mode the forward computes something else
        samples = 0
        result.notes.append(MODE_CHANGES_RESULT.format(what=what, part="forward"))
    runs = noisy_runs(lambda: f(x0), samples, seed)
    floor = magnitude_floor(dtype, magnitude)
    if failure is not None:
        result.reference = f"finite differences in {dtype} (float64 failed)"
        result.notes.append(
            f"finite differences ran in {dtype}: {what} could not run as a float64 copy ({failure}); "
            "pass a function that accepts float64 tensors (its weights as inputs, or dtype-generic code) for a sharper check"
        )
    elif twin.promoted:
        result.reference = "finite differences of your forward promoted to float64"
        result.notes.append(
            f"reference: finite differences of {what} with every torch computation promoted to float64 ({twin.promoted} low-precision tensor(s) it closes over, "
            f"creates or casts to were widened, exactly); your {user_dtype} derivatives are judged against it with their own measured rounding noise"
        )
    else:
        result.reference = "finite differences of your forward in float64"
    if not np.all(np.isfinite(x0)):
        result.notes.append(f"{int((~np.isfinite(x0)).sum())} input coordinate(s) are infinite or NaN: no derivative is checked with respect to them")
    if not np.all(np.isfinite(f0)):
        result.notes.append(f"{int((~np.isfinite(f0)).sum())} output coordinate(s) are infinite or NaN at these inputs: their derivatives are not checked")
    # a forward that differs between calls at rounding level only (atomic adds on a GPU)
    # is a deterministic function with noise: that noise joins the measured one
    noise = np.maximum(np.maximum(ROUNDING_WEIGHT * spread(runs, f0), floor), np.where(np.isfinite(difference), difference, 0.0))
    batch = _checked_batch(twin.batched(spec), f, x0, f0, size) if batched else None
    return _References(f, x0, f0, noise, runs, floor, dtype, magnitude=max(size, scale), dispatch_ok=dispatch_ok, batch=batch)


BATCH_BELOW_SECONDS = 2e-3
"""Forwards are batched (vmap) only when one call takes less than this: batching saves the
per-call overhead of small functions, and a slow forward (large activations) would only
multiply its memory by the batch."""


def _checked_batch(batch: Callable[[np.ndarray], np.ndarray] | None, f: Callable[[np.ndarray], np.ndarray], x0: np.ndarray, f0: np.ndarray, size: float) -> Callable[[np.ndarray], np.ndarray] | None:
    """`batch` (the forward under vmap) if it gives what `f` gives, one point at a time, at
    `x0` and at a point moved along every coordinate, to ``64 eps`` of the computation's
    size; ``None`` if it cannot run (a random forward, a custom Function without a vmap
    rule, data-dependent control flow) or computes otherwise."""
    if batch is None or x0.size == 0 or not np.all(np.isfinite(x0)) or 2 * STEPS * max(x0.size, f0.size) > BATCHED_ENTRIES:
        return None  # (beyond BATCHED_ENTRIES, nothing is evaluated in batches)
    moved = x0 + 1e-3 * np.maximum(1.0, np.abs(x0)) * np.where(np.arange(x0.size) % 2 == 0, 1.0, -1.0)
    start = time.perf_counter()
    with np.errstate(all="ignore"):
        want = np.stack([f0, f(moved)])
    if time.perf_counter() - start > BATCH_BELOW_SECONDS:
        return None  # a forward this slow gains nothing from batching, and its batch could be large
    try:
        with np.errstate(all="ignore"):
            got = np.asarray(batch(np.stack([x0, moved])), dtype=np.float64)
    except Exception:  # noqa: BLE001 - not vmappable: one point at a time
        return None
    scale = max(size, float(np.max(np.abs(want[np.isfinite(want)]), initial=0.0)), 1e-300)
    with np.errstate(invalid="ignore"):  # batched kernels may round differently, by an eps or so
        same = (got == want) | (np.isnan(got) & np.isnan(want)) | (np.abs(got - want) <= 64 * EPS_BY_NAME["float64"] * scale)
    return batch if got.shape == want.shape and bool(np.all(same)) else None


MODE_CHANGES_RESULT = (
    "rounding noise of the {part} not measured: {what} computes something else under a torch dispatch mode (a PyTorch bug: complex torch.linalg.pinv, for one), "
    "so its bounds come from the dtype's tolerance and operand sizes alone"
)


def _same_results(watched: Any, plain: np.ndarray) -> bool:
    """Whether a result computed under an observing (non-perturbing) dispatch mode equals
    the plain one, up to the forward's own nondeterminism (1e-6 relative)."""
    values = np.asarray(watched, dtype=np.float64)
    if values.shape != plain.shape:
        return False
    with np.errstate(invalid="ignore"):
        difference = np.where((values == plain) | (np.isnan(values) & np.isnan(plain)), 0.0, np.abs(values - plain))
    scale = float(np.max(np.abs(plain[np.isfinite(plain)]), initial=0.0))
    return bool(np.all(np.nan_to_num(difference, nan=np.inf) <= 1e-6 * scale + 1e-300))


def _properties(ctx: _Check, g_w: np.ndarray, raw_w: list[Any], check_undefined: bool, batched: bool | str) -> None:
    """The property checks of :mod:`derivcheck.check.torch_properties`."""
    call, graph = ctx.call, ctx.backward_graph()
    if check_undefined:
        nonfinite_slots = {k for k, s in enumerate(call.slots) if not np.all(np.isfinite(g_w[s.cols]))}
        ctx.result.findings.append(zero_output_gradient(graph, nonfinite_slots))
        undefined = undefined_output_gradients(graph, ctx.tolerance, ctx.user_dtype, ctx.rng)
        if undefined is not None:
            ctx.result.findings.append(undefined)
    ctx.result.findings.append(gradient_attributes(graph, raw_w))
    if batched is not False:
        if any(q.kinks for q in ctx.result.quantities):
            reason = "the inputs sit at a kink (see the comparisons), where a batched and a looped backward may rightly pick different subgradients (the max of tied entries)"
            ctx.result.findings += [Finding(name, "skipped", True, f"not checked: {reason}") for name in ("batched backward (vmap over output gradients)", "vmap over inputs (torch.func)")]
        else:
            ctx.result.findings.extend(batched_gradients(call, graph, ctx.tolerance, ctx.user_dtype, ctx.rng, required=batched is True))


def _directions(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    """``(count, size)`` random directions with entries +-1 (Rademacher): as good as normal
    ones for random directional derivatives, and drawn six times faster (a 1e6-parameter
    model's directions are the bulk of a fast check's own arithmetic)."""
    return rng.integers(0, 2, (count, size), dtype=np.int8).astype(np.float64) * 2 - 1


def _observed_backward(call: TorchCall, spec: OutputSpec, w: np.ndarray) -> tuple[np.ndarray, float]:
    """``J^T w`` on a fresh graph under the operand observer, and the largest cancelling
    operand it saw (0 if it cannot run observed)."""
    try:
        return Graph(call, spec).vjp_observed(w)
    except Exception:  # noqa: BLE001 - the plain first backward already ran
        return np.full(call.size, np.nan), 0.0


def _mode_changes_backward(ctx: _Check, w: np.ndarray, g_w: np.ndarray) -> bool:
    """Whether the observed backward differed from the plain one because a dispatch mode
    changes what it computes (complex ``pinv``), not because the backward varies between
    calls: a fresh plain backward repeats the first one."""
    if any(f.name == "nondeterminism" and (not f.ok or f.verdict == "nondeterministic") for f in ctx.result.findings):
        return False
    return _same_results(Graph(ctx.call, ctx.spec).vjp(w), g_w)


def _first_backward(graph: Graph, what: str, w: np.ndarray) -> list[Any]:
    """The first backward pass; a backward that raises is reported as such (an error in
    your derivative code, with its message)."""
    try:
        return graph.raw_grads(w)
    except (InvalidType, InvalidArgument):
        raise
    except Exception as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        hint = (
            " (if an input is not meant to be differentiated, pass it with requires_grad=False and the others with requires_grad=True)"
            if "not implemented" in text or "does not require grad" in text
            else ""
        )
        raise InvalidArgument(f"the backward of {what} raised: {type(exc).__name__}: {text}{hint}") from exc


ROUNDING_WEIGHT = 0.4
"""The rounding noise of your derivative is the spread of Monte-Carlo runs times this (then
times the tolerance's ``fd_safety``, 10): the runs move every operand of every operator by
1 to 4 ``eps`` (2.5 on average, both operands of a product), where a kernel rounds its
result once by at most half an ``eps`` -- the raw spread overstates the rounding several
times. Measured: with 0.4, a ``(1 + 1e-3)`` error in a float32 closure is caught in 629 of
635 random programs where it stands 100 times above the gradient's actual float32 error
(621 with 1.0), and 2,000 random programs, 1,000 closures and OpInfo give no false alarm."""

REDUCTION_ORDER = 256.0
"""Repeated backward passes may differ by this many ``eps`` of their largest operand, or by
``sqrt(eps)`` of the gradient's size (1.5e-8 in float64, 3.5e-4 in float32), whichever is
larger: what summing in another order (atomic adds on a GPU, a threaded reduction, also of
millions of terms into one entry) can change. Beyond it a backward is not
nondeterministic through rounding but wrong on some calls (a set's iteration order: 0.94
relative in the micrograd example)."""


def _nondeterminism(ctx: _Check, w: np.ndarray, g_w: np.ndarray, w_magnitude: float, nondet_tol: float | None) -> None:
    """Two questions about the backward, from the first backward's result `g_w`:

    - *reentrant*: does a second backward through the same graph give the same result? A
      backward that changes what it saved (a ``ctx`` attribute or a saved tensor updated in
      place) does not; it breaks ``retain_graph=True`` and double backward, and a Jacobian
      taken row by row through one graph would check garbage (and its spread would hide a
      wrong formula). It is reported (failing past `nondet_tol`, as gradcheck's "backward is
      not reentrant"), and every later backward runs on a fresh graph.
    - *deterministic*: do fresh forward and backward passes agree? Up to
      :data:`REDUCTION_ORDER` ``eps`` of the backward's operands (`w_magnitude`) they may
      differ as reductions in another order do: reported, and the comparisons allow for
      it. Beyond that the backward is wrong on some calls (a result that depends on set
      or dict order, a race): a failure, unless `nondet_tol` allows it. The comparisons
      are never widened beyond what rounding (or `nondet_tol`) explains, so a varying
      backward cannot buy itself a wide bound.
    """
    fresh = [Graph(ctx.call, ctx.spec).vjp(w) for _ in range(2)]
    again = ctx.graph.vjp(w)

    def largest(a: np.ndarray) -> float:
        with np.errstate(invalid="ignore"):
            d = np.abs(a - g_w)
        return float(np.max(np.where(np.isfinite(d), d, 0.0), initial=0.0))

    nondet = max(largest(r) for r in fresh)
    reentry = largest(again)
    scale = float(np.max(np.abs(g_w[np.isfinite(g_w)]), initial=0.0))
    if reentry > max(4 * nondet, 1e-8 * scale):
        ctx.reentrant = False
        within = nondet_tol is None or reentry <= nondet_tol
        ctx.result.findings.append(
            Finding(
                "reentrant backward",
                "not reentrant",
                within,
                f"a second backward through the same graph differs from the first by up to {reentry:.3g} (fresh passes agree to {nondet:.3g}): your backward changes state it saved "
                "(a ctx attribute or a saved tensor updated in place), so retain_graph=True or a double backward through it gets wrong gradients; "
                "derivcheck takes every derivative on a fresh graph instead" + ("" if nondet_tol is None else f" (nondet_tol={nondet_tol:g})"),
                measured=reentry,
                bound=nondet_tol,
            )
        )
    # what summing in another order explains: REDUCTION_ORDER eps of the operands, or of
    # the result times sqrt(1/eps) -- atomic adds of millions of terms into one entry
    # accumulate partial sums the operand observer does not see (in-place index_add_)
    eps = EPS_BY_NAME[ctx.user_dtype]
    rounding = max(REDUCTION_ORDER * eps * max(w_magnitude, scale), np.sqrt(eps) * scale)
    allowed = rounding if nondet_tol is None else nondet_tol
    ctx.nondet = min(nondet, max(rounding, nondet_tol or 0.0))
    if nondet == 0 and nondet_tol is None:
        return
    bound_text = "" if nondet_tol is None else f" (nondet_tol={nondet_tol:g})"
    if nondet > allowed:
        relative = nondet / scale if scale > 0 else float("inf")
        cause = (
            f"beyond the {rounding:.3g} that summing in another order explains ({REDUCTION_ORDER:g} eps of its operands or sqrt(eps) of the gradient, {ctx.user_dtype}): "
            "a result that depends on set or dict iteration order, a race, or state carried between calls"
            if nondet_tol is None
            else f"beyond nondet_tol={nondet_tol:g}"
        )
        message = f"your backward gives different answers on repeated calls ({relative:.2g} relative): fresh forward and backward passes with the same inputs and output gradient differ by up to {nondet:.3g}, {cause}"
        ctx.result.findings.append(Finding("nondeterminism", "nondeterministic", False, message, measured=nondet, bound=allowed))
        ctx.samples = 0  # rounding-noise runs would measure the variation as noise: floors only
        return
    message = (
        f"fresh forward and backward passes with the same inputs and output gradient differ by up to {nondet:.3g}{bound_text}, as summing in another order can; the comparisons allow for it"
        if nondet > 0
        else f"fresh forward and backward passes agree bit for bit{bound_text}"
    )
    ctx.result.findings.append(Finding("nondeterminism", "nondeterministic" if nondet > 0 else "deterministic", True, message, measured=nondet, bound=allowed))


def _full(ctx: _Check, expr: str | None, reference: str) -> np.ndarray:
    """Whole Jacobians, input by input. Returns the coordinates finite differences flagged
    (kink, jump, domain edge), which the Taylor test leaves out."""
    call, spec = ctx.call, ctx.spec
    engines: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    # rounding noise of the Jacobian, measured on the reverse pass (forward-mode AD does not
    # run under a dispatch mode; it computes the same entries, so it gets that measured
    # noise too, and always the operands' floor, since its own rounding is not measured)
    try:
        jac, magnitudes = ctx.jacobian()
        runs = noisy_runs(lambda: Graph(call, spec).jacobian() if ctx.reentrant else np.stack([Graph(call, spec).vjp(e) for e in np.eye(spec.size)]), ctx.samples, ctx.seed)
        measured = ROUNDING_WEIGHT * spread(runs, jac)
        floors = np.array([magnitude_floor(ctx.user_dtype, mag) for mag in magnitudes])[:, None]
        noise = np.maximum(measured, np.array([ctx.floor(mag, runs) for mag in magnitudes])[:, None])
    except Exception:
        if ctx.rev:
            raise
        jac, noise = np.zeros((spec.size, call.size)), np.zeros((spec.size, call.size))
        measured, floors = noise, noise
    if ctx.rev:
        engines["autograd"] = (jac, noise + ctx.nondet)
    if ctx.fwd:
        engines["forward_ad"] = (forward_jacobian(call, spec), np.maximum(measured, floors))
    fd = jacobian(ctx.f, ctx.x0, noise=ctx.f_noise, f0=ctx.f0, batch=ctx.batch)
    rows = np.flatnonzero(ctx.finite_outputs)
    quantity_out = "out" if spec.names == ["out"] else "outputs"
    for slot in call.slots:
        cols = np.arange(slot.cols.start, slot.cols.stop)[ctx.finite_inputs[slot.cols]]
        if cols.size == 0 or rows.size == 0:
            continue
        pick = np.ix_(rows, cols)
        refs: dict[str, EngineValue] = {e: EngineValue(v[pick], dtype=ctx.user_dtype, error_estimate=err[pick]) for e, (v, err) in engines.items()}
        if reference != "symbolic":
            refs["finite_diff"] = EngineValue(fd.values[pick], dtype=ctx.fd_dtype, error_estimate=fd.errors[pick], excluded=fd.excluded[pick], excluded_reason=EXCLUDED_FD, note=ctx.fd_note)
        if expr is not None:
            refs["symbolic"] = EngineValue(_symbolic_jacobian(expr, slot.tensor)[pick[0], pick[1] - slot.offset], note=f"SymPy: d/dx of {expr}")

        def label(index: tuple[int, ...], slot: Any = slot, cols: np.ndarray = cols) -> str:
            i, j = index
            return f"d {spec.label(int(rows[i]))}/d {slot.label(int(cols[j]) - slot.offset)}"

        # kinks, domain edges (a derivative may be infinite there) and gradients zero by
        # design are not compared, by any engine
        skip = fd.kinks[pick] | fd.undefined[pick] | call.by_design[cols][None, :]
        q = compare(f"d {quantity_out}/d {slot.name}", refs, tolerance=ctx.tolerance, kink_mask=skip, label=label, precision_scale=ctx.natural_scale, threshold=ctx.threshold, advice=ctx.advice)
        edge = fd.undefined[pick].any(axis=0)
        if q.verdict == "nonfinite" and edge.any():
            q.message += f" -- {slot.label(int(cols[np.argmax(edge)]) - slot.offset)} sits at the edge of the function's domain, where its derivative is infinite (d/dx sqrt(x) at 0) and a backward multiplies a zero output gradient by it: NaN"
        ctx.result.quantities.append(q)
    return fd.kinks.any(axis=0) | fd.excluded.any(axis=0) | ~ctx.finite_inputs | call.by_design


def _directional(ctx: _Check, directions: int, max_full: int, fast: bool, first: tuple[np.ndarray, np.ndarray, float] | None) -> np.ndarray:
    """Random ``u^T J v`` along joint directions; input by input when they disagree.
    Returns the coordinates the Taylor test must leave out (all, if a direction crossed a
    kink or jump: no coordinate is free of it)."""
    call, spec = ctx.call, ctx.spec
    U = _directions(ctx.rng, directions, spec.size) * ctx.finite_outputs
    if first is not None:
        U[0] = first[0]  # the output gradient the first backward already used
    V = _directions(ctx.rng, directions, call.size) * (ctx.finite_inputs & ~call.by_design)
    names = ", ".join(s.name for s in call.slots)
    why = (
        "fast=True"
        if fast
        else (
            f"{call.size} input coordinates (full finite differences take 8 forward passes each, beyond {MAX_COLUMNS} directional derivatives are cheaper)"
            if call.size > MAX_COLUMNS and all(spec.size * s.size <= max_full for s in call.slots)
            else f"Jacobians above {max_full} entries"
        )
    )
    ctx.result.notes.append(f"{why}: checked {directions} random directional derivative{'s' if directions > 1 else ''} u^T J v, each direction through all inputs jointly ({names})")
    # the rounding noise, measured on the reverse pass, serves both modes (see _full); the
    # noise of a projection u^T J v is measured on the projection itself, and the floor of
    # each gradient entry adds up in quadrature over the entries (independent roundings)
    grads = runs = floors = always = None
    try:
        observed_vjps = [(first[1], first[2]) if first is not None and d == 0 else ctx.backward_graph().vjp_observed(u) for d, u in enumerate(U)]
        grads = np.stack([g for g, _ in observed_vjps])
        runs = noisy_runs(lambda: _vjps(call, spec, U) if ctx.reentrant else np.stack([Graph(call, spec).vjp(u) for u in U]), ctx.samples, ctx.seed)
        floors = np.array([ctx.floor(mag, runs) for _, mag in observed_vjps])
        always = np.array([magnitude_floor(ctx.user_dtype, mag) for _, mag in observed_vjps])  # forward mode's
    except Exception:
        if ctx.rev:
            raise
    tangents = np.stack([jvp(call, spec, v) for v in V]) if ctx.fwd else None
    method = "central" if fast else "richardson"
    fd = directional(ctx.f, ctx.x0, V, U, noise=ctx.f_noise, f0=ctx.f0, method=method)

    def quantity(label: str, mask: np.ndarray, d: Differences | None) -> QuantityResult:
        Vm = V if mask.all() else V * mask
        refs: dict[str, EngineValue] = {}
        norms = np.sqrt(np.einsum("dn,dn->d", Vm, Vm))
        noise = forward_noise = np.zeros(directions)
        if grads is not None and runs is not None and floors is not None and always is not None:
            projected = np.einsum("dn,dn->d", grads, Vm)
            measured = ROUNDING_WEIGHT * spread(runs.map(lambda r: np.einsum("dn,dn->d", r, Vm)), projected)
            noise, forward_noise = np.maximum(measured, floors * norms), np.maximum(measured, always * norms)
        if ctx.rev and grads is not None:
            refs["autograd"] = EngineValue(projected, dtype=ctx.user_dtype, error_estimate=noise + ctx.nondet * norms)
        if ctx.fwd:
            tv = tangents if mask.all() and tangents is not None else np.stack([jvp(call, spec, v) for v in Vm])
            refs["forward_ad"] = EngineValue(np.einsum("dm,dm->d", U, tv), dtype=ctx.user_dtype, error_estimate=forward_noise)
        d = d if d is not None else directional(ctx.f, ctx.x0, Vm, U, noise=ctx.f_noise, f0=ctx.f0, method=method)
        refs["finite_diff"] = EngineValue(
            np.where(np.isfinite(d.values[0]), d.values[0], 0.0),
            dtype=ctx.fd_dtype,
            error_estimate=d.errors[0],
            excluded=d.excluded[0],
            excluded_reason=EXCLUDED_FD,
            note=ctx.fd_note,
        )
        return compare(
            label,
            refs,
            tolerance=ctx.tolerance,
            kink_mask=np.asarray(d.kinks.any(axis=0)),
            label=lambda i: f"direction {i[0]}",
            precision_scale=ctx.natural_scale,
            threshold=ctx.threshold,
            advice=ctx.advice,
        )

    joint = quantity("u^T J v (all inputs)", np.ones(call.size, dtype=bool), fd)
    ctx.result.quantities.append(joint)
    if joint.verdict in ("disagree", "inconclusive") and len(call.slots) > 1:
        if joint.verdict == "disagree":
            ctx.result.notes.append("the joint directional derivatives disagree: each input checked alone below")
        else:  # one input (a label passed as a float, a jump) may spoil every joint direction
            ctx.result.quantities.remove(joint)
            ctx.result.notes.append(f"the joint directional derivatives prove nothing ({joint.message.split('.')[0]}): each input checked alone instead")
        for slot in call.slots:
            mask = np.zeros(call.size, dtype=bool)
            mask[slot.cols] = True
            ctx.result.quantities.append(quantity(f"u^T (d out/d {slot.name}) v", mask, None))
    crossed = bool(fd.kinks.any() or fd.excluded.any())
    return np.full(call.size, crossed) | ~ctx.finite_inputs


def _vjps(call: TorchCall, spec: OutputSpec, U: np.ndarray) -> np.ndarray:
    graph = Graph(call, spec)
    return np.stack([graph.vjp(u) for u in U])


def _taylor(ctx: _Check, w: np.ndarray, g_w: np.ndarray, w_magnitude: float, blocked: np.ndarray, full: bool) -> None:
    """The Taylor test per input (full mode) or along one joint direction."""
    call, n = ctx.call, ctx.call.size
    g_samples = noisy_runs(lambda: Graph(call, ctx.spec).vjp(w), ctx.samples, ctx.seed + 100)
    finite = ctx.finite_outputs
    s0 = float(np.dot(w[finite], ctx.f0[finite]))
    s_noise = float(spread(ctx.f_samples.map(lambda fs: np.dot(w[finite], fs[finite])), np.asarray(s0))) if ctx.f_samples else 0.0
    s_noise = max(s_noise, 10 * float(np.finfo(np.float64).eps) * float(np.dot(np.abs(w[finite]), np.abs(ctx.f0[finite]))), ctx.f_floor * float(np.linalg.norm(w[finite])))

    def s(flat: np.ndarray) -> float:
        values = ctx.f(flat)
        return float(np.dot(w[finite], values[finite]))

    batch = ctx.batch
    s_many = None if batch is None else (lambda points: batch(points)[:, finite] @ w[finite])

    for slot in call.slots if full else [None]:
        label = slot.name if slot is not None else "all inputs"
        cols = slot.cols if slot is not None else slice(0, n)
        if slot is None and blocked.all():
            ctx.result.taylor[label] = skipped(label, "the random direction crosses a kink, jump or domain edge (see the directional check)")
            continue
        v = np.zeros(n)
        v[cols] = ctx.rng.standard_normal(cols.stop - cols.start)
        v[blocked] = 0.0
        if not np.any(v):
            ctx.result.taylor[label] = skipped(label, "every coordinate sits at a kink, jump or domain edge")
            continue
        moved = v != 0
        # the slope's own noise: measured on the projection g.v, floored by the entries'
        # rounding floor in quadrature, plus the dtype's tolerance
        measured = ROUNDING_WEIGHT * float(spread(g_samples.map(lambda g: np.dot(g[moved], v[moved])), np.asarray(np.dot(g_w[moved], v[moved]))))
        noise = max(measured, ctx.floor(w_magnitude, g_samples) * float(np.linalg.norm(v)))
        bound = float(ctx.rtol * np.dot(np.abs(g_w[moved]), np.abs(v[moved])) + SAFETY * noise + ctx.nondet * float(np.linalg.norm(v)))
        # above LARGE coordinates a step is a whole forward pass over a big model: the
        # directional comparisons carry the precision, the Taylor test its order over 7
        # steps (h0 = 1e-2 ... 2.4e-6) instead of 12
        h0, steps = (1e-2, 7) if n > LARGE else (1e-1, STEPS)
        t = taylor_test(label, s, ctx.x0, g_w, v, noise=s_noise, slope_bound=bound, s_many=s_many, h0=h0, steps=steps)
        left_out = int(blocked[cols].sum())
        if left_out:
            t.message += f" ({left_out} coordinate(s) at a kink, jump or domain edge left out of v)"
        ctx.result.taylor[label] = t


def _second_order(ctx: _Check, w: np.ndarray, directions: int) -> QuantityResult | Finding:
    """``u^T H v`` of ``w . out`` by double backward vs the four-point stencil."""
    import torch

    call, spec = ctx.call, ctx.spec
    U = ctx.rng.standard_normal((directions, call.size)) * ctx.finite_inputs
    V = ctx.rng.standard_normal((directions, call.size)) * ctx.finite_inputs
    name = "second derivative u^T H v of sum(w*out)"

    def double_backward() -> tuple[np.ndarray | None, float]:
        graph = Graph(call, spec)
        grads = graph.raw_grads(w, create_graph=True)
        parts = []
        for g, slot in zip(grads, call.slots):
            if g is None:
                parts.append(torch.zeros(slot.size, dtype=torch.float64, device=slot.tensor.device))
            else:
                parts.append((torch.view_as_real(g) if g.is_complex() else g).reshape(-1))
        flat = torch.cat([p.to(torch.float64) for p in parts])
        if not flat.requires_grad:
            return None, 0.0
        out, magnitude = [], 0.0
        for u, v in zip(U, V):
            weight = torch.as_tensor(u, dtype=flat.dtype, device=flat.device)

            def hvp(weight: Any = weight) -> Any:
                return torch.autograd.grad((flat * weight).sum(), graph.leaves, retain_graph=True, allow_unused=True)

            second, mag = observed(hvp)
            magnitude = max(magnitude, mag)
            out.append(float(np.dot(flat_grads(second, call), v)))
        return np.array(out), magnitude

    finite = ctx.finite_outputs

    def s(flat: np.ndarray) -> float:
        return float(np.dot(w[finite], ctx.f(flat)[finite]))

    eps = float(np.finfo(np.float64).eps)
    s_noise = max(10 * eps * float(np.dot(np.abs(w[finite]), np.abs(ctx.f0[finite]))), ctx.f_floor * float(np.sum(np.abs(w[finite]))))
    ref, err = zip(*(second_directional(s, ctx.x0, u, v, noise=s_noise) for u, v in zip(U, V)))
    ref_a, err_a = np.array(ref), np.array(err)
    try:
        auto, magnitude = double_backward()
    except RuntimeError as exc:
        if "once_differentiable" in str(exc):
            return Finding(name, "once differentiable", True, "the backward is marked @once_differentiable: it declares that it has no derivative of its own, so the second derivative is not checked")
        raise InvalidArgument(f"the double backward (create_graph=True) of {ctx.what} failed: {type(exc).__name__}: {exc}") from exc
    if auto is None:
        marked = _once_differentiable(ctx.graph.outs)
        if marked:
            return Finding(
                name,
                "once differentiable",
                True,
                f"the backward of {', '.join(marked)} is marked @once_differentiable: it declares that it has no derivative of its own, so the second derivative is not checked",
            )
        scale = float(np.max(np.abs(ref_a), initial=0.0))
        if np.all(np.abs(ref_a) <= ctx.tolerance.fd_safety * err_a + ctx.tolerance.rtol_for(ctx.user_dtype, "float64") * scale):
            return Finding(
                name, "zero", True, f"the gradient does not depend on the inputs through autograd, and finite differences agree that the second derivative is zero (|u^T H v| <= {scale:.3g})"
            )
        worst = int(np.argmax(np.abs(ref_a) - ctx.tolerance.fd_safety * err_a))
        return Finding(
            name,
            "not differentiable",
            False,
            f"your backward is not differentiable: its result does not depend on the inputs through autograd (computed outside torch, or detached), so create_graph=True gives a second derivative of 0, while finite differences give u^T H v = {ref_a[worst]:.6g} (+- {err_a[worst]:.2g}); "
            "write the backward with differentiable torch ops, or mark it @once_differentiable",
            measured=float(abs(ref_a[worst])),
            bound=float(ctx.tolerance.fd_safety * err_a[worst]),
        )

    def perturbed() -> np.ndarray:
        value, _ = double_backward()
        if value is None:
            raise ValueError("no graph under rounding noise")
        return value

    runs = noisy_runs(perturbed, ctx.samples, ctx.seed + 200)
    noise = np.maximum(ROUNDING_WEIGHT * spread(runs, auto), ctx.floor(magnitude, runs) * (np.abs(U).sum(axis=1) * np.abs(V).sum(axis=1)) ** 0.5)
    refs = {
        "autograd (create_graph)": EngineValue(auto, dtype=ctx.user_dtype, error_estimate=noise),
        "finite_diff": EngineValue(ref_a, error_estimate=err_a, note=f"four-point mixed stencil of your forward, {ctx.fd_dtype}"),
    }
    return compare(
        name,
        refs,
        tolerance=ctx.tolerance,
        label=lambda i: f"direction {i[0]}",
        precision_scale=ctx.natural_scale / max(1.0, ctx.input_size),
        threshold=max(ctx.threshold, SECOND_ORDER_THRESHOLD),
        advice=ctx.advice,
    )


def _once_differentiable(outs: list[Any]) -> list[str]:
    """Names of the custom Functions in the graph behind `outs` whose backward is wrapped by
    ``torch.autograd.function.once_differentiable``."""
    found: list[str] = []
    seen: set[int] = set()
    stack = [o.grad_fn for o in outs if getattr(o, "grad_fn", None) is not None]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        cls = getattr(node, "_forward_cls", None)
        backward = getattr(cls, "backward", None)
        code = getattr(backward, "__code__", None)
        if cls is not None and hasattr(backward, "__wrapped__") and code is not None and code.co_name == "wrapper" and code.co_filename.replace("\\", "/").endswith("torch/autograd/function.py"):
            found.append(cls.__name__)
        stack.extend(next_node for next_node, _ in getattr(node, "next_functions", ()))
    return sorted(set(found))


def _symbolic_jacobian(text: str, x: Any) -> np.ndarray:
    """Diagonal Jacobian ``(n, n)`` of an elementwise formula in ``x``, derived by SymPy."""
    expression = parse_expression(text, ["x"], what="expr")
    derivative = sp.diff(expression, make_symbol("x"))
    fn = sp.lambdify([make_symbol("x")], derivative, modules=NUMPY_MODULES, cse=True)
    flat = to_real(x)
    with np.errstate(all="ignore"):
        values = np.broadcast_to(np.asarray(fn(flat), dtype=float), flat.shape)
    return np.diag(values)
