"""Suite files: one case template expanded over a grid (``derivcheck generate``, or run directly).

::

    [grid]                                  # every combination becomes one case
    width = [4, 8, 16]
    depth = [1, 2, 3]
    activation = ["tanh", "sigmoid", "relu"]
    dtype = ["float64", "float32"]

    [template]                              # an ordinary case table with {placeholders}
    name = "mlp-{activation}-w{width}-d{depth}-{dtype}"
    dtype = "{dtype}"
    network = { mlp = { in = 4, hidden = "{width}", depth = "{depth}", activation = "{activation}", out = 3 } }
    loss = "cross_entropy"
    inputs = { batch = 8 }

A string that is exactly ``"{key}"`` becomes the grid value with its type (``"{width}"`` ->
``8``); placeholders inside longer strings are replaced by the value's text. ``network = {
mlp = { in, hidden, depth, activation, out, bias } }`` is shorthand for ``depth`` hidden
linear layers of width ``hidden`` each followed by the activation, then a linear read-out.
Grid order is the order of the keys, the last varying fastest; names must be unique.
"""

from __future__ import annotations

import datetime
import itertools
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from derivcheck.errors import CaseError

MAX_SUITE_BYTES = 200_000_000
"""Largest total size of a suite's expanded case tables (template size x grid size)."""
MAX_CASES = 10_000
"""Largest grid a suite may expand to (a run also has the ``cases`` limit of
:mod:`derivcheck.budget`)."""
SUITE_KEYS = ("grid", "template", "description")
MLP_KEYS = ("in", "hidden", "depth", "activation", "out", "bias")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def is_suite(table: Mapping[str, Any]) -> bool:
    return "grid" in table or "template" in table


def _substitute(value: Any, point: Mapping[str, Any], file: str | None, key: str) -> Any:
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value)
        names = _PLACEHOLDER.findall(value)
        for name in names:
            if name not in point:
                raise CaseError(f"unknown placeholder {{{name}}}", file=file, key=key, value=value, allowed=", ".join("{" + k + "}" for k in point))
        if whole:
            return point[whole.group(1)]
        return _PLACEHOLDER.sub(lambda m: str(point[m.group(1)]), value)
    if isinstance(value, list):
        return [_substitute(v, point, file, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _substitute(v, point, file, f"{key}.{k}" if key else k) for k, v in value.items()}
    return value


def _mlp(spec: Any, file: str | None) -> list[dict[str, Any]]:
    if not isinstance(spec, dict) or set(spec) - set(MLP_KEYS) or not {"in", "hidden", "depth", "out"} <= set(spec):
        raise CaseError("an mlp shorthand needs in, hidden, depth, out (and optionally activation, bias)", file=file, key="network.mlp", value=spec, allowed=", ".join(MLP_KEYS))
    for name in ("in", "hidden", "depth", "out"):
        if not isinstance(spec[name], int) or isinstance(spec[name], bool) or spec[name] < (0 if name == "depth" else 1):
            raise CaseError("must be a positive integer", file=file, key=f"network.mlp.{name}", value=spec[name])
    from derivcheck import budget

    budget.require("layers", 2 * spec["depth"] + 1, file=file, key="network.mlp.depth")
    bias = spec.get("bias", True)
    layers: list[dict[str, Any]] = []
    width = spec["in"]
    for _ in range(spec["depth"]):
        layers += [{"layer": "linear", "in": width, "out": spec["hidden"], "bias": bias}, {"layer": spec.get("activation", "tanh")}]
        width = spec["hidden"]
    return layers + [{"layer": "linear", "in": width, "out": spec["out"], "bias": bias}]


def grid_size(table: Mapping[str, Any], file: str | None = None) -> int:
    """How many cases a suite makes (the product of its grid's array lengths), without
    expanding it."""
    grid = table.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise CaseError("a suite needs a non-empty [grid] table of arrays", file=file, key="grid", allowed='width = [4, 8], activation = ["tanh", "relu"]')
    count = 1
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise CaseError("must be a non-empty array of values", file=file, key=f"grid.{key}", value=values)
        count *= len(values)
    if count > MAX_CASES:
        raise CaseError(f"the grid makes {count} cases", file=file, key="grid", allowed=f"at most {MAX_CASES}")
    return count


def expand_suite(table: Mapping[str, Any], file: str | None = None) -> list[dict[str, Any]]:
    """The case tables of a suite (see the module docstring), in grid order.

    **Raises:** :class:`~derivcheck.errors.CaseError` for a malformed grid or template.
    """
    unknown = set(table) - set(SUITE_KEYS)
    if unknown:
        name = sorted(unknown)[0]
        raise CaseError("unknown key in a suite file", file=file, key=name, allowed=", ".join(SUITE_KEYS))
    grid, template = table.get("grid"), table.get("template")
    if not isinstance(grid, dict) or not grid:
        raise CaseError("a suite needs a non-empty [grid] table of arrays", file=file, key="grid", value=grid, allowed='width = [4, 8], activation = ["tanh", "relu"]')
    if not isinstance(template, dict):
        raise CaseError("a suite needs a [template] case table", file=file, key="template", value=template)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise CaseError("must be a non-empty array of values", file=file, key=f"grid.{key}", value=values)
    count = grid_size(table, file)
    from derivcheck import budget

    budget.require("cases", count, file=file, key="grid", detail="the combinations of this suite's grid")
    template_bytes = len(repr(template))
    if template_bytes * count > MAX_SUITE_BYTES:
        raise CaseError(
            f"the suite would expand to about {template_bytes * count / 1e6:.0f} MB of case tables ({count} cases of a {template_bytes}-character template)",
            file=file,
            key="template",
            allowed=f"at most {MAX_SUITE_BYTES // 1_000_000} MB: a smaller grid or template",
        )
    tables, names = [], set()
    for combination in itertools.product(*grid.values()):
        point = dict(zip(grid, combination))
        case = _substitute(dict(template), point, file, "")
        network = case.get("network")
        if isinstance(network, dict) and set(network) == {"mlp"}:
            case["network"] = _mlp(network["mlp"], file)
        name = case.get("name")
        if not isinstance(name, str) or name in names:
            raise CaseError("every generated case needs a unique name: put the grid keys in template.name", file=file, key="template.name", value=name, allowed='"mlp-{activation}-w{width}"')
        names.add(name)
        tables.append(case)
    return tables


def to_toml(table: Mapping[str, Any]) -> str:
    """A case table as TOML (top-level keys; nested tables inline, as case files write them).

    Strings are written as TOML basic strings with every control character escaped, so
    whatever a value holds the file reads back as the same value; dates and times (which
    TOML has) are written as such."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, float):
            if math.isnan(v):
                return "nan"
            if math.isinf(v):
                return "inf" if v > 0 else "-inf"
            return repr(v)
        if isinstance(v, str):
            return _toml_string(v)
        if isinstance(v, (datetime.datetime, datetime.date, datetime.time)):
            return v.isoformat()
        if isinstance(v, list):
            if v and all(isinstance(item, dict) for item in v):
                return "[\n" + "".join(f"  {value(item)},\n" for item in v) + "]"
            return "[" + ", ".join(value(item) for item in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{_key(k)} = {value(item)}" for k, item in v.items()) + " }"
        raise CaseError(f"cannot write a value of type {type(v).__name__} to TOML", value=v)

    return "".join(f"{_key(k)} = {value(v)}\n" for k, v in table.items())


def _toml_string(text: str) -> str:
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif code < 0x20 or code == 0x7F or 0x80 <= code <= 0x9F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _toml_string(name)


def file_stem(name: str) -> str:
    """The file name (without ``.toml``) a case named `name` is written to."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip(".") or "case"
    return stem[:150]


def write_suite(table: Mapping[str, Any], output: str | Path, file: str | None = None, *, force: bool = False) -> list[Path]:
    """Expand a suite and write one ``<name>.toml`` per case into `output`.

    Everything is checked before the first file is written: every name maps to its own
    file (also on case-insensitive file systems), no file would replace the suite itself,
    and no existing file is overwritten unless `force`. Each file is written atomically.

    **Raises:** :class:`~derivcheck.errors.CaseError`."""
    from derivcheck.escaping import is_plain_name
    from derivcheck.outputs import write_atomic

    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise CaseError("the output must be a folder, and this is a file", key="-o/--output", value=str(folder))
    cases = expand_suite(table, file)
    targets: dict[str, tuple[str, Path]] = {}
    suite_path = Path(file).resolve() if file else None
    for case in cases:
        name = case["name"]
        if not is_plain_name(name):
            raise CaseError("every generated name must be printable text on one line", file=file, key="template.name", value=name)
        path = folder / f"{file_stem(name)}.toml"
        key = path.name.lower()
        if key in targets:
            raise CaseError(
                f"cases {targets[key][0]!r} and {name!r} would be written to the same file {path.name!r} (names are compared ignoring case and characters outside A-Z a-z 0-9 _ . -)",
                file=file,
                key="template.name",
                allowed="names that differ in letters or digits",
            )
        if suite_path is not None and path.resolve() == suite_path:
            raise CaseError(f"case {name!r} would overwrite the suite file itself", file=file, key="-o/--output", value=str(folder), allowed="another output folder")
        if (path.exists() or path.is_symlink()) and not force:
            raise CaseError(f"{str(path)!r} already exists (case {name!r}); pass --force to overwrite the generated files", file=file, key="-o/--output")
        if path.exists() and not path.is_file():
            raise CaseError(f"{str(path)!r} exists and is not a regular file", file=file, key="-o/--output")
        targets[key] = (name, path)
    texts = [(path, to_toml(case)) for case, (_, path) in zip(cases, targets.values())]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for path, text in texts:
            write_atomic(path, text)
    except OSError as exc:
        raise CaseError(f"could not write the case files: {exc.strerror or exc}", key="-o/--output", value=str(folder)) from None
    return [path for path, _ in texts]
