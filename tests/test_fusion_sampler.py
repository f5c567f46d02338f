"""DDFM's EM step, Dig2DIG's weights and schedule, and the fusion sampler (core.fusion.em / sampler)."""
from __future__ import annotations

import math

import pytest
import torch

from core.fusion import sampler as sampler_module
from core.fusion.em import EmState, em_step
from core.fusion.prior import load_prior
from core.fusion.sampler import (FusionSettings, ddfm_timesteps, dig_timesteps, dig_weights, fuse, luma,
                                 rgb_to_ycbcr, with_luma, ycbcr_to_rgb)
from tests.fusion_fixtures import tiny_prior  # noqa: F401


def _closed_form(f, i, v, mode, wi=1.0, wv=1.0):
    """One EM step on constant images from a fresh state (tau = 1, F1 = F2 = 0): then H = Y - X exactly
    (the difference kernels vanish at frequency 0), and X' = (2 wi C Y + rho X) / (2 wi C + 2 wv D + rho)."""
    rho = 0.001
    source_i, source_v = (i, v) if mode == "paper" else (v, i)
    x, y = f - source_v, source_i - source_v
    d = math.sqrt(2 / (x ** 2 + 1e-6))
    c = math.sqrt(2 / ((y - x) ** 2 + 1e-6))
    d = min(d, 2 * c)
    x_new = (2 * wi * c * y + rho * x) / (2 * wi * c + 2 * wv * d + rho)
    return x_new + source_v if mode == "paper" else source_i - x_new


@pytest.mark.parametrize("mode", ["paper", "code"])
@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.6, 0.4)])
def test_em_step_on_constant_inputs_is_the_closed_form_blend(mode, weights):
    f, i, v = 0.1, 0.6, -0.3
    shape = (1, 1, 8, 8)
    f_, i_, v_ = (torch.full(shape, value, dtype=torch.float64) for value in (f, i, v))
    fused, state = em_step(f_, i_, v_, EmState.initial(f_), *weights, mode=mode)
    assert torch.allclose(fused, torch.full(shape, _closed_form(f, i, v, mode, *weights), dtype=torch.float64),
                          atol=1e-9)
    h = (i - v) - (f - v) if mode == "paper" else (v - i) - (f - i)
    assert state.f1[..., :-1].abs().max() < 1e-9     # H = Y - X is constant: no difference inside ...
    assert torch.allclose(state.f1[..., -1], torch.tensor(0.001 / (1 + 0.001) * h, dtype=torch.float64))  # ... the
    # last column keeps H itself (the official boundary), scaled by rho / (2 lambda + rho)
    assert state.tau_a.shape == (1, 1, 1, 1)


def test_em_step_blends_between_the_sources_and_weights_move_it():
    torch.manual_seed(0)
    i, v = torch.rand(1, 1, 16, 16) * 2 - 1, torch.rand(1, 1, 16, 16) * 2 - 1
    f = (i + v) / 2
    state = EmState.initial(f)
    fused, _ = em_step(f, i, v, state)
    to_ir, _ = em_step(f, i, v, state, 1.9, 0.1)
    to_vis, _ = em_step(f, i, v, state, 0.1, 1.9)
    assert (to_ir - i).abs().mean() < (fused - i).abs().mean() < (to_vis - i).abs().mean()


def test_schedules():
    for steps in (2, 25, 50, 100, 400, 1000):
        times = dig_timesteps(steps)
        assert len(times) == steps and times[0] == 999 and times[-1] == 0
        assert all(a > b for a, b in zip(times, times[1:]))
    times = dig_timesteps(25)
    gaps = [a - b for a, b in zip(times, times[1:])]
    assert gaps[0] > 5 * gaps[-1]                        # big steps at high noise, small near the end
    assert ddfm_timesteps(100)[:3] == [999, 989, 979] and ddfm_timesteps(100)[-1] == 0
    with pytest.raises(ValueError):
        FusionSettings(mode="fancy").validate()


def test_colour_transform_round_trips_and_keeps_chroma():
    rgb = torch.rand(2, 3, 5, 5) * 2 - 1
    assert torch.allclose(ycbcr_to_rgb(rgb_to_ycbcr(rgb)), rgb, atol=1e-6)
    y = torch.rand(2, 1, 5, 5) * 2 - 1
    replaced = with_luma(rgb, y)
    assert torch.allclose(luma(replaced), y, atol=1e-6)
    assert torch.allclose(rgb_to_ycbcr(replaced)[:, 1:], rgb_to_ycbcr(rgb)[:, 1:], atol=1e-6)


def test_dig_weights_are_a_softmax_over_modalities():
    now, later = torch.rand(3, 2, 7, 9), torch.rand(3, 2, 7, 9)
    w = dig_weights(now, later)
    assert torch.allclose(w.sum(dim=1), torch.ones(3, 7, 9))
    gains = now - later
    assert torch.equal(w[:, 0] > 0.5, gains[:, 0] > gains[:, 1])          # the larger gain gets the larger weight
    same = dig_weights(now[:, :1].expand(-1, 2, -1, -1), later[:, :1].expand(-1, 2, -1, -1))
    assert torch.equal(same, torch.full_like(same, 0.5))


@pytest.fixture(scope="module")
def prior(tiny_prior):  # noqa: F811
    return load_prior(tiny_prior).eval()


def _sources(seed=0, size=16):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 1, size, size, generator=g) * 2 - 1, torch.rand(1, 1, size, size, generator=g) * 2 - 1


@pytest.mark.parametrize("kind", ["scalar", "spatial"])
def test_dig_is_recomputed_every_s_steps_and_held_in_between(prior, kind):
    infrared, visible = _sources()
    settings = FusionSettings(mode="dig", steps=11, dig_interval=4, dig_kind=kind, dig_patch=4)
    fused, trace = fuse(prior, infrared, visible, settings)
    assert fused.shape == (1, 1, 16, 16) and fused.abs().max() <= 1
    assert trace.dig_steps == [0, 4, 8]
    for step, weights in enumerate(trace.weights):
        assert torch.allclose(weights.sum(dim=1), torch.ones(1)), "weights sum to one at every pixel and step"
        assert torch.equal(weights, trace.weights[step - step % 4])     # held between recomputations
    assert not torch.equal(trace.weights[0], trace.weights[4])
    spatial_shape = (1, 2, 16, 16) if kind == "spatial" else (1, 2, 1, 1)
    assert trace.weights[0].shape == spatial_shape
    # levels t0, t4, t8 and the last (t10): each estimated once, shared by consecutive recomputations
    assert trace.prior_calls == 11 + 4


def test_equal_sources_get_equal_weights_and_reproduce_ddfm_exactly(prior):
    infrared, _ = _sources()
    dig, trace = fuse(prior, infrared, infrared.clone(), FusionSettings(mode="dig", steps=8, dig_interval=3,
                                                                       schedule="uniform"))
    assert all(torch.equal(w, torch.full_like(w, 0.5)) for w in trace.weights)
    ddfm, ddfm_trace = fuse(prior, infrared, infrared.clone(), FusionSettings(mode="ddfm", steps=8))
    assert ddfm_trace.timesteps == trace.timesteps and ddfm_trace.dig_steps == []
    assert torch.equal(dig, ddfm)


def test_with_weights_fixed_the_dig_sampler_is_ddfm(prior, monkeypatch):
    infrared, visible = _sources(1)
    ddfm, _ = fuse(prior, infrared, visible, FusionSettings(mode="ddfm", steps=6))
    monkeypatch.setattr(sampler_module, "dig_weights", lambda now, later: torch.full_like(now, 0.5))
    fixed, _ = fuse(prior, infrared, visible, FusionSettings(mode="dig", steps=6, dig_interval=2, schedule="uniform"))
    assert torch.equal(fixed, ddfm)
    dig, _ = fuse(prior, infrared, visible, FusionSettings(mode="dig", steps=6, dig_interval=2, schedule="uniform",
                                                           em_mode="code"))
    assert not torch.equal(dig, ddfm)          # the other EM wiring really is another result


def test_fused_luma_lies_between_the_sources(prior):
    """Where the sources agree the result follows them; the result is no worse a compromise than either source."""
    infrared, visible = _sources(2)
    fused, _ = fuse(prior, infrared, visible, FusionSettings(steps=10))
    middle = (infrared + visible) / 2
    assert (fused - middle).abs().mean() < (infrared - visible).abs().mean() / 2 + 0.1
    agree, _ = fuse(prior, visible, visible, FusionSettings(steps=10))
    assert (agree - visible).abs().mean() < 0.1
