"""Monte-Carlo arithmetic and the operand-magnitude floor."""

from __future__ import annotations

import numpy as np
import torch

from derivcheck.check.noise import RoundingNoise, magnitude_floor, noisy_runs, observed, spread


def test_rounding_noise_moves_rounding_results_and_leaves_exact_ones():
    x = torch.linspace(0.1, 1, 5, dtype=torch.float64)
    with RoundingNoise(1):
        y = torch.exp(x) + 1
        z = torch.relu(x)
    assert not torch.equal(y, torch.exp(x) + 1)
    assert torch.allclose(y, torch.exp(x) + 1, rtol=1e-14)
    assert torch.equal(z, torch.relu(x))  # exact operators are not perturbed


def test_noise_is_per_dtype_and_seeded():
    x = torch.linspace(0.1, 1, 5)
    runs32 = noisy_runs(lambda: (torch.sin(x) * 3).numpy(), 2, seed=0)
    again = noisy_runs(lambda: (torch.sin(x) * 3).numpy(), 2, seed=0)
    assert np.array_equal(runs32[0], again[0])
    noise = spread(runs32, (torch.sin(x) * 3).numpy())
    assert np.all(noise > 0) and np.all(noise < 1e-5)


def test_cancellation_shows_in_the_spread():
    a = torch.tensor([1.0, 1e8], dtype=torch.float64)

    def cancelling():
        return ((a + 1e-3) - a).numpy()  # 1e-3 recovered from 1e8 loses ~8 digits

    runs = noisy_runs(cancelling, 2, seed=0)
    noise = spread(runs, cancelling())
    assert noise[1] > 1e-10 > noise[0]


def test_the_magnitude_floor_covers_quantised_cancellation():
    """log_softmax followed by logsumexp is constant: its float32 gradient lands on one of a
    few neighbouring floats, which perturbation runs may all reproduce; the floor eps * M of
    the cancelling operators' operands does not depend on luck."""
    x = torch.tensor([[11.005, -7.4389, -0.3758]], requires_grad=True)
    (grad,), magnitude = observed(lambda: torch.autograd.grad(torch.logsumexp(torch.log_softmax(x, -1), -1).sum(), x))
    assert abs(float(grad[0, 0])) <= 10 * magnitude_floor("float32", magnitude)
    assert magnitude > 1.0


def test_sentinels_for_infinity_do_not_inflate_the_floor():
    x = torch.tensor([1.0, torch.finfo(torch.float64).min, 2.0], dtype=torch.float64)
    _, magnitude = observed(lambda: torch.logcumsumexp(x, 0) + x)
    assert magnitude < 10
