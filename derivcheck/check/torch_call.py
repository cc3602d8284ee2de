"""A user's torch function seen as a map between flat real vectors.

``check_torch`` differentiates whatever the user passes, written the way people write it:
``f(x, w)``, ``model(x)``, ``loss(logits, labels, reduction="mean")``, a function of a dict
of tensors, one returning ``(loss, aux)`` or a dict. :class:`TorchCall` sorts the
arguments into

- *slots*: every floating-point or complex tensor among the inputs (nested in tuples,
  lists and dicts too) and, for an ``nn.Module``, its floating parameters -- these are
  differentiated;
- everything else (integer tensors such as labels or indices, floats, ints, ``None``,
  strings), passed through untouched and never differentiated.

As in ``gradcheck``: when some floating tensors have ``requires_grad=True``, only those are
differentiated (a target or a mask passed with ``requires_grad=False`` passes through);
when none has it -- plain tensors, the common case -- all of them are.

Each slot occupies a range of one flat float64 vector of *real coordinates*: a real tensor
its entries, a complex tensor the real and imaginary part of each entry (interleaved, as
``torch.view_as_real`` lays them out). Outputs are flattened the same way by
:class:`OutputSpec`. In these coordinates every derivative is an ordinary real Jacobian:
a complex function's Wirtinger and conjugate Wirtinger derivatives are combinations of its
entries (``dL/dz* = (dL/dx + i dL/dy) / 2``), and PyTorch's convention for complex gradients
(the gradient of a real ``L`` is ``dL/dx + i dL/dy``, a complex cotangent ``a + ib`` stands
for ``L = a Re(o) + b Im(o)``) maps onto it exactly. That is also how ``gradcheck`` checks
complex functions (real and imaginary parts of inputs and outputs separately).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from derivcheck.errors import InvalidArgument, InvalidType
from derivcheck.check.preserve import buffer_resetter, overlaps, reset_state
from derivcheck.check.tree import Path, flatten, path_name, unflatten


def _torch() -> Any:
    import torch

    return torch


def is_differentiable_tensor(value: Any) -> bool:
    torch = _torch()
    return isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex())


@dataclass
class Slot:
    """One differentiated tensor: an input (at `path` in the arguments) or a parameter."""

    name: str
    tensor: Any
    offset: int = 0
    path: Path | None = None
    param: str | None = None

    @property
    def is_complex(self) -> bool:
        return bool(self.tensor.is_complex())

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)

    @property
    def size(self) -> int:
        """Real coordinates: entries, twice that for a complex tensor."""
        return int(self.tensor.numel()) * (2 if self.is_complex else 1)

    @property
    def cols(self) -> slice:
        return slice(self.offset, self.offset + self.size)

    def label(self, j: int) -> str:
        """Name of real coordinate `j` of this slot: ``weight[1, 0]``, ``z[2].im``."""
        entry, part = divmod(j, 2) if self.is_complex else (j, None)
        index = np.unravel_index(entry, self.shape) if self.shape else ()
        text = self.name + (f"[{', '.join(str(int(i)) for i in index)}]" if index else "")
        return text + ("" if part is None else (".re" if part == 0 else ".im"))


def to_real(t: Any) -> np.ndarray:
    """A tensor's real coordinates as a flat float64 array (complex: interleaved re, im)."""
    torch = _torch()
    t = t.detach()
    if t.is_complex():
        t = torch.view_as_real(t.resolve_conj())
    return t.to(torch.float64).reshape(-1).numpy(force=True).copy() if t.numel() else np.zeros(0)


def from_real(flat: np.ndarray, shape: tuple[int, ...], dtype: Any, device: Any) -> Any:
    """The inverse of :func:`to_real`: a tensor of `shape` and `dtype` on `device`."""
    torch = _torch()
    if dtype.is_complex:
        real_dtype = torch.float64 if dtype == torch.complex128 else torch.float32
        pairs = torch.as_tensor(np.ascontiguousarray(flat).reshape(*shape, 2), dtype=real_dtype, device=device)
        return torch.view_as_complex(pairs.contiguous()).to(dtype)
    return torch.as_tensor(np.ascontiguousarray(flat).reshape(shape), dtype=dtype, device=device)


_TORCH_NAMESPACES = ("torch", "torch.nn.functional", "torch.special", "torch.linalg", "torch.fft", "torch.Tensor")
_torch_names: dict[int, str] | None = None


def _public_torch_names() -> dict[int, str]:
    """id(function) -> its public name, ``torch.special.expit`` rather than the internal
    ``special_expit`` (first namespace wins: ``torch.conv2d`` is ``F.conv2d``)."""
    global _torch_names
    if _torch_names is None:
        import importlib
        import warnings

        found: dict[int, str] = {}
        with warnings.catch_warnings():  # reading a deprecated attribute may warn; nothing is called
            warnings.simplefilter("ignore")
            for namespace in _TORCH_NAMESPACES:
                module = importlib.import_module(namespace) if namespace != "torch.Tensor" else _torch().Tensor
                for attr in dir(module):
                    if attr.startswith("_") and not (attr.startswith("__") and namespace == "torch.Tensor"):
                        continue
                    try:
                        obj = getattr(module, attr)
                    except Exception:  # noqa: BLE001 - a lazy attribute that fails to load
                        continue
                    if callable(obj) and not isinstance(obj, type):
                        found.setdefault(id(obj), f"{namespace}.{attr}")
        _torch_names = found
    return _torch_names


def describe(fn: Any, name: str | None = None) -> str:
    """A readable name for `fn`: ``name=``, a Function's or Module's class name,
    ``torch.tanh`` for torch built-ins, the function's qualified name otherwise."""
    if name:
        return name
    torch = _torch()
    if isinstance(fn, torch.nn.Module):
        return type(fn).__name__
    target = getattr(fn, "func", fn)  # functools.partial
    owner = getattr(target, "__self__", None)
    if inspect.isclass(owner) and issubclass(owner, torch.autograd.Function):
        return f"{owner.__name__}.apply"
    public = _public_torch_names().get(id(target))
    if public is not None:
        return public
    qualname = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or type(target).__name__
    qualname = qualname.rsplit("<locals>.", 1)[-1]
    for prefix in ("_VariableFunctionsClass.", "_TensorBase.", "TensorBase."):
        if qualname.startswith(prefix):
            return "torch." + qualname[len(prefix) :]
    module = getattr(target, "__module__", "") or ""
    if module.startswith("torch.nn.functional"):
        return "torch.nn.functional." + qualname
    if module == "torch" or (module.startswith("torch") and "." not in qualname and qualname[0].islower() and hasattr(torch, qualname)):
        return "torch." + qualname
    return str(qualname)


def argument_names(fn: Any, count: int) -> list[str]:
    """Names of the first `count` positional parameters of `fn` (``inputs[i]`` where none)."""
    torch = _torch()
    target = fn
    skip = 0
    owner = getattr(fn, "__self__", None)
    if isinstance(fn, torch.nn.Module):
        target = fn.forward
    elif inspect.isclass(owner) and issubclass(owner, torch.autograd.Function):
        target = getattr(owner, "forward")  # noqa: B009 - a class attribute the type checker cannot see
        new_style = getattr(owner, "setup_context", None) is not getattr(torch.autograd.Function, "setup_context", None)
        skip = 0 if new_style else 1  # old-style forward(ctx, ...)
    names: list[str] = []
    try:
        parameters = list(inspect.signature(target).parameters.values())[skip:]
    except (TypeError, ValueError):
        parameters = []
    for p in parameters:
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            break
        names.append(p.name)
    names = names[:count]
    out = names + [f"inputs[{i}]" for i in range(len(names), count)]
    return out if len(set(out)) == len(out) else [f"inputs[{i}]" for i in range(count)]


@dataclass
class OutputSpec:
    """The differentiable outputs of one call: their paths, names, shapes and dtypes."""

    raw: Any
    paths: list[Path]
    names: list[str]
    shapes: list[tuple[int, ...]]
    complex: list[bool]
    ignored: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, raw: Any, differentiable_only: bool = False) -> OutputSpec:
        """The outputs of `raw`. With `differentiable_only` (a call on leaves requiring
        grad), floating outputs that do not require grad are left out as ``gradcheck``
        leaves them out -- outputs PyTorch marks non-differentiable (the mean and rstd of
        ``native_layer_norm``) or the user detached on purpose -- unless no output requires
        grad at all: then every output is kept and its derivative checked as zero."""
        torch = _torch()
        leaves = flatten(raw, is_leaf=lambda o: isinstance(o, torch.Tensor))
        single = isinstance(raw, torch.Tensor)
        paths, names, shapes, cplx, ignored = [], [], [], [], []
        some_live = any(is_differentiable_tensor(leaf) and leaf.requires_grad for _, leaf in leaves)
        for path, leaf in leaves:
            name = "out" if single else path_name("out", path)
            if differentiable_only and some_live and is_differentiable_tensor(leaf) and not leaf.requires_grad:
                ignored.append(f"{name} (does not require grad: a non-differentiable output)")
                continue
            if is_differentiable_tensor(leaf):
                paths.append(path)
                names.append(name)
                shapes.append(tuple(leaf.shape))
                cplx.append(bool(leaf.is_complex()))
            elif isinstance(leaf, torch.Tensor):
                ignored.append(f"{name} ({leaf.dtype}: not differentiable)")
            elif leaf is not None:
                ignored.append(f"{name} ({type(leaf).__name__})")
        if not paths:
            shown = type(raw).__name__ if not isinstance(raw, torch.Tensor) else f"a {raw.dtype} tensor"
            raise InvalidType(f"fn must return a floating-point or complex tensor, or a tuple/list/dict holding some; got {shown}")
        return cls(raw, paths, names, shapes, cplx, ignored)

    @property
    def sizes(self) -> list[int]:
        return [int(np.prod(s, dtype=np.int64)) * (2 if c else 1) for s, c in zip(self.shapes, self.complex)]

    @property
    def size(self) -> int:
        return int(sum(self.sizes))

    def tensors(self, raw: Any) -> list[Any]:
        """The differentiable output tensors of another call of the same function."""
        torch = _torch()
        found = dict(flatten(raw, is_leaf=lambda o: isinstance(o, torch.Tensor)))
        out = []
        for path, name, shape in zip(self.paths, self.names, self.shapes):
            t = found.get(path)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
                raise InvalidArgument(
                    f"fn returned a different structure on another call: {name} is {type(t).__name__}"
                    + (f" of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else "")
                    + f", first call gave shape {shape}"
                )
            out.append(t)
        return out

    def real(self, raw: Any) -> np.ndarray:
        """The outputs' real coordinates, concatenated (float64)."""
        parts = [to_real(t) for t in self.tensors(raw)]
        return np.concatenate(parts) if parts else np.zeros(0)

    def cotangents(self, w: np.ndarray, like: Sequence[Any]) -> list[Any]:
        """Output gradients for the real cotangent `w` (complex outputs: ``a + ib``)."""
        out, offset = [], 0
        for t, size in zip(like, self.sizes):
            out.append(from_real(w[offset : offset + size], tuple(t.shape), t.dtype, t.device))
            offset += size
        return out

    def label(self, i: int) -> str:
        """Name of real output coordinate `i`: ``out[2, 0]``, ``out['loss']``, ``out[1][0].im``."""
        offset = 0
        for name, shape, cplx, size in zip(self.names, self.shapes, self.complex, self.sizes):
            if i < offset + size:
                j = i - offset
                entry, part = divmod(j, 2) if cplx else (j, None)
                index = np.unravel_index(entry, shape) if shape else ()
                text = name + (f"[{', '.join(str(int(k)) for k in index)}]" if index else "")
                return text + ("" if part is None else (".re" if part == 0 else ".im"))
            offset += size
        return f"out#{i}"


class TorchCall:
    """`fn` with its arguments split into differentiated slots and pass-through values.

    **Arguments:**

    - `fn`: a callable, or an ``nn.Module`` (its floating parameters become slots unless
      ``params=False``).
    - `inputs`: the positional arguments, as the user would pass them.
    """

    def __init__(self, fn: Callable[..., Any], inputs: Sequence[Any], *, params: bool = True, seed: int = 0):
        torch = _torch()
        self.fn = fn
        self.seed = seed
        self.inputs = tuple(inputs)
        self.module = fn if isinstance(fn, torch.nn.Module) else None
        self.resets: list[Callable[[], None]] = []  # state of copies derivcheck made (the float64 twin)
        self.notes: list[str] = []
        self.passthrough: list[str] = []
        self.constants: list[Path] = []  # floating tensors passed through (widened with the rest for finite differences)
        names = argument_names(fn, len(self.inputs))
        self.slots: list[Slot] = []
        offset = 0
        leaves = flatten(self.inputs, is_leaf=lambda o: isinstance(o, torch.Tensor))
        # gradcheck's convention: when some floating tensors require grad, only those are
        # differentiated; when none does (plain tensors), all of them are
        chosen = any(is_differentiable_tensor(leaf) and leaf.requires_grad for _, leaf in leaves)
        for path, leaf in leaves:
            root = names[path[0]]
            name = path_name(root, path[1:])
            if is_differentiable_tensor(leaf) and chosen and not leaf.requires_grad:
                self.passthrough.append(f"{name} (requires_grad=False while other inputs require grad)")
                self.constants.append(path)
                continue
            if not is_differentiable_tensor(leaf):
                if isinstance(leaf, torch.Tensor):
                    self.passthrough.append(f"{name} ({leaf.dtype} tensor)")
                elif leaf is not None:
                    self.passthrough.append(f"{name} ({type(leaf).__name__})")
                continue
            tensor = leaf.detach()
            if tensor.numel() == 0:
                self.notes.append(f"{name} has no elements (shape {tuple(tensor.shape)}): nothing to check for it")
                continue
            if tensor.device.type == "meta":
                raise InvalidArgument(f"{name} is on the meta device: it has no values to differentiate; pass a tensor on the CPU or a GPU")
            if tensor.layout != torch.strided:
                raise InvalidArgument(f"{name} is a {tensor.layout} tensor: check_torch checks dense (strided) tensors; pass {name}.to_dense()")
            if overlaps(tensor):
                self.notes.append(
                    f"{name} has overlapping memory (a stride-0 dimension, e.g. from expand()): it is checked as a materialized copy "
                    f"(.contiguous()), so each of its {tensor.numel()} entries is differentiated separately"
                )
                tensor = tensor.contiguous()
            slot = Slot(name, tensor, offset, path=path)
            self.slots.append(slot)
            offset += slot.size
        self.params: list[Slot] = []
        if self.module is not None and params:
            for pname, p in self.module.named_parameters():
                if p.requires_grad and (p.is_floating_point() or p.is_complex()) and p.numel():
                    slot = Slot(pname, p.detach(), offset, param=pname)
                    self.slots.append(slot)
                    self.params.append(slot)
                    offset += slot.size
        if not self.slots and not any(is_differentiable_tensor(leaf) for _, leaf in leaves) and not (self.module is not None and params and any(True for _ in self.module.parameters())):
            raise InvalidArgument("nothing to differentiate: no input is a floating-point or complex tensor" + (" and the module has no such parameters" if self.module is not None else ""))
        self.size = offset
        self.call_notes = list(self.notes)
        self.by_design = np.zeros(self.size, dtype=bool)
        """Coordinates whose gradient the code zeroes on purpose (an embedding's padding
        row): not derivatives of the forward, so not compared (see :meth:`_by_design`)."""
        self._by_design()

    def _by_design(self) -> None:
        """Mark the padding rows of ``nn.Embedding``/``nn.EmbeddingBag(padding_idx=...)``,
        whose gradient torch zeroes by design, and say so in the notes."""
        torch = _torch()
        if self.module is None:
            return
        by_name = {s.param: s for s in self.slots if s.param is not None}
        for prefix, sub in self.module.named_modules():
            index = getattr(sub, "padding_idx", None)
            if isinstance(sub, (torch.nn.Embedding, torch.nn.EmbeddingBag)) and index is not None:
                name = f"{prefix}.weight" if prefix else "weight"
                slot = by_name.get(name)
                if slot is None:
                    continue
                row = index % slot.shape[0]
                per_row = int(np.prod(slot.shape[1:], dtype=np.int64)) * (2 if slot.is_complex else 1)
                self.by_design[slot.offset + row * per_row : slot.offset + (row + 1) * per_row] = True
                self.notes.append(f"{name}[{row}, :] is the padding row of {type(sub).__name__}(padding_idx={index}): torch zeroes its gradient by design, so it is not compared")

    # -- calling --------------------------------------------------------------------------

    def call(self, tensors: Sequence[Any], fn: Any = None, widen: bool = False) -> Any:
        """Call `fn` (default: the user's) with the slots replaced by `tensors`.

        torch's global RNG is re-seeded (inside ``fork_rng``, so the caller's state is
        untouched) before every call: a forward that draws random numbers -- dropout,
        ``torch.rand`` -- is then one fixed function, as finite differences need."""
        torch = _torch()
        reset_state()  # the same state on every call (BatchNorm statistics, power iterations)
        for reset in self.resets:
            reset()
        target = self.fn if fn is None else fn
        replace = {s.path: t for s, t in zip(self.slots, tensors) if s.path is not None}
        if widen:  # the float64 twin: constants in float64 (complex128) too
            leaves = dict(flatten(self.inputs, is_leaf=lambda o: isinstance(o, torch.Tensor)))
            for path in self.constants:
                t = leaves[path]
                replace[path] = t.to(torch.complex128 if t.is_complex() else torch.float64)
        args = unflatten(self.inputs, replace)
        state = {s.param: t for s, t in zip(self.slots, tensors) if s.param is not None}
        devices = sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            # the generators themselves: torch.manual_seed also seeds every lazy backend
            # (CUDA, XPU, MTIA) and records a stack trace for each, ~1 ms a call
            torch.random.default_generator.manual_seed(self.seed)
            for index in devices:
                torch.cuda.default_generators[index].manual_seed(self.seed)
            if state:
                return torch.func.functional_call(target, state, tuple(args))
            return target(*args)

    def base(self) -> np.ndarray:
        """The slots' current values as one flat real vector."""
        return np.concatenate([to_real(s.tensor) for s in self.slots])

    def split(self, flat: np.ndarray, dtypes: Sequence[Any] | None = None, device: Any = None) -> list[Any]:
        """Tensors for the slots from a flat real vector (in each slot's dtype unless given)."""
        out = []
        for k, s in enumerate(self.slots):
            dtype = s.tensor.dtype if dtypes is None else dtypes[k]
            out.append(from_real(flat[s.cols], s.shape, dtype, s.tensor.device if device is None else device))
        return out

    def split_batched(self, points: np.ndarray, dtypes: Sequence[Any]) -> list[Any]:
        """Tensors ``(k, *shape)`` for the slots from ``(k, n)`` real coordinates."""
        torch = _torch()
        out = []
        for s, dtype in zip(self.slots, dtypes):
            block = np.ascontiguousarray(points[:, s.cols])
            if dtype.is_complex:
                real = torch.float64 if dtype == torch.complex128 else torch.float32
                pairs = torch.as_tensor(block.reshape(len(points), *s.shape, 2), dtype=real, device=s.tensor.device)
                out.append(torch.view_as_complex(pairs.contiguous()).to(dtype))
            else:
                out.append(torch.as_tensor(block.reshape(len(points), *s.shape), dtype=dtype, device=s.tensor.device))
        return out

    def leaves(self) -> list[Any]:
        """Fresh leaf tensors (requires_grad) holding the slots' values, in their dtypes."""
        return [s.tensor.clone().requires_grad_(True) for s in self.slots]

    def float64_twin(self) -> Twin:
        """A forward in float64 (complex128) for finite differences (see :class:`Twin`).

        The slots become float64 and a low-precision module a float64 copy; then the
        forward runs once under :func:`~derivcheck.check.promote.Promotion`. Where that
        widened nothing, the plain float64 forward is the twin (no mode, no overhead);
        where it widened tensors the function closes over or casts it makes, the twin runs
        under the mode -- provided every output came out float64 and it computes what the
        user's own forward computes, up to that forward's rounding. Otherwise the twin is
        the user-dtype forward, with the reason."""
        torch = _torch()
        from derivcheck.check.noise import noisy_runs, observed_sizes
        from derivcheck.check.promote import Promotion, low_precision_outputs

        target: Any = self.fn
        wide_already = (
            all(t.dtype in (torch.float64, torch.complex128) for t in [*self.module.parameters(), *self.module.buffers()] if t.is_floating_point() or t.is_complex())
            if self.module is not None
            else True
        )
        if self.module is not None and not wide_already:
            try:
                target = copy.deepcopy(self.module).to(torch.float64)
                self.resets.append(buffer_resetter(target))
            except Exception:  # noqa: BLE001 - a module that cannot be copied is used as is
                target = self.module
        wide = [torch.complex128 if s.is_complex else torch.float64 for s in self.slots]
        own = [s.tensor.dtype for s in self.slots]

        def forward64(flat: np.ndarray) -> Any:
            return self.call(self.split(flat, wide), fn=target, widen=True)

        def forward_own(flat: np.ndarray) -> Any:
            return self.call(self.split(flat, own))

        mode = Promotion()

        def promoted(flat: np.ndarray) -> Any:
            with mode:
                return forward64(flat)

        base = self.base()
        failures = []
        widened = any(w != o for w, o in zip(wide, own))
        measured: list[Any] = []

        def own_output() -> tuple[Any, Any, float]:
            """The user's own forward at the base point, its Monte-Carlo runs and the
            largest operand of its rounding operators."""
            if not measured:
                raw, _, size = observed_sizes(lambda: forward_own(base))
                measured.append((raw, noisy_runs(lambda: OutputSpec.of(raw).real(forward_own(base)), 2, 0), size))
            return measured[0]

        try:
            spec = OutputSpec.of(promoted(base))
            low = low_precision_outputs(spec.tensors(spec.raw))
            if low:
                raise _NotPromoted(
                    f"{', '.join(spec.names[k] for k in low)} came out {spec.tensors(spec.raw)[low[0]].dtype} even with every torch tensor widened "
                    "(a part outside torch -- numpy in a custom Function -- a hard-coded float32, or torch.autocast inside)"
                )
            if not mode.promoted and not widened:
                return Twin(forward64, wide, None, call=self, target=target)
            difference = _promotion_difference(spec, own_output())
            if difference is not None:
                raise _NotPromoted(difference)
            if not mode.promoted:  # the slots' widening alone made it float64
                return Twin(forward64, wide, None, call=self, target=target)
            return Twin(promoted, wide, None, promoted=mode.promoted, call=self, target=target, mode=mode)
        except _NotPromoted as exc:
            failures.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - try without the mode, then the user's dtype
            failures.append(f"{type(exc).__name__}: {exc}")
        try:
            spec = OutputSpec.of(forward64(base))
            if low_precision_outputs(spec.tensors(spec.raw)):
                failures.append("its outputs stay in low precision")
            elif widened and (difference := _promotion_difference(spec, own_output())) is not None:
                failures.append(difference)
            else:
                return Twin(forward64, wide, None, call=self, target=target)
        except Exception as exc:  # noqa: BLE001 - fall back to the user's dtype
            failures.append(f"{type(exc).__name__}: {exc}")
        return Twin(forward_own, own, failures[0])


class _NotPromoted(Exception):
    """The promoted forward is not a float64 copy of the user's (message: why)."""


SAME_FUNCTION = 30.0
"""The float64 twin computes the user's function when its outputs differ from the user's own
by at most this many times the own forward's measured rounding spread (Monte-Carlo runs),
plus 16 ``eps`` of each output and of the forward's largest operand (a result that cancels
to 1e-12 from terms of size 1 carries their rounding, a fused ``log_softmax`` of logits of
size 10 rounds at their scale): a branch on the dtype
(``eps = 1e-2 if h.dtype == torch.float16``), a constant chosen from
``torch.finfo(x.dtype)``, moves them further."""


def _promotion_difference(spec: OutputSpec, own: tuple[Any, Any, float]) -> str | None:
    """Why the float64 outputs of `spec` are not the user's own outputs (`own`: the raw
    output, its Monte-Carlo runs and its largest operand) computed more
    precisely, or ``None`` (see :data:`SAME_FUNCTION`) -- this guards against a different
    function, not rounding."""
    from derivcheck.check.noise import EPS_BY_NAME, spread

    own_raw, runs, magnitude = own
    wide = spec.real(spec.raw)
    own_spec = OutputSpec.of(own_raw)
    values = own_spec.real(own_raw)
    if values.shape != wide.shape:
        return "its float64 outputs have another structure than its own"
    if np.any(np.isfinite(values) & ~np.isfinite(wide)):
        return "its float64 outputs are non-finite where its own are finite"
    names = [str(t.dtype).replace("torch.", "").replace("complex64", "float32").replace("complex32", "float16").replace("complex128", "float64") for t in own_spec.tensors(own_raw)]
    eps = max(EPS_BY_NAME.get(n, EPS_BY_NAME["float32"]) for n in names)
    finite = np.isfinite(values) & np.isfinite(wide)
    allowed = SAME_FUNCTION * spread(runs, values) + 16 * eps * (np.abs(values) + magnitude) + 1e-300
    excess = np.where(finite, np.abs(values - wide) - allowed, -np.inf)
    if np.any(excess > 0):
        i = int(np.argmax(excess))
        return (
            f"its float64 copy computes something else: {spec.label(i)} is {wide[i]:.6g} there and {values[i]:.6g} in your dtype, "
            f"beyond the {allowed[i]:.3g} its own rounding explains (a branch on the dtype, a constant chosen by it?)"
        )
    return None


@dataclass
class Twin:
    """The forward finite differences perturb: ``forward(flat) -> raw output``, the slot
    dtypes it runs in, why float64 failed (``None`` when it runs in float64), and how many
    low-precision tensors :class:`~derivcheck.check.promote.Promotion` widened (0: none
    needed, the plain float64 forward)."""

    forward: Callable[[np.ndarray], Any]
    dtypes: list[Any]
    failure: str | None
    promoted: int = 0
    call: TorchCall | None = None
    target: Any = None
    mode: Any = None

    def batched(self, spec: OutputSpec) -> Callable[[np.ndarray], np.ndarray] | None:
        """The same forward for many points at once, ``(k, n) -> (k, m)`` real coordinates,
        under ``torch.func.vmap`` (``None`` when there is no call to batch). A forward that
        draws random numbers or cannot run under vmap raises; callers fall back to
        :attr:`forward` one point at a time."""
        call = self.call
        if call is None:
            return None
        torch = _torch()
        dtypes, target, mode = self.dtypes, self.target, self.mode

        def one(*tensors: Any) -> tuple[Any, ...]:
            return tuple(spec.tensors(call.call(list(tensors), fn=target, widen=True)))

        def batch(points: np.ndarray) -> np.ndarray:
            tensors = call.split_batched(points, dtypes)
            if mode is not None:
                with mode:
                    outs = torch.func.vmap(one, randomness="error")(*tensors)
            else:
                outs = torch.func.vmap(one, randomness="error")(*tensors)
            parts = [(torch.view_as_real(o.resolve_conj()) if o.is_complex() else o).detach().reshape(len(points), -1) for o in outs]
            return torch.cat(parts, dim=1).to(torch.float64).numpy(force=True)

        return batch


_MESSAGE_DTYPES = {"Double": "float64", "Float": "float32", "Half": "float16", "BFloat16": "bfloat16", "double": "float64", "float": "float32", "half": "float16"}


def dtype_mismatch_hint(call: TorchCall, exc: BaseException) -> str | None:
    """A sentence for a forward that failed because its inputs and its module's (or
    closure's) parameters have different dtypes -- torch says ``mat1 and mat2 must have
    the same dtype, but got Double and Float`` -- or ``None`` if that is not the failure."""
    import re

    text = str(exc)
    if not re.search(r"dtype|scalar type|Input type|same type", text):
        return None
    inputs = sorted({str(s.tensor.dtype).removeprefix("torch.") for s in call.slots if s.param is None})
    if not inputs:
        return None
    if call.module is not None:
        module = sorted({str(p.dtype).removeprefix("torch.") for p in call.module.parameters() if p.is_floating_point()} - set(inputs))
        owner = "your module"
    else:
        module = sorted({_MESSAGE_DTYPES[w] for w in re.findall(r"\b(Double|Float|Half|BFloat16|double|float|half)\b", text)} - set(inputs))
        owner = "its parameters (or another tensor it uses)"
    if not module:
        return None
    want = module[0]
    return (
        f"{owner} {'is' if call.module is not None else 'are'} {' and '.join(module)} and the inputs {' and '.join(inputs)}: "
        f"pass dtype=torch.{want} (or like=module) to dc.strategies.inputs, make the inputs {want}, "
        f"or .double() the module to check in float64"
    )
