"""A float64 measuring stick for code that computes in float32, float16 or bfloat16.

A derivative computed in low precision can only be judged against a reference more precise
than itself. Finite differences of the user's forward give one -- if that forward runs in
float64. Passing float64 inputs is not enough where the function closes over tensors of its
own (``lambda x: MyGELU.apply(x @ W)`` with a float32 ``W``, a module's parameters and
buffers inside a lambda, a global), casts inside (``x.float()``, ``dtype=torch.float32``),
or builds low-precision constants: the forward then fails on mixed dtypes, or computes in
float32 anyway, and a float32 reference has float32-sized error bars that hide a 1e-3 bug.

:class:`Promotion` is a ``TorchFunctionMode``: inside it, every torch function sees its
low-precision floating tensors (arguments, closed-over tensors, module parameters -- at the
function level everything is an argument) widened to float64 (complex64 to complex128), and
low-precision ``dtype`` arguments and casts (``.float()``, ``.half()``, ``.to(torch.float32)``)
widened likewise. Widening is exact, so the promoted forward is the same mathematical
function evaluated in float64: its finite differences are exact to float64, and the
low-precision backward is judged against them with a bound from its own measured rounding
noise. (The same at ``__torch_dispatch__`` level fails on fused kernels such as LSTM's,
which pick their kernel by dtype below the dispatcher.)

What cannot be promoted is reported by :func:`promoted_outputs_ok`: code outside torch
(numpy inside a custom Function, which sees float64 arrays only if it is dtype-generic), a
hard-coded ``np.float32``, or ``torch.autocast`` inside the function leave a low-precision
output, and the caller falls back to the user's own dtype and says so.
"""

from __future__ import annotations

from typing import Any

LOW_REAL = ("float32", "float16", "bfloat16")
LOW_COMPLEX = ("complex64", "complex32")


def _torch() -> Any:
    import torch

    return torch


def wide_dtype(dtype: Any) -> Any:
    """float64 (complex128) for a low-precision floating (complex) dtype; else `dtype`."""
    torch = _torch()
    name = str(dtype).replace("torch.", "")
    if name in LOW_REAL:
        return torch.float64
    if name in LOW_COMPLEX:
        return torch.complex128
    return dtype


def is_low_precision(t: Any) -> bool:
    """Whether `t` is a tensor of a low-precision floating or complex dtype."""
    torch = _torch()
    return isinstance(t, torch.Tensor) and str(t.dtype).replace("torch.", "") in LOW_REAL + LOW_COMPLEX


_MODE_CLASS: type | None = None

METADATA = frozenset({"dim", "size", "stride", "numel", "is_floating_point", "is_complex", "__len__", "data_ptr", "is_contiguous", "storage_offset", "element_size"})
"""Methods that read a tensor's shape or layout (``x.dim()``, ``x.size()``): nothing in them
depends on the dtype, so the mode passes them through without widening their arguments (an
``nn.LSTM`` calls dozens per call). Property getters are not among them: ``w.dtype`` must
read float64 for a widened ``w`` (``nn.LSTM`` compares its input's dtype with its
weights')."""


def _make_mode_class() -> type:
    torch = _torch()
    from torch.overrides import TorchFunctionMode
    from torch.utils.weak import WeakIdKeyDictionary

    narrowing = {torch.Tensor.float, torch.Tensor.half, torch.Tensor.bfloat16, torch.Tensor.cfloat, torch.Tensor.chalf}
    low = frozenset({torch.float32, torch.float16, torch.bfloat16, torch.complex64, torch.complex32})

    def needs(value: Any) -> bool:
        """Whether `value` holds anything to widen (the common case, nothing, is fast)."""
        if isinstance(value, torch.Tensor):
            return value.dtype in low
        if isinstance(value, torch.dtype):
            return value in low
        if isinstance(value, (list, tuple)):
            return any(needs(v) for v in value)
        if isinstance(value, dict):
            return any(needs(v) for v in value.values())
        return False

    complex_casts = {torch.Tensor.cfloat, torch.Tensor.chalf}

    class _Promotion(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.cache: Any = WeakIdKeyDictionary()
            self.promoted = 0  # tensors widened, dtype arguments and casts redirected
            self.coarsest = 0.0  # eps of the least precise dtype it widened

        def saw(self, dtype: Any) -> None:
            self.promoted += 1
            real = {torch.complex64: torch.float32, torch.complex32: torch.float16}.get(dtype, dtype)
            self.coarsest = max(self.coarsest, float(torch.finfo(real).eps))

        def widen(self, value: Any) -> Any:
            if isinstance(value, torch.dtype):
                wide = wide_dtype(value)
                if wide is not value:
                    self.saw(value)
                return wide
            if isinstance(value, (list, tuple)):
                items = [self.widen(v) for v in value]
                return type(value)(items) if not hasattr(value, "_fields") else type(value)(*items)
            if isinstance(value, dict):
                return {k: self.widen(v) for k, v in value.items()}
            if not is_low_precision(value):
                return value
            # a closed-over tensor (a module's weight) is read by every forward pass: widen
            # it once, again only after an in-place change (its version counter moved)
            cached = self.cache.get(value)
            version = value._version
            if cached is not None and cached[0] == version:
                return cached[1]
            wide = value.to(wide_dtype(value.dtype))
            self.saw(value.dtype)
            self.cache[value] = (version, wide)
            return wide

        def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
            kwargs = kwargs or {}
            if getattr(func, "__name__", "") in METADATA:  # nothing to compute, nothing to widen
                return func(*args, **kwargs)
            if func not in narrowing and not needs(args) and not needs(kwargs):
                return func(*args, **kwargs)
            if func in narrowing:
                self.saw({torch.Tensor.half: torch.float16, torch.Tensor.bfloat16: torch.bfloat16, torch.Tensor.chalf: torch.float16}.get(func, torch.float32))
                func = torch.Tensor.cdouble if func in complex_casts else torch.Tensor.double  # keep the target real or complex
            return func(*self.widen(args), **self.widen(kwargs))

    return _Promotion


def Promotion() -> Any:
    """A context manager (a fresh ``TorchFunctionMode``) under which torch computes in
    float64 (complex128) whatever dtypes the code asks for; its `promoted` attribute counts
    what it changed: low-precision tensors widened, dtype arguments and casts redirected."""
    global _MODE_CLASS
    if _MODE_CLASS is None:
        _MODE_CLASS = _make_mode_class()
    return _MODE_CLASS()


def low_precision_outputs(tensors: list[Any]) -> list[int]:
    """Indices of floating output tensors that are not float64/complex128 (promotion did
    not reach them: numpy inside, a hard-coded float32, autocast)."""
    return [k for k, t in enumerate(tensors) if is_low_precision(t)]
