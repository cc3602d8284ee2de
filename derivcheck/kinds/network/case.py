"""Case files: loading, validation, and turning them into a :class:`~derivcheck.problem.Problem`.

A case is a TOML file (read with the standard library's ``tomllib``)::

    name = "iris-mlp"
    description = "4-8-3 ReLU MLP with softmax cross-entropy on the Iris data"
    dtype = "float64"                 # precision of the numpy and torch engines
    seed = 0                          # parameters (and random inputs) come from it
    network = [
      { layer = "linear", in = 4, out = 8 },
      { layer = "relu" },
      { layer = "linear", in = 8, out = 3 },
    ]
    loss = "cross_entropy"            # or a table: { loss = "mse" }
    data = { csv = "data/iris.csv", target = "species", standardize = true }
    # or random inputs instead of data:  inputs = { batch = 8, scale = 1.0 }
    # optionally with targets as formulas of the inputs x0, x1, ... (one per output):
    #   inputs = { batch = 8, targets = ["sin(pi*x0) * x1", "x2**2"] }
    # or from a 2-D toy distribution, with the noise of a leading ddpm_noise layer as target:
    #   inputs = { batch = 16, distribution = "two_moons", noise = 0.05, targets = "noise" }
    quantities = ["L", "dL/dparams", "dL/dx", "dy/dx"]
    engines = ["symbolic", "finite_diff", "numpy", "torch"]   # optional subset (>= 2)
    sgd = { lr = 0.1 }                # enables the "sgd_step" quantity
    tolerance = { rtol = 1e-10, fd_safety = 10.0 }            # optional overrides
    finite_diff = { method = "richardson", step = 1e-3 }      # optional

Every problem -- an unknown key, a wrong type, an unknown layer, sizes that do not chain,
a missing data file, unreadable TOML -- raises :class:`~derivcheck.errors.CaseError` naming
the file, the key, the offending value and what is allowed.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from derivcheck._lazy import sympy as sp

from derivcheck.engines import NETWORK_ENGINES
from derivcheck.errors import CaseError
from derivcheck.loading import MAX_CASE_BYTES, case_count, case_from_dict, discover, load_case, load_case_at, load_cases, read_table  # noqa: F401 - the loading API, also here
from derivcheck.case_fields import CaseBase, _build_layers, _build_loss, _finite_diff, _Reader, _tolerance, validate_engine_names
from derivcheck.escaping import one_line
from derivcheck.expr import NUMPY_MODULES, make_symbol, parse_expression
from derivcheck.layers import Loss
from derivcheck.problem import DTYPES, Network, Problem
from derivcheck.quantities import DEFAULT_QUANTITIES, expand_quantities
from derivcheck.toy_data import DISTRIBUTIONS, sample_points

TOP_LEVEL_KEYS = (
    "name", "description", "dtype", "seed", "network", "loss", "data", "inputs",
    "quantities", "engines", "sgd", "clip", "tolerance", "finite_diff", "input_shape",
)  # fmt: skip
DATA_KEYS = ("csv", "target", "features", "rows", "standardize")
INPUT_KEYS = ("batch", "scale", "targets", "distribution", "noise")
MAX_BATCH = 100_000
MAX_DATA_VALUE = 1e12
"""Largest magnitude of a data value or an input scale (beyond it sums overflow or every
digit of a difference is lost; rescale the data)."""


@dataclass(kw_only=True)
class Case(CaseBase):
    """A validated case, ready to run."""

    problem: Problem
    quantities: list[str]

    def summary(self) -> dict[str, Any]:
        """Name, description, network and expanded quantity names (for ``derivcheck list``)."""
        return {
            "name": self.name,
            "file": self.file,
            "description": self.description,
            "kind": "network",
            "network": self.problem.network.describe(),
            "loss": self.problem.loss.kind if self.problem.loss else None,
            "samples": self.problem.batch,
            "dtype": self.problem.dtype,
            "quantities": [q.name for q in expand_quantities(self.quantities, self.problem)],
            "engines": list(self.engines),
        }


def _read_csv(relative: str, base_dir: Path, file: str | None) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the data file `relative` (confined to the case's folder or a
    ``--data-root``, see :mod:`derivcheck.data_paths`)."""
    from derivcheck.data_paths import open_data_file

    raw = open_data_file(relative, base_dir, file=file, key="data.csv")
    try:
        text = raw.decode("utf-8-sig")
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except UnicodeDecodeError:
        raise CaseError("data file is not UTF-8 text (a CSV file is expected)", file=file, key="data.csv", value=relative) from None
    except csv.Error:
        raise CaseError("data file is not valid CSV", file=file, key="data.csv", value=relative) from None
    rows = [r for r in rows if r]
    if len(rows) < 2:
        raise CaseError("data file needs a header row and at least one data row", file=file, key="data.csv", value=relative)
    header = [one_line(c) for c in rows[0]]
    return header, rows[1:]


def _load_data(spec: Any, base_dir: Path, file: str | None, network: Network, loss: Loss | None) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    if not isinstance(spec, dict):
        raise CaseError("must be a table", file=file, key="data", value=spec, allowed='{ csv = "data/iris.csv", target = "species" }')
    reader = _Reader(spec, file, "data.")
    reader.check_keys(DATA_KEYS)
    rel = reader.get("csv", str, required=True, what="path of a CSV file")
    header, rows = _read_csv(rel, base_dir, file)
    target = reader.get("target", (str, list))
    targets = [target] if isinstance(target, str) else list(target or [])
    for column in targets:
        if column not in header:
            raise reader.error("target column not in the CSV header", "target", column, ", ".join(header))
    features = reader.get("features", list, [c for c in header if c not in targets])
    for column in features:
        if not isinstance(column, str) or column not in header:
            raise reader.error("feature column not in the CSV header", "features", column, ", ".join(header))
    limit = reader.get("rows", int)
    if limit is not None and limit < 1:
        raise reader.error("must be at least 1", "rows", limit)
    rows = rows[:limit] if limit else rows
    if len(rows) > MAX_BATCH:
        raise reader.error(f"the data file has {len(rows)} rows", "rows", None, f"at most {MAX_BATCH} (set rows = N to use the first N)")
    if len(features) != network.in_size:
        raise reader.error(f"the network takes {network.in_size} input features but {len(features)} feature columns were selected", "features", features)
    columns = {name: i for i, name in enumerate(header)}
    x = np.empty((len(rows), len(features)))
    for r, row in enumerate(rows):
        for c, name in enumerate(features):
            try:
                x[r, c] = float(row[columns[name]])
            except (ValueError, IndexError):
                shown = row[columns[name]] if columns[name] < len(row) else "<missing>"
                raise CaseError(f"row {r + 2}, column {name!r} is not a number", file=file, key="data.csv", value=shown) from None
            if not (np.isfinite(x[r, c]) and abs(x[r, c]) <= MAX_DATA_VALUE):
                raise CaseError(f"row {r + 2}, column {name!r} is not a finite number within +-{MAX_DATA_VALUE:g}", file=file, key="data.csv", value=row[columns[name]])
    meta: dict[str, Any] = {"data": rel, "rows": len(rows), "features": features}
    if reader.get("standardize", bool, False):
        std = x.std(axis=0)
        x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
        meta["standardized"] = True
    y = None
    if loss is not None:
        if not targets:
            raise CaseError("a loss needs targets: name the target column(s)", file=file, key="data.target", allowed=", ".join(header))
        raw_columns = [[row[columns[c]] if columns[c] < len(row) else "" for row in rows] for c in targets]
        raw, classes = _raw_targets(raw_columns, loss)
        if classes:
            meta["classes"] = classes
        try:
            y = loss.encode_targets(raw, network.out_size)
        except ValueError as exc:
            raise CaseError(str(exc), file=file, key="data.target", value=target) from None
    return x, y, meta


def _raw_targets(columns: list[list[str]], loss: Loss) -> tuple[np.ndarray, list[str]]:
    """Numbers if every entry parses, else (for one column of labels) sorted class indices."""
    try:
        values = np.array([[float(v) for v in column] for column in columns]).T
        return (values[:, 0] if values.shape[1] == 1 else values), []
    except ValueError:
        if len(columns) != 1 or loss.kind != "cross_entropy":
            raise ValueError("non-numeric targets are only allowed as one column of class labels for cross_entropy") from None
        classes = sorted(set(columns[0]))
        index = {c: i for i, c in enumerate(classes)}
        return np.array([index[v] for v in columns[0]], dtype=float), classes


def _random_inputs(sub: "_Reader", rng: np.random.Generator, batch: int, network: Network, scale: float) -> np.ndarray:
    """Inputs drawn as ``inputs.distribution`` says (the first layer's own draw for index
    inputs)."""
    distribution = sub.get("distribution", str, "normal")
    noise = sub.get("noise", float, 0.05)
    if not (np.isfinite(noise) and noise >= 0):
        raise sub.error("must be a finite number >= 0", "noise", noise)
    drawn = network.layers[0].random_inputs(rng, batch)
    if drawn is not None and distribution == "normal":
        return drawn
    if drawn is not None:
        raise sub.error(f"the first layer ({network.layers[0].kind}) draws its own inputs", "distribution", distribution, "normal")
    try:
        return sample_points(distribution, rng, batch, network.in_size, scale=scale, noise=noise)
    except ValueError as exc:
        raise sub.error(str(exc), "distribution", distribution, ", ".join(DISTRIBUTIONS)) from None


def _noise_targets(network: Network, loss: Loss | None, batch: int, file: str | None) -> np.ndarray:
    """``targets = "noise"``: the noise drawn by a leading ``ddpm_noise`` layer (what the
    denoiser learns to predict)."""
    from derivcheck.layers.diffusion import DdpmNoise

    first, key = network.layers[0], "inputs.targets"
    if not isinstance(first, DdpmNoise):
        raise CaseError('targets = "noise" needs a network that starts with a ddpm_noise layer', file=file, key=key, value="noise")
    if loss is None or loss.kind != "mse":
        raise CaseError('targets = "noise" is for the noise-prediction loss: use loss = "mse"', file=file, key="loss", value=getattr(loss, "kind", None), allowed="mse")
    if network.out_size != first.features:
        raise CaseError(f"the denoiser must output {first.features} values (one per noise component), it outputs {network.out_size}", file=file, key="network", value=network.out_size)
    return first.draws(batch)[0]


def _formula_targets(spec: Any, x: np.ndarray, network: Network, loss: Loss | None, file: str | None) -> np.ndarray:
    """Targets computed from formulas of the inputs ``x0, x1, ...`` (safe parser only)."""
    key = "inputs.targets"
    if loss is None:
        raise CaseError("targets need a loss", file=file, key=key)
    if not isinstance(spec, list) or len(spec) != network.out_size or not all(isinstance(t, str) for t in spec):
        raise CaseError(f"must be an array of {network.out_size} formula string(s), one per network output", file=file, key=key, value=spec, allowed='["sin(pi*x0) * x1"]')
    names = [f"x{j}" for j in range(network.in_size)]
    columns = []
    for index, text in enumerate(spec):
        expression = parse_expression(text, variables=names, what=f"key '{key}[{index}]'")
        function = sp.lambdify([[make_symbol(n) for n in names]], expression, modules=NUMPY_MODULES)
        with np.errstate(all="ignore"):
            column = np.broadcast_to(np.asarray(function(list(x.T)), dtype=float), (x.shape[0],))
        if not np.all(np.isfinite(column)):
            bad = int(np.argmax(~np.isfinite(column)))
            raise CaseError(f"formula is not finite at sample {bad} (x = {x[bad].round(4).tolist()})", file=file, key=f"{key}[{index}]", value=text)
        columns.append(column)
    try:
        return loss.encode_targets(np.stack(columns, axis=1), network.out_size)
    except ValueError as exc:
        raise CaseError(str(exc), file=file, key=key) from None


def load_network_case(table: Mapping[str, Any], *, file: str | None, base_dir: Path | None, overrides: Mapping[str, Any]) -> Case:
    """Validate a network case table (see the module docstring) and build the :class:`Case`."""
    reader = _Reader(table, file)
    reader.check_keys(TOP_LEVEL_KEYS)
    overrides = dict(overrides or {})
    default_name = one_line(Path(file).stem) if file else "case"
    name = reader.get("name", str, default_name)
    description = reader.get("description", str, "")
    dtype = overrides.get("dtype") or reader.get("dtype", str, "float64")
    if dtype not in DTYPES:
        raise reader.error("unknown dtype", "dtype", dtype, ", ".join(DTYPES))
    seed = overrides["seed"] if overrides.get("seed") is not None else reader.get("seed", int, 0)
    if not isinstance(seed, int) or seed < 0:
        raise reader.error("must be a non-negative integer", "seed", seed)

    layers = _build_layers(table.get("network"), file)
    in_shape = reader.get("input_shape", list)
    if in_shape is not None and (not in_shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in in_shape)):
        raise reader.error("must be a non-empty array of positive integers (the per-sample shape)", "input_shape", in_shape, "[1, 8, 8] for 1x8x8 images, [6, 4] for 6 steps of 4 features")
    try:
        network = Network.build(layers, in_shape=in_shape)
    except ValueError as exc:
        raise CaseError(str(exc), file=file, key="network") from None
    loss = _build_loss(table["loss"], file) if "loss" in table else None
    if loss is not None:
        problem_text = loss.check_output_size(network.out_size)
        if problem_text:
            raise CaseError(f"loss {loss.kind} does not fit a network with {network.out_size} output(s)", file=file, key="loss", value=loss.kind, allowed=problem_text)

    has_data, has_inputs = "data" in table, "inputs" in table
    if has_data == has_inputs:
        raise CaseError("give exactly one of 'data' (a CSV file) or 'inputs' (random inputs)", file=file, key="data" if has_data else "inputs")
    rng = np.random.default_rng([seed, 1])
    meta: dict[str, Any] = {}
    if has_data:
        _check_budget(network, 1, table, overrides, file)  # before reading: the sizes that do not depend on the rows
        x, targets, meta = _load_data(table["data"], base_dir or Path("."), file, network, loss)
        _check_budget(network, x.shape[0], table, overrides, file)
    else:
        inputs = table["inputs"]
        if not isinstance(inputs, dict):
            raise CaseError("must be a table", file=file, key="inputs", value=inputs, allowed="{ batch = 8, scale = 1.0 }")
        sub = _Reader(inputs, file, "inputs.")
        sub.check_keys(INPUT_KEYS)
        batch = sub.get("batch", int, 8)
        if not 1 <= batch <= MAX_BATCH:
            raise sub.error("out of range", "batch", batch, f"1..{MAX_BATCH}")
        scale = sub.get("scale", float, 1.0)
        if not (np.isfinite(scale) and 0 < scale <= MAX_DATA_VALUE):
            raise sub.error("must be a positive finite number", "scale", scale, f"0 < scale <= {MAX_DATA_VALUE:g}")
        _check_budget(network, batch, table, overrides, file)
        x = _random_inputs(sub, rng, batch, network, scale)
        targets = loss.random_targets(rng, batch, network.out_size) if loss is not None else None
        if inputs.get("targets") == "noise":
            targets = _noise_targets(network, loss, batch, file)
        elif "targets" in inputs:
            targets = _formula_targets(inputs["targets"], x, network, loss, file)

    sgd_lr = _positive_option(table, "sgd", "lr", "learning rate, a positive number", "{ lr = 0.1 }", file)
    clip = _positive_option(table, "clip", "max_norm", "the max_norm of clip_grad_norm_, a positive number", "{ max_norm = 1.0 }", file)

    if not network.layers[0].input_is_differentiable:
        first = network.layers[0]
        try:
            first.sample_constants(x)
        except ValueError as exc:
            raise CaseError(str(exc), file=file, key="data" if has_data else "inputs") from None
    problem = Problem(network, network.init_params(seed), x, loss, targets, dtype=dtype, sgd_lr=sgd_lr, clip_max_norm=clip, meta=meta)
    quantities = reader.get("quantities", list, None)
    if quantities is None:
        quantities = [q for q in DEFAULT_QUANTITIES if _exists(q, problem)]
        if sgd_lr is not None:
            quantities.append("sgd_step")
        if clip is not None:
            quantities.append("clip_grad")
    if not quantities or not all(isinstance(q, str) for q in quantities):
        raise reader.error("must be a non-empty array of strings", "quantities", quantities)
    try:
        expand_quantities(quantities, problem)
    except ValueError as exc:
        raise CaseError(str(exc), file=file, key="quantities") from None

    engines = overrides.get("engines") or reader.get("engines", list, list(NETWORK_ENGINES))
    validate_engine_names(engines, file=file, key="engines")
    tolerance = _tolerance(table.get("tolerance"), file)
    finite_diff = _finite_diff(table.get("finite_diff"), file)
    return Case(name=name, problem=problem, quantities=list(quantities), engines=list(engines), description=description, file=file, seed=seed, tolerance=tolerance, finite_diff=finite_diff)


def _check_budget(network: Network, batch: int, table: Mapping[str, Any], overrides: Mapping[str, Any], file: str | None) -> None:
    """Refuse the case before anything is allocated when its estimated cost exceeds a
    limit of :mod:`derivcheck.budget` (the quantities and engines as the file asks, else
    the defaults: every parameter and input gradient, every engine)."""
    from derivcheck import budget
    from derivcheck.quantities import ALL_PARAMS, INPUT_GRAD, JACOBIAN

    engines = overrides.get("engines") or table.get("engines")
    finite = "finite_diff" in engines if isinstance(engines, list) else True
    names = table.get("quantities")
    if isinstance(names, list) and all(isinstance(q, str) for q in names):
        params = any(q == ALL_PARAMS or (q.startswith("dL/d") and q != INPUT_GRAD) or q in ("sgd_step", "clip_grad") for q in names)
        inputs = sum(q in (INPUT_GRAD, JACOBIAN) for q in set(names))
    else:
        params, inputs = True, 2 if network.layers[0].input_is_differentiable else 0
    budget.check_network(network, batch, file=file, finite_differences=finite, param_grads=params, input_grads=inputs)


def _positive_option(table: Mapping[str, Any], key: str, name: str, what: str, example: str, file: str | None) -> float | None:
    """``table[key][name]``, a positive finite number, from a one-entry table such as
    ``sgd = { lr = 0.1 }``; ``None`` when `key` is absent."""
    if key not in table:
        return None
    spec = table[key]
    if not isinstance(spec, dict):
        raise CaseError("must be a table", file=file, key=key, value=spec, allowed=example)
    sub = _Reader(spec, file, f"{key}.")
    sub.check_keys((name,))
    value = sub.get(name, float, required=True, what=what)
    if not (np.isfinite(value) and value > 0):
        raise sub.error("must be a positive finite number", name, value)
    return float(value)


def _exists(quantity: str, problem: Problem) -> bool:
    """Whether a default quantity is defined for `problem` (no loss: only dy/dx; index
    inputs: no input derivatives; batch-coupled layers: no per-sample Jacobian)."""
    try:
        expand_quantities([quantity], problem)
    except ValueError:
        return False
    return True
