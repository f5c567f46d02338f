"""DDFM's EM step, Dig2DIG's weights and schedule, and the fusion sampler (core.fusion.em / sampler)."""
from __future__ import annotations

import math

import pytest
import torch

from core.fusion import sampler as sampler_module
from core.fusion.em import EmState, em_step
from core.catalog import starter_model_dir
from core.data.images import list_fusion_pairs
from core.fusion.prior import TASK, load_prior
from core.fusion.sampler import (FusionSettings, ddfm_timesteps, dig_timesteps, dig_trajectory, dig_weights, fuse,
                                 luma, rgb_to_ycbcr, with_luma, ycbcr_to_rgb)
from core.metrics.fusion import to_gray
from core.raster import read_array
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
    # levels t0, t4, t8, each estimated once and shared by consecutive recomputations; the last recomputation's
    # later level (step 12) is past the end of the chain, where the sample is clean and needs no evaluation
    assert trace.prior_calls == 11 + 3 and trace.forward_batches == [2, 2] + [1] * 4 + [2] + [1] * 7


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
    monkeypatch.setattr(sampler_module, "dig_weights", lambda now, later, temperature: torch.full_like(now, 0.5))
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


def test_dig_trajectory_is_what_the_sampler_uses(prior):
    infrared, visible = _sources(3)
    settings = FusionSettings(steps=9, dig_interval=3)
    _, sampled = fuse(prior, infrared, visible, settings)
    alone = dig_trajectory(prior, infrared, visible, settings)
    assert alone.dig_steps == sampled.dig_steps == [0, 3, 6] and alone.prior_calls == 3
    for i, (gains, weights) in enumerate(zip(alone.gains, alone.weights)):
        assert torch.equal(gains, sampled.gains[i]) and torch.equal(weights, sampled.weights[3 * i])


def test_distances_are_l2_norms_over_the_tile_or_patch(prior):
    """l of Eq. 8: the Euclidean norm of the difference (channel mean of the squared error, summed over pixels);
    `squared_l2` its square, `mse` the per-pixel mean."""
    infrared, visible = _sources(4)
    base = dict(steps=5, dig_interval=5)
    gains = {d: dig_trajectory(prior, infrared, visible, FusionSettings(dig_distance=d, **base)).gains[0]
             for d in ("l2", "squared_l2", "mse")}
    # with the clean end of the chain as the later level, the one gain is the distance at t = 999 itself
    assert torch.allclose(gains["l2"] ** 2, gains["squared_l2"], rtol=1e-5)
    assert torch.allclose(gains["mse"] * 16 * 16, gains["squared_l2"], rtol=1e-5)
    spatial = dig_trajectory(prior, infrared, visible, FusionSettings(dig_kind="spatial", dig_patch=4, **base))
    assert spatial.gains[0].shape == (1, 2, 16, 16)
    assert (spatial.gains[0] < gains["l2"]).all()          # a 4 x 4 patch holds less of the error than the tile


# --- the mechanism on a real pair, with the shipped starter prior (256 px: the pipeline's tile) -------------

@pytest.fixture(scope="module")
def starter():
    return load_prior(starter_model_dir(TASK)).eval()


@pytest.fixture(scope="module")
def roadscene():
    """The central 256 x 256 of RoadScene pair FLIR_00211 as [-1, 1] luma tensors (infrared, visible)."""
    from tests.conftest import shared_data
    infrared, visible = list_fusion_pairs(shared_data("irvis_roadscene"))[0]
    crops = []
    for path in (infrared, visible):
        gray = to_gray(read_array(path)[0])
        top, left = (gray.shape[0] - 256) // 2, (gray.shape[1] - 256) // 2
        crops.append(torch.from_numpy(gray[top:top + 256, left:left + 256] / 127.5 - 1).float()[None, None])
    return crops


def _infrared_weights(trace):
    return [float(w[0, 0].mean()) for w in trace.weights]


def test_on_a_real_pair_the_weights_move_and_stay_away_from_one_half(starter, roadscene):
    weights = _infrared_weights(dig_trajectory(starter, *roadscene, FusionSettings()))
    # measured: 0.000, 0.899, 0.781 (gains IR 235.0 / 28.3 / 11.2 vs visible 245.9 / 26.1 / 9.9)
    assert len(weights) == 3
    assert all(abs(a - b) > 0.05 for a, b in zip(weights, weights[1:])), weights
    assert all(abs(w - 0.5) > 0.2 for w in weights), weights
    # the ablation with a per-pixel mean (this project's first version) sits at DDFM's 0.5: 0.483, 0.501, 0.500
    ablation = _infrared_weights(dig_trajectory(starter, *roadscene, FusionSettings(dig_distance="mse")))
    assert all(abs(w - 0.5) < 0.05 for w in ablation), ablation


def test_swapping_the_sources_swaps_the_weights(starter, roadscene):
    infrared, visible = roadscene
    for kind in ("scalar", "spatial"):
        forward = dig_trajectory(starter, infrared, visible, FusionSettings(dig_kind=kind))
        swapped = dig_trajectory(starter, visible, infrared, FusionSettings(dig_kind=kind))
        for a, b in zip(forward.weights, swapped.weights):
            assert torch.allclose(a, b.flip(1), atol=1e-6)
        assert not torch.allclose(forward.weights[1], swapped.weights[1], atol=1e-2)


@pytest.mark.parametrize("flat", [0, 1], ids=["flat infrared", "flat visible"])
def test_a_flat_source_gains_less_than_a_textured_one(starter, roadscene, flat):
    """The paper's reasoning (Fig. 5b): a region without structure in one modality gains little there. Measured
    on this pair with the flattened source's weight after the first interval: <= 0.048 (IR flat), <= 0.008
    (visible flat). At t = 999 the estimates are mostly noise and the order varies (paper, Sec. 4.4), so the
    first recomputation is not asserted."""
    sources = [s.clone() for s in roadscene]
    sources[flat] = torch.full_like(sources[flat], float(sources[flat].mean()))
    trace = dig_trajectory(starter, *sources, FusionSettings())
    for gains, weights in list(zip(trace.gains, trace.weights))[1:]:
        assert float(gains[0, flat]) < float(gains[0, 1 - flat])
        assert float(weights[0, flat]) < 0.15
