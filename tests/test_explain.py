"""derivcheck explain: every small shipped case checks out, a seeded wrong local derivative
shows up as ✗ at the right step, large cases are refused with a hint."""

from __future__ import annotations

from pathlib import Path

import pytest

from derivcheck import cli, load_case
from derivcheck.explain_steps import ExplainTooLarge, explain
from derivcheck.layers.activations import Tanh

CASES = Path(__file__).parent.parent / "cases"
# every shipped case explains: small MLPs fully expanded, the rest family by family
ALL_CASES = sorted(CASES.rglob("*.toml"))


@pytest.mark.parametrize("path", ALL_CASES, ids=lambda p: p.stem)
def test_every_shipped_case_checks_out(path):
    result = explain(load_case(path))
    assert result.ok, result.failing_steps()
    assert len(result.steps) >= 3
    assert all(step.checks or "Autograd" in step.title or "Operators" in step.title or "training step" in step.title for step in result.steps)
    latex = result.to_latex()  # every family's equations go into one document: braces must pair up
    assert latex.rstrip().endswith(r"\end{document}") and latex.count("{") - latex.count(r"\{") == latex.count("}") - latex.count(r"\}")
    assert result.to_markdown().startswith("# derivcheck explain")


def test_network_steps_and_formats():
    result = explain(load_case(CASES / "seq-16-8-4-2.toml"))
    titles = [s.title for s in result.steps]
    assert titles[0] == "Forward pass" and titles[-2:] == ["Vector chain rule (backward)", "Total derivative"]
    text = result.to_text()
    assert "z1 = W1 x + b1" in text and "da1/dz1 = diag(relu'(z1))" in text and "dL/dz3 = softmax(z3) - t" in text
    assert "torch retain_grad" in text and "[✓]" in text
    markdown = result.to_markdown()
    assert "$$ z_{1} = W_{1} x + b_{1} $$" in markdown and "✓" in markdown
    latex = result.to_latex()
    assert latex.startswith(r"\documentclass{article}") and r"\checkmark" in latex and latex.rstrip().endswith(r"\end{document}")
    assert result._repr_markdown_() == markdown and result._repr_latex_().startswith("$$")


def test_seeded_wrong_local_derivative_is_marked_at_its_step(monkeypatch):
    monkeypatch.setattr(Tanh, "numpy_backward", lambda self, g, cache, params: (g * (1 - cache), {}))
    result = explain(load_case(CASES / "tanh-regression.toml"))
    assert not result.ok
    failing = result.failing_steps()
    assert "Local derivative of layer 1 (tanh)" in failing and "Local derivative of layer 3 (tanh)" in failing
    assert "Forward pass" not in failing and "Local derivative of layer 0 (linear)" not in failing
    assert "[✗] da1/dz1" in result.to_text()


def test_pde_explanation():
    result = explain(load_case(CASES / "pde" / "helmholtz-mms.toml"))
    text = result.to_text()
    assert "laplacian(u) = u_xx + u_yy" in text
    assert "u_xx = -pi**2*a1**2*sin(pi*a1*x)*sin(pi*a2*y)" in text
    assert "u_xx = torch.autograd.grad(u_x, x, grad_outputs=ones, create_graph=True)[0]" in text


def test_a_large_mlp_is_explained_as_one_unit_per_layer_and_checked_in_bulk(capsys):
    """Over the expanded derivation's limits (600 parameters, width 32) explain shows one
    representative unit per layer and checks every layer in bulk, instead of refusing."""
    result = explain(load_case(CASES / "digits-mlp.toml"))
    assert result.ok, result.failing_steps()
    titles = [s.title for s in result.steps]
    assert "Layer 0 (linear): unit 0 of 128, then every unit at once" in titles
    assert "Backward pass, every layer in bulk" in titles and titles[-1] == "Total derivative of every parameter"
    assert "26,122 parameters" in result.intro
    assert cli.main(["explain", str(CASES / "tanh-20-20-20.toml")]) == 0
    assert "all steps check out" in capsys.readouterr().out


def test_a_case_without_a_loss_is_refused_with_a_reason(tmp_path):
    case = tmp_path / "noloss.toml"
    case.write_text('name = "noloss"\ninput_shape = [1, 4, 4]\nnetwork = [{ layer = "conv2d", in_channels = 1, out_channels = 1, kernel_size = 3 }]\nquantities = ["dy/dx"]\ninputs = { batch = 2 }\n')
    with pytest.raises(ExplainTooLarge, match="has no loss"):
        explain(load_case(case))


def test_cli_formats(capsys):
    assert cli.main(["explain", str(CASES / "iris-mlp.toml"), "--format", "markdown"]) == 0
    assert capsys.readouterr().out.startswith("# derivcheck explain: iris-mlp")
    assert cli.main(["explain", str(CASES / "pde" / "heat-1d.toml"), "--format", "latex"]) == 0
    assert r"\section*{derivcheck explain: heat-1d}" in capsys.readouterr().out


def test_ddpm_case_explains_the_forward_process_and_noise_loss():
    result = explain(load_case(CASES / "diffusion-ddpm-step.toml"))
    assert result.ok, result.failing_steps()
    text = result.to_text()
    for fragment in ("the forward process q(x_t | x_0)", "from three schedules", "sinusoidal time embedding", "noise-prediction loss", "dL/dx0 = sqrt(abar_t)"):
        assert fragment in text
    assert "\\bar\\alpha_t" in result.to_markdown()


def test_score_case_derives_the_score_step_by_step():
    result = explain(load_case(CASES / "score-gaussian-mixture.toml"))
    assert result.ok, result.failing_steps()
    titles = [s.title for s in result.steps]
    assert titles[0] == "The density and its log" and "The score, derived" in titles
    assert any("optimal noise predictor" in t for t in titles) and any("Divergence" in t for t in titles)
    assert "Hutchinson, 256 vectors" in result.to_text()


def test_score_explanation_flags_a_wrong_hand_formula(monkeypatch):
    from derivcheck.kinds.score.engines import numpy_backprop as score_numpy

    def no_inverse(problem, abar, x):
        score, hessian, r, covs = original(problem, abar, x)
        return score * 2.0, hessian, r, covs

    original = score_numpy.mixture_score
    monkeypatch.setattr(score_numpy, "mixture_score", no_inverse)
    result = explain(load_case(CASES / "score-gaussian-mixture.toml"))
    assert not result.ok
    assert "The score, derived" in result.failing_steps()
