"""Shared step math (lpo_bench.diffusion.ddim) against hand-computed values and the official LPO table."""

import math

import pytest
import torch
from diffusers import DDPMScheduler

from lpo_bench.diffusion import ddim
from lpo_bench.methods.stepwise.losses import step_dpo_loss

OFFICIAL_SIGMA = [0.0206, 0.0406, 0.1673, 0.2144, 0.2509, 0.2836, 0.3144, 0.3442, 0.3732, 0.4016,
                  0.4293, 0.4565, 0.4829, 0.5087, 0.5336, 0.5576, 0.5807, 0.6029, 0.6241, 0.6444]


@pytest.fixture(scope="module")
def sd_sched():
    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, steps_offset=1)


def test_grid_is_leading_with_offset(sd_sched):
    assert ddim.inference_timesteps(sd_sched, 20) == list(range(951, 0, -50))


def test_ddim_std_reproduces_official_table(sd_sched):
    got = [round(ddim.ddim_step_std(sd_sched, t, 20), 4) for t in range(1, 952, 50)]
    assert got == OFFICIAL_SIGMA


def test_ddim_std_hand_formula_and_eta(sd_sched):
    a = sd_sched.alphas_cumprod.double()
    t, tp = 501, 451
    want = math.sqrt((1 - a[tp]) / (1 - a[t]) * (1 - a[t] / a[tp]))
    assert ddim.ddim_step_std(sd_sched, t, 20) == pytest.approx(float(want), rel=1e-12)
    assert ddim.ddim_step_std(sd_sched, t, 20, eta=0.5) == pytest.approx(0.5 * float(want), rel=1e-12)
    assert ddim.ddim_step_std(sd_sched, t, 20, eta=0.0) == 0.0
    # last step uses the final alpha (ᾱ_0 for set_alpha_to_one=False)
    want1 = math.sqrt((1 - a[0]) / (1 - a[1]) * (1 - a[1] / a[0]))
    assert ddim.ddim_step_std(sd_sched, 1, 20) == pytest.approx(float(want1), rel=1e-12)


def test_dynamic_threshold_sigma_matches_official(sd_sched):
    official = {951: 0.500, 901: 0.495, 751: 0.479, 501: 0.448, 251: 0.413, 101: 0.385, 51: 0.355, 1: 0.350}
    for t, th in official.items():
        assert round(ddim.dynamic_threshold(t, sd_sched, 20, 0.35, 0.5), 3) == th
        # SDXL preset [0.45, 0.6]: +0.10 everywhere
        assert round(ddim.dynamic_threshold(t, sd_sched, 20, 0.45, 0.6), 3) == pytest.approx(th + 0.1)


def test_dynamic_threshold_official_formula_to_4_decimals(sd_sched):
    for i, t in enumerate(range(1, 952, 50)):
        frac = (OFFICIAL_SIGMA[i] - OFFICIAL_SIGMA[0]) / (OFFICIAL_SIGMA[19] - OFFICIAL_SIGMA[0])
        assert ddim.dynamic_threshold(t, sd_sched, 20, 0.35, 0.5) == pytest.approx(0.35 + frac * 0.15, abs=1e-4)


def test_dynamic_threshold_linear_and_sigma2(sd_sched):
    assert ddim.dynamic_threshold(476, sd_sched, 20, 0.2, 0.4, shape="linear") == pytest.approx(0.3)
    s = [ddim.ddim_step_std(sd_sched, t, 20) ** 2 for t in (1, 501, 951)]
    want = 0.2 + (s[1] - s[0]) / (s[2] - s[0]) * 0.2
    assert ddim.dynamic_threshold(501, sd_sched, 20, 0.2, 0.4, shape="sigma2") == pytest.approx(want)
    with pytest.raises(ValueError):
        ddim.dynamic_threshold(501, sd_sched, 20, 0.2, 0.4, shape="cubic")


def test_dynamic_threshold_follows_step_count(sd_sched):
    # 50 steps: grid 981..1, endpoints give th_min / th_max exactly
    assert ddim.dynamic_threshold(981, sd_sched, 50, 0.35, 0.5) == pytest.approx(0.5)
    assert ddim.dynamic_threshold(1, sd_sched, 50, 0.35, 0.5) == pytest.approx(0.35)


def test_step_log_prob_is_per_element_mean():
    x = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    mu = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    sigma = 2.0
    c = -math.log(2.0) - 0.5 * math.log(2 * math.pi)
    want0 = ((-(1.0) / 8 + c) + (-(4.0) / 8 + c)) / 2
    want1 = ((0.0 + c) + (-(4.0) / 8 + c)) / 2
    got = ddim.step_log_prob(x, mu, sigma)
    assert got.tolist() == pytest.approx([want0, want1])
    # per-row std
    got2 = ddim.step_log_prob(x, mu, torch.tensor([2.0, 1.0]))
    want1b = ((0.0 - 0.5 * math.log(2 * math.pi)) + (-(4.0) / 2 - 0.5 * math.log(2 * math.pi))) / 2
    assert got2.tolist() == pytest.approx([want0, want1b])


def test_step_dpo_loss_hand_values_sign_and_clip():
    z = torch.zeros(1)
    # inside the clip range: L = -log σ(β (d_w - d_l))
    d_w, d_l, beta = 0.01, -0.02, 10.0
    got = step_dpo_loss(torch.tensor([d_w]), torch.tensor([d_l]), z, z, beta=beta)
    assert got.item() == pytest.approx(-math.log(1 / (1 + math.exp(-beta * (d_w - d_l)))))
    # preferring the winner lowers the loss (sign)
    better = step_dpo_loss(torch.tensor([0.05]), z, z, z, beta=beta)
    worse = step_dpo_loss(torch.tensor([-0.05]), z, z, z, beta=beta)
    assert better.item() < math.log(2) < worse.item()
    # clipped: log-ratios beyond log(1.1) / log(0.9) saturate and give no gradient
    lw = torch.tensor([0.5], requires_grad=True)
    ll = torch.tensor([-0.5], requires_grad=True)
    loss = step_dpo_loss(lw, ll, z, z, beta=500.0, clip=0.1)
    want = -math.log(1 / (1 + math.exp(-500 * (math.log(1.1) - math.log(0.9)))))
    assert loss.item() == pytest.approx(want, rel=1e-6, abs=1e-12)
    loss.sum().backward()
    assert lw.grad.item() == 0.0 and ll.grad.item() == 0.0


def test_step_dpo_loss_gradient_inside_range():
    lw = torch.tensor([0.01], requires_grad=True)
    z = torch.zeros(1)
    loss = step_dpo_loss(lw, z, z, z, beta=500.0)
    loss.backward()
    # d/dx -log σ(βx) = -β σ(-βx)
    assert lw.grad.item() == pytest.approx(-500 * (1 / (1 + math.exp(500 * 0.01))))


def test_ddim_mean_and_x0(sd_sched):
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    a = sd_sched.alphas_cumprod.double()
    t, tp = 501, 451
    x0 = (x - math.sqrt(1 - a[t]) * eps) / math.sqrt(a[t])
    assert torch.allclose(ddim.predict_x0(sd_sched, x, eps, t), x0.float(), atol=1e-5)
    std = ddim.ddim_step_std(sd_sched, t, 20)
    mu = math.sqrt(a[tp]) * x0 + math.sqrt(1 - a[tp] - std**2) * eps
    assert torch.allclose(ddim.ddim_step_mean(sd_sched, x, eps, t, 20, std), mu.float(), atol=1e-5)
