"""A GAN training step: generator and discriminator gradients, and what ``detach()`` does.

The step checked is the one of the PyTorch DCGAN tutorial, with discriminator logits and
``BCEWithLogitsLoss`` (or a final sigmoid and ``BCELoss``)::

    fake = G(z)
    errD = bce(D(x_real), 1) + bce(D(fake.detach()), 0);  errD.backward()   # D step
    errG = bce(D(fake), 1);                               errG.backward()   # G step

Quantities (parameters are named ``G.<i>.<name>`` and ``D.<i>.<name>``):

- ``L_D``, ``L_G``: the two losses;
- ``dL_D/dD.*``: the discriminator gradient of ``errD``;
- ``dL_G/dG.*``: the generator gradient of ``errG`` (through the discriminator);
- ``G.grad after errD.backward() (detach)``: all generator gradients after the D step --
  zero, because ``detach()`` cut the graph (the torch engine runs the real code; the others
  state the zero the maths gives);
- ``dL_D/dG (without detach)``: what the generator would receive from ``errD`` had the
  sample not been detached -- nonzero, the gradient a missing ``detach()`` leaks into G.

The symbolic, finite-difference and numpy engines compute these from three ordinary
network problems (D on real data; G->D on the fakes with target 0; G->D with target 1);
the torch engine runs the training step above on the real modules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from derivcheck.case_fields import CaseBase
from derivcheck.compare import Tolerance, compare_quantity
from derivcheck.engines import make_engines
from derivcheck.errors import CaseError
from derivcheck.layers import Loss
from derivcheck.problem import Network, Problem
from derivcheck.values import EngineValue

DETACHED = "G.grad after errD.backward() (detach)"
UNDETACHED = "dL_D/dG (without detach)"


@dataclass
class GanProblem:
    """Generator ``G: (N, latent) -> (N, data)``, discriminator ``D: (N, data) -> (N, 1)``."""

    generator: Network
    discriminator: Network
    params: dict[str, np.ndarray]
    z: np.ndarray
    x_real: np.ndarray
    loss: Loss
    dtype: str = "float64"
    meta: dict = field(default_factory=dict)

    def _composite(self) -> tuple[Network, dict[str, np.ndarray], dict[str, str]]:
        """G followed by D as one network; its parameter names -> ``G.*``/``D.*`` names."""
        layers = list(self.generator.layers) + list(self.discriminator.layers)
        network = Network.build(layers, in_shape=self.generator.shapes[0])
        offset = len(self.generator.layers)
        names = {}
        for ref in network.params():
            prefix, local_index = ("G", ref.layer) if ref.layer < offset else ("D", ref.layer - offset)
            names[ref.qualified] = f"{prefix}.{local_index}.{ref.local}"
        return network, {name: self.params[names[name]] for name in names}, names

    def sub_problems(self) -> dict[str, tuple[Problem, dict[str, str]]]:
        """``real`` (D on data, target 1), ``fake`` (G->D, target 0), ``gen`` (G->D, target 1)."""
        n = self.z.shape[0]
        d_names = {ref.qualified: f"D.{ref.qualified}" for ref in self.discriminator.params()}
        d_params = {name: self.params[full] for name, full in d_names.items()}
        composite, c_params, c_names = self._composite()
        ones, zeros = np.ones((n, 1)), np.zeros((n, 1))
        return {
            "real": (Problem(self.discriminator, d_params, self.x_real, self.loss, ones, dtype=self.dtype), d_names),
            "fake": (Problem(composite, dict(c_params), self.z, self.loss, zeros, dtype=self.dtype), c_names),
            "gen": (Problem(composite, dict(c_params), self.z, self.loss, ones, dtype=self.dtype), c_names),
        }

    def param_names(self, prefix: str) -> list[str]:
        return [name for name in self.params if name.startswith(prefix + ".")]


def _engine_values(problem: GanProblem, engine: Any) -> dict[str, EngineValue]:
    """The GAN quantities from one engine's gradients of the three sub-problems."""
    from derivcheck.quantities import expand_quantities

    parts: dict[str, dict[str, Any]] = {}
    for key, (sub, names) in problem.sub_problems().items():
        raw = engine.compute(sub, expand_quantities(["L", "dL/dparams"], sub))
        parts[key] = {"L": raw["L"], **{names[q[4:]]: v for q, v in raw.items() if q.startswith("dL/d")}}
    dtype = problem.dtype if engine.name in ("numpy", "torch") else "float64"

    def combine(*values: EngineValue) -> EngineValue:
        total = sum(v.values for v in values)
        errors = [v.error_estimate for v in values]
        estimate = np.asarray(sum(e for e in errors if e is not None)) if all(e is not None for e in errors) else None
        return EngineValue(np.asarray(total), dtype=dtype, error_estimate=estimate, note=values[0].note)

    out = {"L_D": combine(parts["real"]["L"], parts["fake"]["L"]), "L_G": combine(parts["gen"]["L"])}
    for name in problem.param_names("D"):
        out[f"dL_D/d{name}"] = combine(parts["real"][name], parts["fake"][name])
    g_names = problem.param_names("G")
    for name in g_names:
        out[f"dL_G/d{name}"] = combine(parts["gen"][name])
    leaked = [parts["fake"][n] for n in g_names]
    estimates = [v.error_estimate for v in leaked]
    out[UNDETACHED] = EngineValue(
        np.concatenate([np.ravel(v.values) for v in leaked]),
        dtype=dtype,
        error_estimate=np.concatenate([np.ravel(e) for e in estimates]) if all(e is not None for e in estimates) else None,
    )
    out[DETACHED] = EngineValue(np.zeros(sum(problem.params[n].size for n in g_names)), dtype=dtype, note="zero by the maths of detach()")
    return out


def torch_gan_step(problem: GanProblem, device: str = "cpu") -> dict[str, EngineValue]:
    """The training step of the module docstring, on the real torch modules."""
    import torch

    dtype = torch.float64 if problem.dtype == "float64" else torch.float32
    g_params = {k[2:]: v for k, v in problem.params.items() if k.startswith("G.")}
    d_params = {k[2:]: v for k, v in problem.params.items() if k.startswith("D.")}
    G = problem.generator.torch_model(g_params, dtype, device)
    D = problem.discriminator.torch_model(d_params, dtype, device)
    z = torch.as_tensor(problem.z, dtype=dtype, device=device)
    x = torch.as_tensor(problem.x_real, dtype=dtype, device=device)
    n = z.shape[0]
    ones = torch.ones(n, 1, dtype=dtype, device=device)
    zeros = torch.zeros(n, 1, dtype=dtype, device=device)

    def bce(out: Any, target: Any) -> Any:
        return problem.loss.torch_loss(out, target)

    def grads(model: Any) -> list[Any]:
        return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]

    def value(tensor: Any, note: str = "") -> EngineValue:
        return EngineValue(tensor.detach().to("cpu", torch.float64).numpy().copy(), dtype=problem.dtype, note=note)

    out: dict[str, EngineValue] = {}
    fake = G(z)
    err_d = bce(D(x), ones) + bce(D(fake.detach()), zeros)
    err_d.backward()
    g_after_d = grads(G)
    out["L_D"] = value(err_d)
    for (name, _), grad in zip(D.named_parameters(), grads(D)):
        out[f"dL_D/dD.{name}"] = value(grad)
    out[DETACHED] = value(torch.cat([g.reshape(-1) for g in g_after_d]), "real errD.backward() after fake.detach()")
    D.zero_grad()
    G.zero_grad()
    err_g = bce(D(fake), ones)
    err_g.backward()
    out["L_G"] = value(err_g)
    for (name, _), grad in zip(G.named_parameters(), grads(G)):
        out[f"dL_G/dG.{name}"] = value(grad)
    D.zero_grad()
    G.zero_grad()
    leaky = bce(D(x), ones) + bce(D(G(z)), zeros)
    leaky.backward()
    out[UNDETACHED] = value(torch.cat([g.reshape(-1) for g in grads(G)]), "errD.backward() without detach")
    return out


def run_gan_case(case: GanCase, *, device: str = "cpu") -> list[Any]:
    """The GAN kind's runner (see :mod:`derivcheck.case_kinds`)."""
    return [run_gan_problem(case.problem, case.engines, name=case.name, tolerance=case.tolerance, device=device, file=case.file, description=case.description, finite_diff=case.finite_diff)]


def run_gan_problem(
    problem: GanProblem,
    engine_names: Sequence[str],
    *,
    name: str = "gan",
    tolerance: Tolerance = Tolerance(),
    device: str = "cpu",
    file: str | None = None,
    description: str = "",
    finite_diff: Mapping[str, Any] | None = None,
) -> Any:
    """Every engine's GAN quantities, compared; a :class:`~derivcheck.runner.CaseResult`."""
    import time
    import traceback

    from derivcheck.runner import CaseResult

    results: dict[str, dict[str, EngineValue]] = {}
    errors, timings = [], {}
    for engine in make_engines([e for e in engine_names if e != "torch_func"], device=device, finite_diff=dict(finite_diff or {})):
        start = time.perf_counter()
        try:
            results[engine.name] = torch_gan_step(problem, getattr(engine, "device", "cpu")) if engine.name == "torch" else _engine_values(problem, engine)
        except Exception as exc:  # one engine's failure must not hide the others
            errors.append(f"engine {engine.name} failed: " + traceback.format_exception_only(type(exc), exc)[-1].strip())
        timings[engine.name] = time.perf_counter() - start
    names = list(next(iter(results.values()))) if results else []
    g_labels = [f"{n}[{', '.join(map(str, idx))}]" for n in problem.param_names("G") for idx in np.ndindex(*problem.params[n].shape)]
    scale = {group: max((float(np.max(np.abs(r[q].values))) for r in results.values() for q in r if q.startswith(group)), default=0.0) for group in ("dL_D/d", "dL_G/d")}
    compared = []
    for quantity in names:
        values = {engine: r[quantity] for engine, r in results.items() if quantity in r}
        group = next((g for g in scale if quantity.startswith(g)), None)
        label = (lambda index: g_labels[index[0]]) if quantity in (DETACHED, UNDETACHED) else (lambda index: str(list(index)))
        compared.append(compare_quantity(quantity, values, tolerance=tolerance, scale=scale[group] if group else None, label=label))
    undetached = results.get("torch", {}).get(UNDETACHED)
    meta = {"dtype": problem.dtype, "device": device, "samples": int(problem.z.shape[0]), **problem.meta}
    if undetached is not None:
        meta["leaked_generator_gradient_norm"] = float(np.linalg.norm(undetached.values))
    return CaseResult(name=name, quantities=compared, engines=list(results), file=file, description=description, errors=errors, timings=timings, meta=meta)


@dataclass(kw_only=True)
class GanCase(CaseBase):
    """A validated GAN case (see :func:`load_gan_case`)."""

    problem: GanProblem

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name, "file": self.file, "description": self.description, "kind": "gan",
            "network": f"G: {self.problem.generator.describe()} | D: {self.problem.discriminator.describe()}",
            "loss": self.problem.loss.kind, "samples": int(self.problem.z.shape[0]), "dtype": self.problem.dtype,
            "quantities": ["L_D", "L_G", "dL_D/dD.*", "dL_G/dG.*", DETACHED, UNDETACHED], "engines": list(self.engines),
        }  # fmt: skip


GAN_KEYS = ("name", "description", "dtype", "seed", "generator", "discriminator", "loss", "inputs", "engines", "tolerance", "finite_diff")


def load_gan_case(table: Mapping[str, Any], *, file: str | None, overrides: Mapping[str, Any], base_dir: Any = None) -> GanCase:
    """Build a :class:`GanCase` from a case table with ``generator`` and ``discriminator``
    layer arrays, ``loss`` (``"bce_with_logits"`` or ``"bce"``) and ``inputs = { batch,
    latent, real_mean, real_std }`` (latent ``z`` standard normal; real samples normal)."""
    from derivcheck import budget
    from derivcheck.case_fields import _build_layers, _build_loss, _finite_diff, _Reader, _tolerance, validate_engine_names
    from derivcheck.problem import DTYPES

    reader = _Reader(table, file)
    reader.check_keys(GAN_KEYS)
    name = reader.get("name", str, "gan")
    description = reader.get("description", str, "")
    dtype = overrides.get("dtype") or reader.get("dtype", str, "float64")
    if dtype not in DTYPES:
        raise reader.error("unknown dtype", "dtype", dtype, ", ".join(DTYPES))
    seed = overrides["seed"] if overrides.get("seed") is not None else reader.get("seed", int, 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise reader.error("must be a non-negative integer", "seed", seed)
    nets = {}
    for key in ("generator", "discriminator"):
        layers = _build_layers(table.get(key), file)
        try:
            nets[key] = Network.build(layers)
        except ValueError as exc:
            raise CaseError(str(exc), file=file, key=key) from None
    generator, discriminator = nets["generator"], nets["discriminator"]
    if generator.out_size != discriminator.in_size:
        raise CaseError(f"the generator makes {generator.out_size} features but the discriminator takes {discriminator.in_size}", file=file, key="discriminator")
    if discriminator.out_size != 1:
        raise CaseError("the discriminator must have exactly one output (a logit or a probability)", file=file, key="discriminator", value=discriminator.out_size)
    loss = _build_loss(table.get("loss", "bce_with_logits"), file)
    if loss.kind not in ("bce", "bce_with_logits"):
        raise CaseError("a GAN step uses a binary cross-entropy", file=file, key="loss", value=loss.kind, allowed="bce_with_logits, bce")
    inputs = table.get("inputs", {})
    if not isinstance(inputs, dict):
        raise CaseError("must be a table", file=file, key="inputs", value=inputs, allowed="{ batch = 8, real_mean = 2.0 }")
    sub = _Reader(inputs, file, "inputs.")
    sub.check_keys(("batch", "real_mean", "real_std"))
    batch = sub.get("batch", int, 8)
    if not 1 <= batch <= 10_000:
        raise sub.error("out of range", "batch", batch, "1..10000")
    real_mean, real_std = sub.get("real_mean", float, 2.0), sub.get("real_std", float, 0.5)
    if not (np.isfinite(real_mean) and np.isfinite(real_std) and real_std > 0):
        raise sub.error("must be finite numbers, real_std > 0", "real_std", real_std)
    engines_asked = overrides.get("engines") or table.get("engines")
    for key, net in nets.items():
        budget.check_network(net, batch, file=file, finite_differences=not isinstance(engines_asked, list) or "finite_diff" in engines_asked, input_grads=1)
    rng = np.random.default_rng([seed, 2])
    z = rng.standard_normal((batch, generator.in_size))
    x_real = real_mean + real_std * rng.standard_normal((batch, discriminator.in_size))
    params = {f"G.{k}": v for k, v in generator.init_params(seed).items()}
    params.update({f"D.{k}": v for k, v in discriminator.init_params(seed + 1).items()})
    engines = overrides.get("engines") or reader.get("engines", list, ["symbolic", "finite_diff", "numpy", "torch"])
    validate_engine_names(engines, file=file, key="engines")
    problem = GanProblem(generator, discriminator, params, z, x_real, loss, dtype=dtype)
    return GanCase(
        name=name,
        problem=problem,
        engines=list(engines),
        description=description,
        file=file,
        seed=seed,
        tolerance=_tolerance(table.get("tolerance"), file),
        finite_diff=_finite_diff(table.get("finite_diff"), file),
    )
