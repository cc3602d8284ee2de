"""The GAN training step: every engine agrees on D and G gradients, detach() leaves the
generator's .grad at zero after the D step, and a missing detach() would leak a nonzero
gradient into G."""

from __future__ import annotations

import numpy as np
import pytest

from derivcheck import load_case, run_any
from derivcheck.kinds.network.case import case_from_dict
from derivcheck.errors import CaseError
from derivcheck.kinds.gan.case import DETACHED, UNDETACHED, torch_gan_step

from helpers import CASES

G = [{"layer": "linear", "in": 2, "out": 4}, {"layer": "tanh"}, {"layer": "linear", "in": 4, "out": 2}]
D = [{"layer": "linear", "in": 2, "out": 3}, {"layer": "tanh"}, {"layer": "linear", "in": 3, "out": 1}]


def test_shipped_gan_step_agrees_and_detach_matters():
    case = load_case(CASES / "gan-step.toml")
    result = run_any(case)[0]
    assert result.verdict == "agree", [q.message for q in result.quantities if not q.ok]
    names = [q.name for q in result.quantities]
    assert {"L_D", "L_G", DETACHED, UNDETACHED} <= set(names)
    assert any(n.startswith("dL_D/dD.") for n in names) and any(n.startswith("dL_G/dG.") for n in names)
    torch_values = torch_gan_step(case.problem)
    assert np.all(torch_values[DETACHED].values == 0)
    assert np.linalg.norm(torch_values[UNDETACHED].values) > 1e-3
    assert result.meta["leaked_generator_gradient_norm"] > 1e-3


def test_sigmoid_discriminator_with_bce():
    table = {"name": "gan-bce", "generator": G, "discriminator": D + [{"layer": "sigmoid"}], "loss": "bce", "inputs": {"batch": 4}}
    result = run_any(case_from_dict(table))[0]
    assert result.verdict == "agree"


def test_wrong_discriminator_gradient_is_caught(monkeypatch):
    """A seeded bug in the numpy engine's linear backward shows up in the GAN gradients."""
    from derivcheck.layers import linear

    original = linear.Linear.numpy_backward

    def wrong(self, grad_y, cache, params):
        dx, grads = original(self, grad_y, cache, params)
        return dx, {**grads, "weight": grads["weight"] * 1.001}

    monkeypatch.setattr(linear.Linear, "numpy_backward", wrong)
    result = run_any(case_from_dict({"generator": G, "discriminator": D, "inputs": {"batch": 4}}))[0]
    bad = [q for q in result.quantities if q.verdict == "disagree"]
    assert bad and all(q.odd_engine == "numpy" for q in bad)


@pytest.mark.parametrize(
    "change,fragment",
    [
        ({"discriminator": D[:2]}, "exactly one output"),
        ({"generator": G[:2]}, "generator makes 4 features but the discriminator takes 2"),
        ({"loss": "mse"}, "binary cross-entropy"),
        ({"inputs": {"batch": 0}}, "out of range"),
        ({"latent": 3}, "unknown key"),
    ],
)
def test_bad_gan_cases(change, fragment):
    with pytest.raises(CaseError, match=fragment):
        case_from_dict({"generator": G, "discriminator": D, **change}, file="gan.toml")
