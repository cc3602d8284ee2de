"""What every kind of case file shares: typed table access, tolerance and finite-difference
options, engine names, layer and loss tables.

The network, PDE, GAN and score loaders all build on these; this module imports none of
them (see ``tests/test_layering.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from derivcheck.compare import Tolerance
from derivcheck.engines import ENGINE_NAMES
from derivcheck.engines.finite_diff.network import METHODS as FD_METHODS
from derivcheck.errors import CaseError
from derivcheck.layers import LAYERS, LOSSES, Layer, Loss


@dataclass(kw_only=True)
class CaseBase:
    """What every loaded case has, whatever its kind: its name and description, the file
    it came from, the engines to compare, the seed, tolerance and finite-difference options,
    and the device it asks for (``None``: the run's ``--device``). Each kind adds its own
    problem fields (constructed by keyword)."""

    name: str
    engines: list[str]
    description: str = ""
    file: str | None = None
    seed: int = 0
    tolerance: Tolerance = field(default_factory=Tolerance)
    finite_diff: dict[str, Any] = field(default_factory=dict)
    device: str | None = None


MIN_FD_STEP, MAX_FD_STEP = 1e-8, 0.1
"""The finite-difference steps a case may set (float64 central differences are best near
1e-5; at 1e-300 every quotient is rounding noise)."""


def shown_scalar(value: Any) -> Any:
    """`value` if it is a short scalar worth showing in an "unknown key" error, else
    ``None``: a table or array under a key derivcheck does not know is never echoed (it
    may be a file's unrelated contents, e.g. a linked credentials file)."""
    if isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) <= 40):
        return value
    return None


class _Reader:
    """Typed access to one table, raising :class:`CaseError` with file and key."""

    def __init__(self, table: Mapping[str, Any], file: str | None, prefix: str = ""):
        self.table = table
        self.file = file
        self.prefix = prefix

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def error(self, message: str, name: str, value: Any = None, allowed: str | None = None) -> CaseError:
        return CaseError(message, file=self.file, key=self.key(name), value=value, allowed=allowed)

    def check_keys(self, allowed: Sequence[str]) -> None:
        for name, value in self.table.items():
            if name not in allowed:
                raise self.error("unknown key", name, shown_scalar(value), ", ".join(allowed))

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None, *, required: bool = False, what: str = "") -> Any:
        if name not in self.table:
            if required:
                raise CaseError(f"missing required key ({what})" if what else "missing required key", file=self.file, key=self.key(name))
            return default
        value = self.table[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            ok = False
        else:
            ok = isinstance(value, kinds)
        if not ok and float in kinds and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not ok:
            names = " or ".join({str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "table"}[k] for k in kinds)
            raise self.error("wrong type", name, value, names)
        return value


def _build_layers(specs: Any, file: str | None) -> list[Layer]:
    if not isinstance(specs, list) or not specs:
        raise CaseError("must be a non-empty array of layer tables", file=file, key="network", value=specs, allowed='[{ layer = "linear", in = 4, out = 8 }, ...]')
    layers = []
    for index, spec in enumerate(specs):
        key = f"network[{index}]"
        if not isinstance(spec, dict):
            raise CaseError("each layer must be a table", file=file, key=key, value=spec, allowed='{ layer = "relu" }')
        kind = spec.get("layer")
        if kind is None:
            raise CaseError("missing the 'layer' key", file=file, key=key, allowed=", ".join(LAYERS))
        cls = LAYERS.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise CaseError("unknown layer", file=file, key=f"{key}.layer", value=kind, allowed=", ".join(LAYERS))
        layers.append(cast(Layer, cls.from_spec(spec, file=file, key=key, type_key="layer")))
    return layers


def _build_loss(spec: Any, file: str | None) -> Loss:
    if isinstance(spec, str):
        spec = {"loss": spec}
    if not isinstance(spec, dict):
        raise CaseError("must be a loss name or a table", file=file, key="loss", value=spec, allowed=", ".join(LOSSES))
    kind = spec.get("loss")
    cls = LOSSES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise CaseError("unknown loss", file=file, key="loss", value=kind, allowed=", ".join(LOSSES))
    return cast(Loss, cls.from_spec(spec, file=file, key="loss", type_key="loss"))


def validate_engine_names(engines: Any, *, file: str | None = None, key: str = "engines") -> None:
    """At least two known, distinct engine names."""
    if not isinstance(engines, list) or not all(isinstance(e, str) for e in engines):
        raise CaseError("must be an array of engine names", file=file, key=key, value=engines, allowed=", ".join(ENGINE_NAMES))
    for engine in engines:
        if engine not in ENGINE_NAMES:
            raise CaseError("unknown engine", file=file, key=key, value=engine, allowed=", ".join(ENGINE_NAMES))
    if len(set(engines)) < 2:
        raise CaseError("at least two distinct engines are needed to compare anything", file=file, key=key, value=engines, allowed=", ".join(ENGINE_NAMES))


def _tolerance(spec: Any, file: str | None) -> Tolerance:
    if spec is None:
        return Tolerance()
    if not isinstance(spec, dict):
        raise CaseError("must be a table", file=file, key="tolerance", value=spec, allowed="{ rtol = 1e-10, fd_safety = 10.0 }")
    reader = _Reader(spec, file, "tolerance.")
    reader.check_keys(("rtol", "fd_safety"))
    rtol = reader.get("rtol", float)
    safety = reader.get("fd_safety", float, 10.0)
    if rtol is not None and not 0 < rtol < 1:
        raise reader.error("out of range", "rtol", rtol, "0 < rtol < 1")
    if not 0 < safety <= 1e6:
        raise reader.error("out of range", "fd_safety", safety, "0 < fd_safety <= 1e6")
    return Tolerance(rtol=rtol, fd_safety=safety)


def _finite_diff(spec: Any, file: str | None) -> dict[str, Any]:
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise CaseError("must be a table", file=file, key="finite_diff", value=spec, allowed='{ method = "richardson", step = 1e-3 }')
    reader = _Reader(spec, file, "finite_diff.")
    reader.check_keys(("method", "step"))
    result: dict[str, Any] = {}
    method = reader.get("method", str)
    if method is not None:
        if method not in FD_METHODS:
            raise reader.error("unknown method", "method", method, ", ".join(FD_METHODS))
        result["method"] = method
    step = reader.get("step", float)
    if step is not None:
        if not (MIN_FD_STEP <= step <= MAX_FD_STEP):
            raise reader.error("out of range", "step", step, f"{MIN_FD_STEP:g} <= step <= {MAX_FD_STEP:g} (relative to max(1, |x|); below, rounding swamps the difference, above, truncation does)")
        result["step"] = step
    return result
