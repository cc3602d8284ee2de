"""``derivcheck explain`` for a GAN case: the training step of the PyTorch DCGAN tutorial,
the discriminator loss and its gradients, what ``detach()`` stops -- the gradient that
would leak into the generator without it, computed and shown -- and the generator step.

Every value is computed three ways and compared: the real training step on the torch
modules (:func:`~derivcheck.kinds.gan.case.torch_gan_step`), the hand-written numpy
backward and the SymPy-derived rules, each run on the three ordinary network problems the
step is made of (D on real data, G->D on the fakes with target 0, G->D with target 1).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from derivcheck.explain_steps import Check, Explanation, Step, _compare
from derivcheck.kinds.gan.case import DETACHED, UNDETACHED, _engine_values, torch_gan_step


def explain_gan(case: Any) -> Explanation:
    from derivcheck.engines import NumpyBackprop, SymbolicEngine

    problem = case.problem
    torch_values = torch_gan_step(problem)
    numpy_values = _engine_values(problem, NumpyBackprop())
    symbolic_values = _engine_values(problem, SymbolicEngine())

    def three(name: str) -> dict[str, np.ndarray]:
        return {"torch (real step)": torch_values[name].values, "numpy": numpy_values[name].values, "symbolic": symbolic_values[name].values}

    n = problem.z.shape[0]
    loss = problem.loss.kind
    intro = (
        f"One GAN training step: generator G: {problem.generator.describe()}, discriminator D: {problem.discriminator.describe()}, "
        f"loss {loss}, {n} latent samples z and {n} real samples x. Each value is computed by the real torch step, the numpy "
        "backward and the SymPy-derived rules, and compared."
    )
    steps = []

    code = Step("The training step (PyTorch's DCGAN tutorial)")
    code.text += [
        "fake = G(z)",
        f"errD = {loss}(D(x), 1) + {loss}(D(fake.detach()), 0);  errD.backward();  optD.step()     # the D step",
        f"errG = {loss}(D(fake), 1);  errG.backward();  optG.step()                                  # the G step",
        "D is trained to tell real (1) from fake (0); G is trained so that D calls its fakes real (the non-saturating loss).",
    ]
    code.latex.append(r"L_D = \ell(D(x), 1) + \ell(D(\operatorname{sg}[G(z)]), 0), \qquad L_G = \ell(D(G(z)), 1)")
    steps.append(code)

    d_step = Step("The discriminator loss and dL_D/dD")
    d_step.text.append(f"L_D = {float(torch_values['L_D'].values):.6g}: the real term pushes D(x) up, the fake term pushes D(G(z)) down")
    d_step.checks.append(_compare("L_D", three("L_D")))
    for name in problem.param_names("D"):
        d_step.checks.append(_compare(f"dL_D/d{name} {tuple(problem.params[name].shape)}", three(f"dL_D/d{name}")))
    steps.append(d_step)

    detach = Step("What detach() stops")
    leaked = torch_values[UNDETACHED].values
    after = torch_values[DETACHED].values
    detach.text.append(
        "fake.detach() cuts the graph between G and the D step: after errD.backward() every G parameter's .grad is still zero "
        f"(measured on the real modules: max |G.grad| = {float(np.max(np.abs(after), initial=0.0)):.1e})"
    )
    detach.checks.append(Check("G.grad after errD.backward() with detach()", bool(np.all(after == 0)), f"max |G.grad| = {float(np.max(np.abs(after), initial=0.0)):.1e} (exactly zero expected)"))
    detach.text.append(
        f"without detach(), errD.backward() would send dL_D/dG into G: ||dL_D/dG|| = {float(np.linalg.norm(leaked)):.4g} over {leaked.size} parameters -- "
        "the gradient of the fake term, which asks G to make its samples easier to reject: the opposite of G's own objective. "
        "It would accumulate in G.grad and be added to the G step unless G.zero_grad() ran in between."
    )
    detach.latex.append(
        r"\frac{\partial L_D}{\partial \theta_G} = \Big(\frac{\partial G(z)}{\partial \theta_G}\Big)^{\!\top} \frac{\partial\, \ell(D(G(z)), 0)}{\partial G(z)} \neq 0 \quad\text{(what detach() removes)}"
    )
    detach.checks.append(_compare("dL_D/dG without detach (every G parameter, flattened)", three(UNDETACHED)))
    steps.append(detach)

    g_step = Step("The generator loss and dL_G/dG, through D")
    g_step.text.append(f"L_G = {float(torch_values['L_G'].values):.6g}; its gradient flows through D's weights (not updated in this step) into G")
    g_step.latex.append(r"\frac{\partial L_G}{\partial \theta_G} = \Big(\frac{\partial G(z)}{\partial \theta_G}\Big)^{\!\top} J_D^\top \frac{\partial \ell}{\partial D}")
    g_step.checks.append(_compare("L_G", three("L_G")))
    for name in problem.param_names("G"):
        g_step.checks.append(_compare(f"dL_G/d{name} {tuple(problem.params[name].shape)}", three(f"dL_G/d{name}")))
    steps.append(g_step)
    return Explanation(case.name, intro, steps)
