"""How much rounding alone moves a torch computation: Monte-Carlo arithmetic.

A derivative computed in floating point is wrong by its rounding error, and that error can
be far larger than ``eps * |result|``: a gradient that cancels (``log_softmax`` followed by
``logsumexp``, a LayerNorm backward), a saturated chain (``1 - sigmoid(x)`` rounds to 0 in
float32 long before it does in float64) or a long reduction all carry errors relative to the
size of their *intermediate* values. No tolerance on the final numbers can know that.

:class:`RoundingNoise` measures it instead. Under it, every operator that rounds gets its
floating-point inputs multiplied by ``1 + d``, ``|d|`` drawn uniformly from
``[eps, 2 eps]`` (``eps`` of the tensor's dtype, twice the unit roundoff ``u``: every
value moves by at least one unit in the last place) with a random sign:
the backward-error model of floating-point arithmetic: a kernel (an addition, a matmul,
a reduction, a fused LayerNorm backward) computes exactly what it should on inputs moved
by about one rounding each. The rounding of one operator's result is thus modelled where
the next operator reads it, and a kernel's internal cancellation shows in the spread.
The perturbation is two to four times the worst case, so that a value never rounds back
to itself: a saturated ``1 - p`` with ``p`` exactly 1.0 moves in every run, not in half. Running the user's forward and backward a few times under
it and taking the spread of the results gives a per-entry estimate of the rounding noise of
that very computation, in its own dtype (Monte-Carlo arithmetic, as in Parker's MCA and
CADNA's stochastic rounding). A derivative is only blamed when it misses its reference by
many times that noise.

The mode works at the level of ATen operators (a ``TorchDispatchMode``), so it sees inside
``nn`` modules, custom ``autograd.Function`` backwards written in torch, and the backward
pass itself. Operators whose results are exact (views, copies, indexing, comparisons,
``max``/``min``/``relu``, ``where``, constructors) are left alone, as are in-place and
aliasing operators. Arithmetic done outside torch (numpy inside a custom Function) is not
perturbed, so its noise is not counted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

EXACT_OPS = frozenset(
    """
    abs alias amax amin arange argmax argmin as_strided bitwise_and bitwise_not bitwise_or cat
    ceil clamp clamp_max clamp_min clone constant_pad_nd copy detach diag_embed diagonal
    embedding empty empty_like empty_strided eq expand eye fill flip floor full full_like gather
    ge gt hardtanh index index_put index_select isnan le lift_fresh lift_fresh_copy logical_and
    logical_not logical_or lt masked_fill max maximum min minimum ne neg new_empty new_full
    new_ones new_zeros ones ones_like permute reflection_pad1d reflection_pad2d relu repeat
    replication_pad1d replication_pad2d roll round scalar_tensor select select_scatter sign
    slice slice_scatter sort split squeeze stack t threshold threshold_backward topk transpose
    tril triu trunc unbind unsqueeze view where zero zeros zeros_like _unsafe_view
    _to_dense _reshape_alias
    """.split()
)
"""ATen operators (by their overload packet's name, ``_copy`` variants included) whose
floating-point results are exact: no rounding noise is added to them."""


CANCELLING_OPS = frozenset(
    """
    add sub rsub addcmul addcdiv lerp sum mean nansum cumsum mm bmm
    addmm addbmm baddbmm matmul dot vdot mv addmv addr tensordot einsum linear
    _softmax_backward_data _log_softmax_backward_data var var_mean
    std std_mean norm _euclidean_dist cdist _cdist_forward _cdist_backward convolution
    convolution_backward _convolution embedding_dense_backward index_add scatter_add
    scatter_reduce index_put _index_put_impl sigmoid_backward tanh_backward trace gelu
    gelu_backward silu_backward logit logit_backward mse_loss mse_loss_backward l1_loss
    smooth_l1_loss smooth_l1_loss_backward huber_loss huber_loss_backward binary_cross_entropy
    binary_cross_entropy_backward binary_cross_entropy_with_logits kl_div cosine_similarity pdist
    _pdist_forward _pdist_backward multi_margin_loss multilabel_margin_loss_forward
    """.split()
)
"""Operators whose result can cancel -- be far smaller than their operands -- and so carry
an absolute rounding error of about ``eps`` times their operands' size: additions and
reductions, products that sum (matmul, convolution), and fused kernels built on them
(softmax and normalisation backwards, ``1 - s`` in sigmoid's, ``1 + erf`` in GELU, the
differences inside losses). Multiplications,
divisions and elementwise functions err relative to their own result and are not counted;
nor are softmax, log_softmax and logsumexp themselves, which subtract their inputs' maximum
first (a ``-1e6`` mask among the logits does not make their outputs any less accurate).
Names starting with one of :data:`CANCELLING_PREFIXES` count too."""

ELEMENTARY_OPS = frozenset(
    """
    add sub rsub addcmul addcdiv lerp sum mean nansum cumsum mm bmm addmm addbmm baddbmm matmul
    dot vdot mv addmv addr tensordot einsum linear trace index_add scatter_add
    embedding_dense_backward convolution convolution_backward _convolution var var_mean std
    std_mean sigmoid_backward tanh_backward logit_backward _softmax_backward_data mse_loss
    mse_loss_backward l1_loss
    """.split()
)
"""Cancelling operators whose cancellation the Monte-Carlo runs see in full: what cancels
is among their inputs (``a - b``, a sum of products, ``1 - s`` in ``sigmoid_backward(g,
s)``), so moving the inputs by a rounding each moves the result by its rounding error,
scaled by whatever follows. A fused kernel that cancels a value it computes inside
(``gelu`` far left: ``1 + erf(x)``; ``_log_softmax_backward_data``: ``exp(out) *
sum(grad)``; ``silu_backward``: ``1 - sigmoid(x)``) can be flat to that perturbation yet
round to ``eps`` of its operands: the Monte-Carlo runs add that error to their results
(:func:`fused_error_size`), where the rest of the computation scales it."""

OBSERVED_OPERANDS = {"_softmax_backward_data": (0,), "_log_softmax_backward_data": (0,)}
"""Operators whose cancellation involves only some operands: softmax backwards sum the
output gradient weighted by probabilities (``exp`` of log-probabilities a mask may have
set to -1e6), so only the gradient's size sets their rounding floor."""

CANCELLING_PREFIXES = (
    "linalg_",
    "_linalg_",
    "_scaled_dot_product",
    "native_",
    "_native_",
    "upsample_",
    "_upsample_",
    "avg_pool",
    "_adaptive_avg_pool",
    "adaptive_avg_pool",
    "cudnn_",
    "miopen_",
    "mkldnn_",
    "_fused",
    "fused_",
    "_batch_norm",
)


def _cancels(func: Any) -> bool:
    name = _op_name(func)
    return name in CANCELLING_OPS or name.startswith(CANCELLING_PREFIXES)


def _is_cast(func: Any) -> bool:
    """Whether `func` is ``aten._to_copy`` (``.to(dtype)``, ``.double()``, ``.float()``)."""
    return getattr(getattr(func, "overloadpacket", None), "__name__", "") == "_to_copy"


def _op_name(func: Any) -> str:
    name = func.overloadpacket.__name__ if hasattr(func, "overloadpacket") else str(func)
    name = name.removesuffix("_copy") if name.endswith("_copy") and name != "copy" else name
    return name


def _rounds(func: Any, args: tuple[Any, ...], out: Any) -> bool:
    """Whether `func`'s floating results carry rounding error (and may be replaced)."""
    schema = getattr(func, "_schema", None)
    if schema is None or schema.is_mutable or any(r.alias_info is not None for r in schema.returns):
        return False
    name = _op_name(func)
    if _is_cast(func):  # a cast rounds only when it narrows the dtype
        import torch

        if out is None:
            return False

        source = next((a for a in args if isinstance(a, torch.Tensor)), None)
        target = out if isinstance(out, torch.Tensor) else None
        return bool(source is not None and target is not None and source.is_floating_point() and target.is_floating_point() and torch.finfo(target.dtype).eps > torch.finfo(source.dtype).eps)
    return name not in EXACT_OPS


_POOLS: dict[tuple[str, Any], Any] = {}
CHUNK = 1 << 16
"""Random factors are drawn in chunks of this many, each from its own seed, and read at an
offset below ``CHUNK``: a perturbation depends on its seed and its tensor's size only, not
on what the process perturbed before (a pool grown for a larger tensor keeps its prefix)."""


def _pool(count: int, dtype: Any, device: Any) -> Any:
    """Random factors ``d``, ``|d|`` uniform in ``[1, 4]`` with a random sign, at least
    ``CHUNK + count`` of them, in `dtype` on `device`: drawn once per process (seeded, in
    chunks, see :data:`CHUNK`) and read at a random offset per perturbed tensor, so a
    perturbation costs one fused operation instead of fresh random numbers for every entry
    of every operand."""
    import torch

    key = (str(device), dtype)
    pool = _POOLS.get(key)
    if pool is None or pool.numel() < CHUNK + count:
        chunks = []
        for k in range((CHUNK + count + CHUNK - 1) // CHUNK):
            gen = torch.Generator(device="cpu")
            gen.manual_seed(20261201 + k)
            magnitude = torch.rand(CHUNK, generator=gen, dtype=torch.float64).mul_(3.0).add_(1.0)
            sign = torch.randint(0, 2, (CHUNK,), generator=gen).to(torch.float64).mul_(2).sub_(1)
            chunks.append(magnitude * sign)
        pool = torch.cat(chunks).to(device=device, dtype=dtype)
        _POOLS[key] = pool
    return pool


def _offset(gen: Any, device: Any) -> int:
    """Where a perturbation reads the pool: below :data:`CHUNK`, from the run's generator."""
    import torch

    return int(torch.randint(0, CHUNK, (1,), generator=gen, device=device))


def _skip_dynamo(cls: type) -> bool:
    """Whether torch should wrap our ``__torch_dispatch__`` in ``torch._dynamo.disable`` --
    which imports Dynamo (a second of start-up) on a mode's first use. Only needed when
    Dynamo is there to compile through the mode (the user imported it: torch.compile);
    otherwise the wrapper is skipped and a check pays no import it does not need."""
    import sys

    return "torch._dynamo" in sys.modules


def _make_mode_class() -> type:
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class _RoundingNoise(TorchDispatchMode):
        _should_skip_dynamo = classmethod(_skip_dynamo)  # type: ignore[var-annotated]

        def __init__(self, seed: int, scale: float = 1.0) -> None:
            super().__init__()
            self.seed = seed
            self.scale = scale
            self.generators: dict[Any, Any] = {}
            self.perturbed = 0
            self.unamplified = False  # a half-precision tensor was perturbed at scale 1

        def _generator(self, device: Any) -> Any:
            key = str(device)
            if key not in self.generators:
                gen = torch.Generator(device=device)
                gen.manual_seed(self.seed)
                self.generators[key] = gen
            return self.generators[key]

        def _perturb(self, t: Any) -> Any:
            if not isinstance(t, torch.Tensor) or t.numel() == 0 or t.device.type not in ("cpu", "cuda") or t._is_zerotensor() or t.layout != torch.strided:
                return t
            if t.is_complex():
                real = torch.view_as_real(t)
                return torch.view_as_complex(self._perturb_real(real).contiguous())
            if not t.is_floating_point():
                return t
            return self._perturb_real(t)

        def _perturb_real(self, t: Any) -> Any:
            gen = self._generator(t.device)
            unit = torch.finfo(t.dtype).eps
            self.unamplified |= unit >= 1e-6 and self.scale != 1.0
            unit = unit * self.scale if unit < 1e-6 else unit  # half precisions: no amplification
            count = t.numel()
            pool = _pool(count, t.dtype, t.device)
            start = _offset(gen, t.device)
            factors = pool[start : start + count].view(t.shape)
            self.perturbed += 1
            return torch.addcmul(t, t, factors, value=unit)

        def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
            kwargs = kwargs or {}
            if _is_cast(func):
                # a cast: exact when it widens (float32 -> float64, an integer -> float) or
                # keeps the dtype (a device copy); a narrowing cast rounds its *result*, to
                # the target dtype's precision
                out = func(*args, **kwargs)
                return self._perturb(out) if _rounds(func, args, out) else out
            if not _rounds(func, args, None):
                return func(*args, **kwargs)
            # the kernel computes exactly on inputs moved by a rounding each
            out = func(*(self._perturb(a) if isinstance(a, torch.Tensor) else a for a in args), **kwargs)
            if _cancels(func) and _op_name(func) not in ELEMENTARY_OPS:
                out = self._inject(func, args, out)
            return out

        def _inject(self, func: Any, args: tuple[Any, ...], out: Any) -> Any:
            """A fused kernel that cancels a value it computes inside errs by ``eps`` of
            that value, which moving its inputs does not reproduce: add it to its result
            (see :func:`fused_error_size`), where the rest of the computation scales it."""
            if not isinstance(out, torch.Tensor) or not out.is_floating_point() or not out.numel() or out.layout != torch.strided or out.device.type not in ("cpu", "cuda"):
                return out
            size = fused_error_size(func, args, out)
            if size is None:
                return out
            unit = torch.finfo(out.dtype).eps
            self.unamplified |= unit >= 1e-6 and self.scale != 1.0
            unit = unit * self.scale if unit < 1e-6 else unit
            pool = _pool(out.numel(), out.dtype, out.device)
            start = _offset(self._generator(out.device), out.device)
            factors = pool[start : start + out.numel()].view(out.shape)
            self.perturbed += 1
            return torch.addcmul(out, size, factors, value=unit)

    return _RoundingNoise


def fused_error_size(func: Any, args: tuple[Any, ...], out: Any) -> Any:
    """The size of a fused cancelling kernel's rounding error, per element of `out` (a
    tensor broadcastable to it), or ``None`` when it has no floating operands.

    - a backward kernel (``silu_backward(grad, x)``, ``gelu_backward``) multiplies what it
      computes inside by the incoming gradient: ``|grad| * max(1, |x|)`` per element;
    - another elementwise kernel (``gelu(x)`` far left: ``x (1 + erf(x/sqrt 2)) / 2``):
      its largest operand per element, at least 1 where it is an argument of a
      transcendental it subtracts from 1;
    - ``_log_softmax_backward_data`` (``grad - exp(out) sum(grad)``): the size of each term;
    - another kernel that reduces (losses, norms): the largest magnitude of its gradient
      operand (or of all operands), one number for every element.
    """
    import torch

    name = _op_name(func)
    if name == "_log_softmax_backward_data" and len(args) >= 3 and isinstance(args[0], torch.Tensor) and isinstance(args[1], torch.Tensor):
        # grad - exp(out) * sum(grad): each term rounds to eps of itself
        grad, logp = args[0].detach().to(out.dtype), args[1].detach().to(out.dtype)
        total = grad.sum(dim=args[2], keepdim=True).abs()
        return torch.nan_to_num(grad.abs() + torch.exp(logp) * total, nan=0.0, posinf=0.0)
    chosen = OBSERVED_OPERANDS.get(name)
    tensors = [a.detach() for k, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point() and a.numel() and a.layout == torch.strided and (chosen is None or k in chosen)]
    if not tensors:
        return None
    backward = "_backward" in name
    elementwise = chosen is None and all(t.dim() <= out.dim() and _broadcasts(t.shape, out.shape) for t in tensors)
    if elementwise:
        sizes = [torch.nan_to_num(t.abs().to(out.dtype), nan=0.0, posinf=0.0) for t in tensors]
        if backward and len(sizes) > 1:
            rest = sizes[1]
            for more in sizes[2:]:
                rest = torch.maximum(rest, more)
            return sizes[0] * rest.clamp_min(1.0)
        size = sizes[0]
        for more in sizes[1:]:
            size = torch.maximum(size, more)
        return size.clamp_min(1.0) if not backward else size
    picked = tensors[:1] if backward else tensors
    return torch.tensor(max(_operand_size(t) for t in picked), dtype=out.dtype, device=out.device)


def _broadcasts(shape: Any, target: Any) -> bool:
    try:
        import torch

        return tuple(torch.broadcast_shapes(tuple(shape), tuple(target))) == tuple(target)
    except RuntimeError:
        return False


def _make_observer_class() -> type:
    from torch.utils._python_dispatch import TorchDispatchMode

    class _OperandMagnitude(TorchDispatchMode):
        _should_skip_dynamo = classmethod(_skip_dynamo)  # type: ignore[var-annotated]

        def __init__(self, overall: bool = False) -> None:
            super().__init__()
            self.magnitude = 0.0
            self.track_all = overall
            self.overall = 0.0

        def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
            if _rounds(func, args, None):
                cancels = _cancels(func)
                if cancels or self.track_all:
                    chosen = OBSERVED_OPERANDS.get(_op_name(func)) if cancels else None
                    for k, a in enumerate(args):
                        if chosen is not None and k not in chosen:
                            continue
                        size = _operand_size(a)
                        if cancels:
                            self.magnitude = max(self.magnitude, size)
                        self.overall = max(self.overall, size)
            return func(*args, **(kwargs or {}))

    return _OperandMagnitude


def _operand_size(a: Any) -> float:
    """The largest finite magnitude in a floating tensor (0 for anything else); a stand-in
    for infinity (``finfo.min`` as -inf in a mask) does not count."""
    import torch

    if not (isinstance(a, torch.Tensor) and a.numel() and (a.is_floating_point() or a.is_complex()) and a.device.type in ("cpu", "cuda") and a.layout == torch.strided and not a._is_zerotensor()):
        return 0.0
    data = torch.view_as_real(a.detach()) if a.is_complex() else a.detach()
    low, high = torch.aminmax(data)
    size = max(abs(float(low)), abs(float(high)))
    sentinel = float(torch.finfo(data.dtype).max) / 2
    if not size < sentinel:  # inf, NaN, or a stand-in for infinity
        magnitude = data.abs()
        size = float(torch.where(magnitude < sentinel, magnitude, torch.zeros_like(magnitude)).max())
    return size


_MODE_CLASS: type | None = None
_OBSERVER_CLASS: type | None = None


def observed(compute: Callable[[], Any]) -> tuple[Any, float]:
    """`compute()` and the largest magnitude among the floating operands of the operators
    it ran that can cancel (:data:`CANCELLING_OPS`): a result computed from operands of
    size ``M`` carries a rounding error up to about ``eps M`` however small it is itself (a
    cancellation that lands on a neighbouring float, a saturated ``1 - p``), which is the
    floor :func:`magnitude_floor` gives. It matters for *quantised* results, which the
    Monte-Carlo runs can miss (see :data:`SCALES`). If the observer cannot run, the
    magnitude is 0."""
    global _OBSERVER_CLASS
    if _OBSERVER_CLASS is None:
        _OBSERVER_CLASS = _make_observer_class()
    mode = _OBSERVER_CLASS()
    try:
        with mode:
            value = compute()
    except Exception:  # noqa: BLE001 - code that cannot run under a dispatch mode: no floor
        return compute(), 0.0
    return value, float(mode.magnitude)


def observed_sizes(compute: Callable[[], Any]) -> tuple[Any, float, float]:
    """Like :func:`observed`, and also the largest magnitude among the floating operands of
    *every* rounding operator it ran: the size of the numbers the computation works with
    (its inputs, weights, intermediates), whatever its result's size."""
    global _OBSERVER_CLASS
    if _OBSERVER_CLASS is None:
        _OBSERVER_CLASS = _make_observer_class()
    mode = _OBSERVER_CLASS(overall=True)
    try:
        with mode:
            value = compute()
    except Exception:  # noqa: BLE001 - code that cannot run under a dispatch mode
        return compute(), 0.0, 0.0
    return value, float(mode.magnitude), float(mode.overall)


EPS_BY_NAME = {"float64": float(np.finfo(np.float64).eps), "float32": float(np.finfo(np.float32).eps), "float16": float(np.finfo(np.float16).eps), "bfloat16": 2.0**-7}


def magnitude_floor(dtype: str, magnitude: float) -> float:
    """The rounding floor ``eps(dtype) * magnitude`` (see :func:`observed`)."""
    return EPS_BY_NAME[dtype] * magnitude


def RoundingNoise(seed: int, scale: float = 1.0) -> Any:
    """A context manager: inside it, every rounding torch operator's floating inputs get a
    random relative perturbation of one to four ``eps`` of their dtype (seeded), times
    `scale`."""
    global _MODE_CLASS
    if _MODE_CLASS is None:
        _MODE_CLASS = _make_mode_class()
    return _MODE_CLASS(seed, scale)


SCALES = (8.0, 1.0)
"""Perturbation sizes of successive noise runs (cycled). A result may be *quantised*: a
cancellation that lands on one of two or three neighbouring floats (``1 - sum(p)`` is
either 0 or one ulp), so that runs at the ordinary size can all land where the unperturbed
run did and see no spread. A run at 8 times the size moves such a result across several
levels; :func:`spread` divides its deviation by half that factor (linear response, with a
factor 2 to spare) before taking the largest."""


class NoiseSamples(list):
    """Results of :func:`noisy_runs` (a list of arrays), with the perturbation `scales`."""

    def __init__(self, values: list[np.ndarray] | None = None, scales: list[float] | None = None):
        super().__init__(values or [])
        self.scales = list(scales or [])

    def map(self, fn: Callable[[np.ndarray], Any]) -> NoiseSamples:
        """The samples transformed by `fn` (e.g. projected on a direction), same scales."""
        return NoiseSamples([np.asarray(fn(v), dtype=np.float64) for v in self], self.scales)


def spread(samples: list[np.ndarray], base: np.ndarray) -> np.ndarray:
    """Per-entry rounding-noise estimate from :func:`noisy_runs` samples: the largest
    ``|sample - base|``, each divided by half its run's perturbation scale (NaN-free)."""
    base = np.asarray(base, dtype=np.float64)
    if not samples:
        return np.zeros_like(base)
    scales = getattr(samples, "scales", [1.0] * len(samples))
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: no information, counted as 0
        deviations = [np.abs(np.asarray(sample, dtype=np.float64) - base) / max(1.0, scale / 2) for sample, scale in zip(samples, scales)]
        deviation = np.max(np.stack(deviations), axis=0)
    return np.where(np.isfinite(deviation), deviation, 0.0)


def noisy_runs(compute: Callable[[], np.ndarray], samples: int, seed: int) -> NoiseSamples:
    """`compute()` run `samples` times under :func:`RoundingNoise` (seeds ``seed+1...``,
    scales cycling through :data:`SCALES`).

    A run that raises (an operator the perturbation upsets, e.g. a data-dependent branch
    that now takes a path the code cannot handle) is dropped: the noise is then estimated
    from the runs that worked.
    """
    out = NoiseSamples()
    for k in range(samples):
        scale = SCALES[k % len(SCALES)]
        mode = RoundingNoise(seed + 1 + k, scale)
        try:
            with mode:
                value = np.asarray(compute(), dtype=np.float64)
        except Exception:  # noqa: BLE001 - a perturbed run that fails tells nothing about noise
            continue
        out.append(value)
        # half precisions are perturbed at scale 1 (8 eps of bfloat16 is 6%): their
        # deviation must not be divided as if amplified
        out.scales.append(1.0 if mode.unamplified else scale)
    return out
