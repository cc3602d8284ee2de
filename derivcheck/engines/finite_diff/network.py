"""Finite differences of a float64 forward pass, with error estimates.

The forward pass is the layers' numpy forward in float64; only forward values are ever
perturbed. Two methods:

- ``"central"``: ``D(h) = (f(x+h) - f(x-h)) / 2h``, truncation error ``O(h^2)``, estimated
  as ``4/3 |D(h) - D(h/2)|``; default step ``h = eps^(1/3) * max(1, |x|)`` (about 6e-6),
  where truncation and rounding balance (error ~1e-10 in float64).
- ``"richardson"`` (default): ``R(h) = (4 D(h/2) - D(h)) / 3`` cancels the ``h^2`` term;
  the value reported is ``R(h/2)`` and its error is estimated by ``|R(h) - R(h/2)|``
  (the ``h^4`` term shrinks 16x per halving); default ``h = eps^(1/5) * max(1, |x|)``.

Every entry also carries a rounding-error estimate ``~ 10 eps max|f| / h_min``, with
``max|f|`` over the whole sample's outputs for per-sample quantities. Entries
whose perturbed evaluation flipped the side of a kink (a ReLU pre-activation changing
sign) are marked as excluded: a difference quotient across a kink measures nothing.

Per-sample quantities (dL/dx, dy/dx) perturb one input feature of every sample at once,
which is valid when every layer acts on samples independently; with a layer that couples
samples (batch normalisation in training mode) dL/dx is taken one entry at a time.

Forward passes are *stacked* where that is valid: for an entry of layer k's parameters,
layer k runs once per pass on the base pass's input to it, and the layers after it run once
for a chunk of passes concatenated along the sample axis (per-sample quantities stack their
moved inputs the same way). That needs every later layer to act on samples independently
and to draw no per-sample constants (:func:`_stackable`); otherwise each pass runs alone.
The numbers are those of one pass at a time, up to where BLAS rounds a longer batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from derivcheck.errors import InvalidArgument
from derivcheck.fields import FieldProblem
from derivcheck.problem import Problem
from derivcheck.quantities import FD_FULL_PARAMETERS, PARAM_DIRECTIONS, PARAM_DIRECTIONS_NAME, Quantity, param_directions
from derivcheck.values import EngineResult, EngineValue, Skipped
from derivcheck.engines.base import Engine

EPS = float(np.finfo(np.float64).eps)
METHODS = ("richardson", "central")


@dataclass
class _Eval:
    per_sample_loss: np.ndarray | None  # (N,)
    y: np.ndarray  # (N, out)
    kink_signs: list[np.ndarray | None]  # per layer: (N, units), True where the kink input is > 0; None without a kink
    layer_inputs: list[np.ndarray]  # per layer: the (N, features) array it was given
    crossed_samples: np.ndarray | None = None  # (N,): instead of kink_signs, which samples crossed a kink (stacked passes)


def _crossed(moved: _Eval, base: _Eval) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pairs of (moved, base) kink states of the layers that have kinks."""
    return [(a, b) for a, b in zip(moved.kink_signs, base.kink_signs) if a is not None and b is not None]


def _per_layer_params(problem: Problem) -> list[dict[str, np.ndarray]]:
    """The problem's parameters split by layer, local names (what each forward pass needs)."""
    return [problem.network.layer_params(problem.params, index) for index in range(len(problem.network.layers))]


def _any_crossed(moved: _Eval, base: _Eval) -> bool:
    return any(bool(np.any(a != b)) for a, b in _crossed(moved, base))


def _stackable(problem: Problem, start: int) -> bool:
    """Whether the layers from `start` on may run on several forward passes' samples
    stacked along the sample axis: each acts on every sample independently and draws no
    per-sample constants (a dropout mask or diffusion noise is drawn for the batch's
    shape, so a stacked batch would draw different ones)."""
    return all(layer.per_sample and not layer.n_sample_constants for layer in problem.network.layers[start:])


def _losses_and_crossings(evaluations: list[_Eval], base: _Eval) -> tuple[np.ndarray, np.ndarray]:
    """Mean loss and whether any kink was crossed, per forward pass."""
    losses = np.array([float(np.asarray(e.per_sample_loss).mean()) for e in evaluations])
    return losses, np.array([_any_crossed(e, base) for e in evaluations], dtype=bool)


STACK_VALUES = 1 << 20
"""Numbers one layer's stacked output may hold (8 MiB of float64): the chunk size of
stacked finite-difference passes."""


def _chunk_size(problem: Problem, start: int) -> int:
    """Forward passes to stack at once from layer `start` on (see :data:`STACK_VALUES`):
    sized by the most numbers one sample holds in any of those layers."""
    layers = problem.network.layers[start:]
    widest = max([1.0] + [float(np.prod(layer.in_shape or (1,))) + layer.held_values_per_sample() for layer in layers] + [float(np.prod(getattr(layer, "out_shape", ()) or (1,))) for layer in layers])
    return max(1, int(STACK_VALUES // (problem.x.shape[0] * widest)))


class FiniteDifferences(Engine):
    """Finite differences in float64 (see the module docstring).

    **Arguments:**

    - `method`: ``"richardson"`` (default) or ``"central"``.
    - `step`: the base step ``h`` relative to ``max(1, |x|)``; default per method.
    """

    name = "finite_diff"

    def __init__(self, method: str = "richardson", step: float | None = None):
        if method not in METHODS:
            raise InvalidArgument(f"finite-difference method must be one of {', '.join(METHODS)}, got {method!r}")
        if step is not None and not (isinstance(step, (int, float)) and 0 < step < 1):
            raise InvalidArgument(f"finite-difference step must be a number in (0, 1), got {step!r}")
        self.method = method
        self._field_step = float(step) if step is not None else None
        self.step = float(step) if step is not None else (EPS ** (1 / 5) if method == "richardson" else EPS ** (1 / 3))

    # -- forward -------------------------------------------------------------------------
    def _evaluate(
        self,
        problem: Problem,
        params: dict[str, np.ndarray],
        x: np.ndarray,
        start: int = 0,
        base: _Eval | None = None,
        local: list[dict[str, np.ndarray]] | None = None,
    ) -> _Eval:
        """The forward pass; with `start` > 0 the layers before `start` are not re-run:
        their inputs and kink states are taken from `base` (valid when only layer
        `start`'s parameters or later ones moved). `local` is the per-layer parameter
        dicts of `params` when the caller already has them."""
        network = problem.network
        if local is None:
            local = [network.layer_params(params, index) for index in range(len(network.layers))]  # `params`, not the problem's
        if start:
            assert base is not None
            inputs, signs = list(base.layer_inputs[:start]), list(base.kink_signs[:start])
            h = base.layer_inputs[start]
        else:
            inputs, signs, h = [], [], x
        for index in range(start, len(network.layers)):
            layer = network.layers[index]
            inputs.append(h)
            h, cache = layer.numpy_forward(h, local[index])
            signs.append(layer.kink_state(cache))
        per_sample = None
        if problem.loss is not None:
            assert problem.targets is not None
            per_sample, _ = problem.loss.numpy_forward(h, problem.targets)
        return _Eval(per_sample, h, signs, inputs)

    def _steps(self) -> list[float]:
        """Relative step multipliers evaluated on each side."""
        return [1.0, 0.5, 0.25] if self.method == "richardson" else [1.0, 0.5]

    def _combine(self, diffs: list[np.ndarray], h: np.ndarray | float, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """From central quotients at h, h/2 (, h/4) return (value, error estimate)."""
        rounding = 10 * EPS * scale / (np.asarray(h) * self._steps()[-1])
        if self.method == "central":
            return diffs[0], 4 / 3 * np.abs(diffs[0] - diffs[1]) + rounding
        r1 = (4 * diffs[1] - diffs[0]) / 3
        r2 = (4 * diffs[2] - diffs[1]) / 3
        return r2, np.abs(r1 - r2) + rounding

    def note(self) -> str:
        return f"{self.method}, h={self.step:.1e}*max(1,|x|)"

    # -- quantities ----------------------------------------------------------------------
    def compute(self, problem: Problem, quantities: Sequence[Quantity]) -> EngineResult:
        if isinstance(problem, FieldProblem):
            from derivcheck.engines.finite_diff.fields import compute_fields

            return compute_fields(problem, quantities, self.method, self._field_step)
        base = self._evaluate(problem, problem.params, problem.x)
        result: EngineResult = {}
        for q in quantities:
            if q.kind == "loss":
                assert base.per_sample_loss is not None
                result[q.name] = EngineValue(np.asarray(base.per_sample_loss.mean()), note="forward pass (numpy, float64)")
            elif q.kind == "param_grad":
                total = sum(int(np.prod(ref.shape)) for ref in problem.network.params())
                if total > FD_FULL_PARAMETERS:
                    result[q.name] = Skipped(
                        f"{total:,} parameters: differencing each would take {6 * total:,} forward passes; "
                        f"finite differences check {PARAM_DIRECTIONS_NAME} along {PARAM_DIRECTIONS} random directions instead"
                    )
                else:
                    result[q.name] = self._param_grad(problem, base, q.param)
            elif q.kind == "param_directions":
                result[q.name] = self._param_directions(problem, base)
            elif q.kind == "input_grad":
                result[q.name] = self._per_sample(problem, base, lambda e: np.asarray(e.per_sample_loss)[:, None] / problem.batch, q)
            elif q.kind == "jacobian":
                result[q.name] = self._per_sample(problem, base, lambda e: e.y, q)
            else:
                result[q.name] = Skipped(f"{q.name} is derived from this engine's gradients by the runner")
        return result

    def _param_directions(self, problem: Problem, base: _Eval) -> EngineValue:
        """``dL/dtheta · v_k`` for the fixed directions of :func:`param_directions`: one
        Richardson difference of the loss along each (all parameters move at once)."""
        assert base.per_sample_loss is not None
        refs = list(problem.network.params())
        sizes = [int(np.prod(ref.shape)) for ref in refs]
        directions = param_directions(sum(sizes))
        f0 = float(base.per_sample_loss.mean())
        values, errors = np.empty(len(directions)), np.empty(len(directions))
        excluded = np.zeros(len(directions), dtype=bool)
        for k, v in enumerate(directions):
            pieces = np.split(v, np.cumsum(sizes)[:-1])
            diffs, scale = [], abs(f0)
            for mult in self._steps():
                sides = []
                for sign in (1.0, -1.0):
                    moved = {ref.qualified: problem.params[ref.qualified] + sign * mult * self.step * piece.reshape(ref.shape) for ref, piece in zip(refs, pieces)}
                    evaluation = self._evaluate(problem, {**problem.params, **moved}, problem.x)
                    assert evaluation.per_sample_loss is not None
                    sides.append(float(evaluation.per_sample_loss.mean()))
                    if _any_crossed(evaluation, base):
                        excluded[k] = True
                scale = max(scale, abs(sides[0]), abs(sides[1]))
                diffs.append(np.asarray((sides[0] - sides[1]) / (2 * mult * self.step)))
            values[k], errors[k] = self._combine(diffs, self.step, np.asarray(scale))
        return self._value(values, errors, excluded)

    def _param_grad(self, problem: Problem, base: _Eval, name: str | None) -> EngineValue:
        assert name is not None
        ref = next(ref for ref in problem.network.params() if ref.qualified == name)
        original = problem.params[name]
        layer = problem.network.layers[ref.layer]
        local = _per_layer_params(problem)
        moved_layer = dict(local[ref.layer])
        moved_local = local[: ref.layer] + [moved_layer] + local[ref.layer + 1 :]
        stack = _stackable(problem, ref.layer + 1)

        def evaluate(requests: list[tuple[tuple[int, ...], float]]) -> tuple[np.ndarray, np.ndarray]:
            outputs, states, evaluations = [], [], []
            for index, delta in requests:
                value = original.copy()
                value[index] += delta
                moved_layer[ref.local] = value
                if stack:  # this layer per request, the later ones once for all requests
                    h, cache = layer.numpy_forward(base.layer_inputs[ref.layer], moved_layer)
                    outputs.append(h)
                    states.append(layer.kink_state(cache))
                else:  # the layers before this parameter's see nothing move: start at its layer
                    evaluations.append(self._evaluate(problem, problem.params, problem.x, start=ref.layer, base=base, local=moved_local))
            if not stack:
                return _losses_and_crossings(evaluations, base)
            per_sample, _, crossed = self._run_stacked(problem, base, outputs, ref.layer + 1, local, states)
            assert per_sample is not None
            return per_sample.mean(axis=1), np.asarray(crossed.any(axis=1))

        return self._entrywise(base, original, evaluate, chunk=_chunk_size(problem, ref.layer + 1) if stack else 1)

    def _run_stacked(
        self,
        problem: Problem,
        base: _Eval,
        inputs: list[np.ndarray],
        start: int,
        local: list[dict[str, np.ndarray]],
        moved_states: list[np.ndarray | None] | None = None,
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """B forward passes that differ only from layer `start` on, run at once:
        `inputs` holds the B ``(N, features)`` inputs of layer `start` (with
        `moved_states`, the kink states of the layer before it, which produced them).
        The layers from `start` on run once on the B batches stacked along the sample
        axis -- valid because each acts on samples independently (:func:`_stackable`).
        Returns the per-sample losses ``(B, N)`` (``None`` without a loss), the outputs
        ``(B, N, out)`` and, ``(B, N)``, whether a sample's kink state differs from
        `base`'s in any layer."""
        count, n = len(inputs), inputs[0].shape[0]
        crossed = np.zeros((count, n), dtype=bool)

        def mark(states: np.ndarray | None, reference: np.ndarray | None) -> None:
            if states is not None and reference is not None:
                crossed[:] |= np.any(states.reshape(count, n, -1) != reference.reshape(1, n, -1), axis=2)

        if moved_states is not None and moved_states[0] is not None:
            mark(np.stack(moved_states), base.kink_signs[start - 1])  # type: ignore[arg-type]
        h = np.concatenate(inputs)
        for index in range(start, len(problem.network.layers)):
            h, cache = problem.network.layers[index].numpy_forward(h, local[index])
            mark(problem.network.layers[index].kink_state(cache), base.kink_signs[index])
        per_sample = None
        if problem.loss is not None:
            assert problem.targets is not None
            values, _ = problem.loss.numpy_forward(h, np.tile(problem.targets, (count, 1)))
            per_sample = np.asarray(values).reshape(count, n)
        return per_sample, h.reshape(count, n, -1), crossed

    def _entrywise(
        self,
        base: _Eval,
        center: np.ndarray,
        evaluate: Callable[[list[tuple[tuple[int, ...], float]]], tuple[np.ndarray, np.ndarray]],
        chunk: int = 1,
    ) -> EngineValue:
        """d L / d `center`, one entry at a time: ``evaluate(requests)`` takes a list of
        (index, delta) and returns, for each, the mean loss of the forward pass with that
        entry moved by delta and whether it crossed a kink; it is called with about
        `chunk` requests at a time (whole entries: every step and side of one entry in
        the same call)."""
        assert base.per_sample_loss is not None
        f0 = float(base.per_sample_loss.mean())
        indices = list(np.ndindex(*center.shape))
        steps = np.array([self.step * max(1.0, abs(float(center[index]))) for index in indices])
        mults = self._steps()
        per_entry = 2 * len(mults)
        losses = np.empty((len(indices), len(mults), 2))
        crossed = np.zeros((len(indices), per_entry), dtype=bool)
        entries = max(1, chunk // per_entry)
        for first in range(0, len(indices), entries):
            block = range(first, min(first + entries, len(indices)))
            requests = [(indices[i], sign * mult * steps[i]) for i in block for mult in mults for sign in (1.0, -1.0)]
            values, flags = evaluate(requests)
            losses[block.start : block.stop] = values.reshape(len(block), len(mults), 2)
            crossed[block.start : block.stop] = flags.reshape(len(block), per_entry)
        diffs = [(losses[:, m, 0] - losses[:, m, 1]) / (2 * mult * steps) for m, mult in enumerate(mults)]
        scale = np.maximum(abs(f0), np.abs(losses).max(axis=(1, 2)))
        values, errors = self._combine(diffs, steps, scale)
        return self._value(values.reshape(center.shape), errors.reshape(center.shape), np.asarray(crossed.any(axis=1)).reshape(center.shape))

    def _per_sample(self, problem: Problem, base: _Eval, output: Callable[[_Eval], np.ndarray], q: Quantity) -> EngineValue:
        """Perturb feature j of every sample at once; `output(e)` is ``(N, K)``."""
        if not all(layer.per_sample for layer in problem.network.layers):
            if q.kind != "input_grad":
                return Skipped("a layer couples samples; per-sample finite differences do not apply")  # type: ignore[return-value]
            return self._entrywise_input_grad(problem, base)
        n, n_in = problem.x.shape
        k = output(base).shape[1]
        local = _per_layer_params(problem)
        mults = self._steps()
        steps = [self.step * np.maximum(1.0, np.abs(problem.x[:, j])) for j in range(n_in)]
        chunk = _chunk_size(problem, 0) if _stackable(problem, 0) else 1

        def passes() -> Iterator[_Eval]:
            """The moved forward passes in the order (feature, step, side), a chunk at a time."""
            moved_inputs = []
            for j in range(n_in):
                for mult in mults:
                    for sign in (1.0, -1.0):
                        x = problem.x.copy()
                        x[:, j] += sign * mult * steps[j]
                        moved_inputs.append(x)
                        if len(moved_inputs) == chunk:  # a chunk of 1 is a plain pass: nothing is stacked
                            yield from self._stacked_passes(problem, base, moved_inputs, local)
                            moved_inputs = []
            if moved_inputs:
                yield from self._stacked_passes(problem, base, moved_inputs, local)

        values = np.empty((n, k, n_in))
        errors = np.empty((n, k, n_in))
        excluded = np.zeros((n, k, n_in), dtype=bool)
        # rounding in an output entry comes from the sums that made the whole sample's
        # output, not from that entry's own size: an output of 5e-4 next to outputs of 0.3
        # carries the rounding of terms of size 0.3 (measured: 700x its own eps*|y|)
        f0 = np.broadcast_to(np.abs(output(base)).max(axis=1, keepdims=True), (n, k)).copy()
        moved = passes()
        for j in range(n_in):
            h = steps[j]
            diffs = []
            scale = f0.copy()
            for mult in mults:
                sides = []
                for _sign in (1.0, -1.0):
                    evaluation = next(moved)
                    sides.append(output(evaluation))
                    if evaluation.crossed_samples is not None:
                        excluded[evaluation.crossed_samples, :, j] = True
                    for a, b in _crossed(evaluation, base):
                        crossed = np.any((a != b).reshape(n, -1), axis=1)
                        excluded[crossed, :, j] = True
                scale = np.maximum(scale, np.maximum(np.abs(sides[0]), np.abs(sides[1])).max(axis=1, keepdims=True))
                diffs.append((sides[0] - sides[1]) / (2 * mult * h[:, None]))
            values[:, :, j], errors[:, :, j] = self._combine(diffs, h[:, None], scale)
        if q.kind == "input_grad":
            values, errors, excluded = values[:, 0, :], errors[:, 0, :], excluded[:, 0, :]
        return self._value(values, errors, excluded)

    def _entrywise_input_grad(self, problem: Problem, base: _Eval) -> EngineValue:
        """dL/dx one input entry at a time (a layer couples the samples, so perturbing
        feature j of every sample at once would mix their effects)."""
        local = _per_layer_params(problem)

        def evaluate(requests: list[tuple[tuple[int, ...], float]]) -> tuple[np.ndarray, np.ndarray]:
            evaluations = []
            for index, delta in requests:
                x = problem.x.copy()
                x[index] += delta
                evaluations.append(self._evaluate(problem, problem.params, x, local=local))
            return _losses_and_crossings(evaluations, base)

        return self._entrywise(base, problem.x, evaluate)

    def _stacked_passes(self, problem: Problem, base: _Eval, inputs: list[np.ndarray], local: list[dict[str, np.ndarray]]) -> list[_Eval]:
        """Whole forward passes of several inputs ``(N, in)``, stacked (see
        :meth:`_run_stacked`), as one :class:`_Eval` each, which says which samples
        crossed a kink instead of holding kink states; `layer_inputs` are left empty."""
        per_sample, y, crossed = self._run_stacked(problem, base, inputs, 0, local)
        return [_Eval(None if per_sample is None else per_sample[b], y[b], [], [], crossed_samples=crossed[b]) for b in range(len(inputs))]

    def _value(self, values: np.ndarray, errors: np.ndarray, excluded: np.ndarray) -> EngineValue:
        return EngineValue(
            values,
            error_estimate=errors,
            excluded=excluded if excluded.any() else None,
            excluded_reason="the finite-difference step crossed a kink" if excluded.any() else "",
            note=self.note(),
        )
