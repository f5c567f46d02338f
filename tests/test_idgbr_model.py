"""IDGBR model core: the spec's "must hold" properties on tiny models that run in seconds on a CPU."""
import json

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel

from core.checkpoint import (
    ModelCard,
    ModelError,
    Normalization,
    load_card,
    load_into,
    save_model,
)
from core.progress import Cancelled, Progress
from core.refinement.embedding import LabelEmbedding, embedding_loss, random_class_maps
from core.refinement.model import (
    ENCODER_PARTS,
    TASK,
    GuidanceModule,
    architecture_for,
    build_model,
    cfg_combine,
    cubic_timesteps,
    feature_channels,
    noise_scheduler,
    refine,
    repa_loss,
    training_loss,
    unet_encoder_features,
)

K = 4
SIZE = 16  # pixels; the tiny VAE halves it: 8x8 latents


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_architecture(repa_dim=None):
    """The small preset shrunk: same topology (12 skips + mid), 8/16 channels, a 2x VAE."""
    arch = architecture_for("small", K, repa_dim=repa_dim)
    arch["unet"].update(block_out_channels=[8, 8, 16, 16], cross_attention_dim=8, attention_head_dim=2,
                        norm_num_groups=4, sample_size=SIZE // 2)
    arch["vae"].update(down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                       block_out_channels=[8, 8], norm_num_groups=4, sample_size=SIZE)
    arch.update(guidance_head_dim=4, repa_hidden=16)
    return arch


def make_model(seed=0, repa_dim=None):
    torch.manual_seed(seed)
    return build_model(tiny_architecture(repa_dim))


def make_batch(n=2, seed=0, size=SIZE):
    """Image in [-1, 1], labels, coarse labels."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    return image, torch.randint(0, K, (n, size, size), generator=g), torch.randint(0, K, (n, size, size), generator=g)


def perturb_guidance(model, seed=1):
    """Non-zero guidance (as after training), so that conditional and plain outputs differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.guidance.levels:
            for layer in (module.fuse, module.to_out):
                layer.weight.copy_(0.2 * torch.randn(layer.weight.shape, generator=g))


def latents(n=2, latent_size=SIZE // 2):
    """Random c_I, c_r and z_t."""
    g = torch.Generator().manual_seed(5)
    return [torch.randn(n, 4, latent_size, latent_size, generator=g) for _ in range(3)]


def conditions_and_latent(model, n=2, latent_size=SIZE // 2):
    c_image, c_coarse, z = latents(n, latent_size)
    return model.condition_features(c_image, c_coarse), z


def test_cubic_timesteps_favour_high_noise():
    t = cubic_timesteps(200_000, torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and t.min() >= 0 and t.max() <= 999
    assert 0.76 <= (t > 500).float().mean().item() <= 0.82


def test_schedule_is_sd_scaled_linear_epsilon():
    s = noise_scheduler()
    assert s.config.num_train_timesteps == 1000 and s.config.prediction_type == "epsilon"
    torch.testing.assert_close(s.betas, torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2)


def test_label_embedding_round_trip_after_brief_training():
    torch.manual_seed(0)
    embedding = LabelEmbedding(6)
    table = embedding.table.weight.detach().clone()
    optimizer = torch.optim.Adam(embedding.parameters(), lr=0.02)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        loss = embedding_loss(embedding, random_class_maps(8, 8, 6, g), generator=g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    labels = random_class_maps(4, 16, 6, g)
    with torch.no_grad():
        encoded = embedding.encode(labels)
        decoded = embedding.decode(encoded).argmax(dim=1)
    assert encoded.shape == (4, 3, 16, 16) and encoded.abs().max() <= 1
    assert (decoded == labels).float().mean().item() == 1.0
    assert not torch.equal(table, embedding.table.weight)  # the table is trained too


def test_siamese_encoder_is_frozen_and_gives_the_residual_shapes():
    model = make_model()
    conditions, z = conditions_and_latent(model)
    hidden = model.text_states(2)
    features, _ = unet_encoder_features(model.unet, z, 10, hidden)
    assert len(conditions.image) == len(conditions.coarse) == 13
    assert [f.shape for f in conditions.image] == [f.shape for f in features]
    assert [f.shape[1] for f in features] == feature_channels(model.architecture["unet"])
    model.unet(z, 10, hidden, down_block_additional_residuals=conditions.image[:-1],
               mid_block_additional_residual=conditions.image[-1])  # diffusers accepts them as residuals

    assert not any(p.requires_grad for p in model.siamese.parameters())
    assert not {id(p) for p in model.siamese.parameters()} & {id(p) for p in model.diffusion_parameters()}
    before = {k: v.clone() for k, v in model.siamese.state_dict().items()}
    assert torch.equal(before["conv_in.weight"], model.unet.conv_in.weight)  # a copy of the denoiser's encoder
    model.train()
    assert not model.siamese.training
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    training_loss(model, noise_scheduler(), *make_batch(), torch.Generator().manual_seed(0))["loss"].backward()
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in model.siamese.state_dict().items())
    assert not torch.equal(before["conv_in.weight"], model.unet.conv_in.weight)
    assert {k.split(".")[0] for k in before} == set(ENCODER_PARTS) - {"time_proj"}  # no up blocks copied


def test_an_unfrozen_siamese_copy_learns_with_the_denoiser():
    """The small preset's copy holds random weights: a trainer may unfreeze it (train_siamese), and then the
    conditions' features move with training while inference still computes them once per chain."""
    model = make_model()
    perturb_guidance(model)   # as after training: the residuals depend on the conditions
    model.siamese.requires_grad_(True)
    assert {id(p) for p in model.siamese.parameters()} <= {id(p) for p in model.diffusion_parameters()}
    conditions, _ = conditions_and_latent(model)
    before = [f.detach().clone() for f in conditions.coarse]
    model.train()
    optimizer = torch.optim.SGD(model.diffusion_parameters(), lr=1e-1)
    training_loss(model, noise_scheduler(), *make_batch(), torch.Generator().manual_seed(0), drop_prob=0.0)[
        "loss"].backward()
    assert model.siamese.conv_in.weight.grad.abs().sum() > 0
    optimizer.step()
    after, _ = conditions_and_latent(model)
    assert max((a - b).abs().max().item() for a, b in zip(after.coarse, before)) > 1e-4


def test_guidance_is_zero_at_init_so_the_denoiser_is_the_plain_unet():
    model = make_model().eval()
    conditions, z = conditions_and_latent(model)
    t = torch.tensor([50, 900])
    features, _ = unet_encoder_features(model.unet, z, t, model.text_states(2))
    assert all(torch.count_nonzero(r) == 0 for r in model.guidance(features, conditions))
    with torch.no_grad():
        torch.testing.assert_close(model.predict(z, t, conditions), model.unet(z, t, model.text_states(2)).sample)


@pytest.mark.parametrize("latent_size", [8, 6])  # 6 is no multiple of 2^3: exercises diffusers' upsample_size path
def test_split_forward_adds_residuals_where_diffusers_does(latent_size):
    model = make_model().eval()
    perturb_guidance(model)
    conditions, z = conditions_and_latent(model, latent_size=latent_size)
    hidden, t = model.text_states(2), torch.tensor([3, 700])
    with torch.no_grad():
        features, _ = unet_encoder_features(model.unet, z, t, hidden)
        residuals = model.guidance(features, conditions)
        assert all(r.abs().sum() > 0 for r in residuals)
        reference = model.unet(z, t, hidden, down_block_additional_residuals=residuals[:-1],
                               mid_block_additional_residual=residuals[-1]).sample
        torch.testing.assert_close(model.predict(z, t, conditions), reference)


def test_condition_dropout_gives_dropped_rows_the_unconditional_branch():
    model = make_model().eval()
    perturb_guidance(model)
    conditions, z = conditions_and_latent(model, n=3)
    t = torch.tensor([10, 400, 990])
    with torch.no_grad():
        plain = model.unet(z, t, model.text_states(3)).sample
        full = model.predict(z, t, conditions)
        mixed = model.predict(z, t, conditions, keep=torch.tensor([True, False, True]))
        none = model.predict(z, t, conditions, keep=torch.zeros(3, dtype=torch.bool))
    assert not torch.allclose(full, plain, atol=1e-4)
    torch.testing.assert_close(mixed[1], plain[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mixed[[0, 2]], full[[0, 2]], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(none, plain, rtol=1e-4, atol=1e-5)

    model.train()
    training_loss(model, noise_scheduler(), *make_batch(), drop_prob=1.0)["loss"].backward()
    assert all(p.grad is None for p in model.guidance.parameters())  # p = 1: every row unconditional


def attention_grads(module):
    return {name: getattr(module, name).weight.grad for name in ("to_q", "to_k", "to_v", "to_out")}


def test_guidance_module_attention_learns_where_all_zero_init_cannot():
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(2, 8, 4, 4, generator=g) for _ in range(3)]
    target = torch.randn(2, 8, 4, 4, generator=g)

    def two_steps(module):
        """Output-projection gradient of the first step, attention gradients after one SGD step."""
        optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
        F.mse_loss(module(*inputs), target).backward()
        first = attention_grads(module)["to_out"].clone()
        optimizer.step()
        optimizer.zero_grad()
        F.mse_loss(module(*inputs), target).backward()
        return first, attention_grads(module)

    torch.manual_seed(0)
    ours = GuidanceModule(8, head_dim=4)
    assert torch.count_nonzero(ours(*inputs)) == 0
    first, second = two_steps(ours)
    assert first.abs().sum() > 0  # the output projection learns at once
    assert all(grad.abs().sum() > 0 for grad in second.values())

    official = GuidanceModule(8, head_dim=4)  # [code]: every parameter zeroed
    with torch.no_grad():
        for p in official.parameters():
            p.zero_()
    first, second = two_steps(official)
    assert first.abs().sum() == 0 and all(grad.abs().sum() == 0 for grad in second.values())


def test_attention_path_of_every_level_gets_gradient_after_one_step():
    model = make_model().train()
    optimizer = torch.optim.AdamW(model.diffusion_parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    batch = make_batch(size=2 * SIZE)  # >= 2x2 tokens at the deepest level: one key token would fix the softmax
    training_loss(model, noise_scheduler(), *batch, g, drop_prob=0.0)["loss"].backward()
    assert all(m.to_out.weight.grad.abs().sum() > 0 and m.fuse.weight.grad.abs().sum() > 0
               for m in model.guidance.levels)
    optimizer.step()
    optimizer.zero_grad()
    training_loss(model, noise_scheduler(), *batch, g, drop_prob=0.0)["loss"].backward()
    for level, module in enumerate(model.guidance.levels):
        for name, grad in attention_grads(module).items():
            assert grad is not None and grad.abs().sum() > 0, f"level {level}: {name} got no gradient"


def test_cfg_runs_both_branches_in_one_batched_forward():
    torch.testing.assert_close(cfg_combine(torch.tensor(1.0), torch.tensor(3.0), 3.0), torch.tensor(7.0))
    model = make_model().eval()
    perturb_guidance(model)
    image, _, coarse = make_batch()
    encoder_rows, decoder_rows, whole_unet_calls = [], [], []
    hooks = [model.unet.conv_in.register_forward_hook(lambda m, i, o: encoder_rows.append(o.shape[0])),
             model.unet.conv_out.register_forward_hook(lambda m, i, o: decoder_rows.append(o.shape[0])),
             model.unet.register_forward_pre_hook(lambda m, i: whole_unet_calls.append(1))]
    refine(model, image, coarse, steps=2, guidance_scale=1.0)
    assert decoder_rows == [2, 2]  # w = 1 is the conditional model alone: no unconditional rows
    encoder_rows.clear()
    decoder_rows.clear()
    probabilities = refine(model, image, coarse, steps=3, guidance_scale=3.0, seed=1)
    for hook in hooks:
        hook.remove()
    # one forward per step: the encoder once over B rows (shared by both branches), the decoder over 2B rows
    assert encoder_rows == [2, 2, 2] and decoder_rows == [4, 4, 4] and not whole_unet_calls

    scheduler = noise_scheduler()
    scheduler.set_timesteps(3)
    with torch.no_grad():  # reference: separate passes, eps = eps_u + w (eps_c - eps_u)
        c_image = model.encode_image(image)
        conditions = model.condition_features(c_image, model.encode_labels(coarse))
        z = torch.randn(c_image.shape, generator=torch.Generator().manual_seed(1))
        for t in scheduler.timesteps:
            eps_c, eps_u = model.predict(z, t, conditions), model.unet(z, t, model.text_states(2)).sample
            assert not torch.allclose(eps_c, eps_u, atol=1e-4)
            z = scheduler.step(eps_u + 3.0 * (eps_c - eps_u), t, z).prev_sample
        reference = model.decode_logits(z).softmax(dim=1)
    torch.testing.assert_close(probabilities, reference, rtol=1e-4, atol=1e-5)


def test_refine_returns_probabilities_reports_progress_and_cancels():
    model = make_model().train()
    image, _, coarse = make_batch()

    class Recorder(Progress):
        def __init__(self, cancel_at=None):
            self.fractions, self.cancel_at = [], cancel_at

        def set_fraction(self, fraction):
            self.fractions.append(fraction)

        def is_canceled(self):
            return self.cancel_at is not None and len(self.fractions) >= self.cancel_at

    progress = Recorder()
    probabilities = refine(model, image, coarse, progress=progress)
    assert probabilities.shape == (2, K, SIZE, SIZE)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(2, SIZE, SIZE))
    assert len(progress.fractions) == 25 and progress.fractions[-1] == 1.0 and model.training
    with pytest.raises(Cancelled):
        refine(model, image, coarse, progress=Recorder(cancel_at=2))
    assert model.training
    with pytest.raises(ValueError, match="multiple"):
        refine(model, image[..., :15], coarse[..., :15])


def test_strength_runs_the_last_share_of_the_chain_from_the_noised_coarse_map():
    """SDEdit start: strength s runs round(s * steps) DDIM steps from the coarse map's latent noised to that level,
    so a short chain ends near the coarse map's own decoding, a full one (the paper's) does not."""
    model = make_model().eval()
    image, _, coarse = make_batch()

    class Counter(Progress):
        def __init__(self):
            self.calls = 0

        def set_fraction(self, fraction):
            self.calls += 1

    counter = Counter()
    refine(model, image, coarse, steps=20, strength=0.3, progress=counter)
    assert counter.calls == 6
    with torch.no_grad():
        own = model.decode_logits(model.encode_labels(coarse)).argmax(1)
    near = refine(model, image, coarse, steps=20, strength=0.05).argmax(1)
    far = refine(model, image, coarse, steps=20, strength=1.0).argmax(1)
    assert (near == own).float().mean() > 0.85   # an untrained tiny decoder: its logits are close to each other
    assert (far == own).float().mean() < (near == own).float().mean() - 0.2
    with pytest.raises(ValueError, match="Strength"):
        refine(model, image, coarse, strength=0.0)


def test_training_at_a_strength_draws_only_the_time_steps_that_sampling_runs(monkeypatch):
    """A refiner sampled at strength s only ever denoises t < s T: training there (cubic within it) spends every
    step on the part of the chain it is used for; strength 1 keeps the paper's cubic over the whole chain."""
    model = make_model()
    seen = []
    predict = model.predict

    def recording(z_t, t, *args, **kwargs):
        seen.append(t.clone())
        return predict(z_t, t, *args, **kwargs)

    monkeypatch.setattr(model, "predict", recording)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        training_loss(model, noise_scheduler(), *make_batch(n=8), g, strength=0.3)
    short = torch.cat(seen)
    assert short.max() < 300 and short.max() >= 250 and (short > 150).float().mean() > 0.7
    seen.clear()
    for _ in range(40):
        training_loss(model, noise_scheduler(), *make_batch(n=8), g)
    assert torch.cat(seen).max() >= 900


def test_repa_projector_and_loss():
    model = make_model(repa_dim=12)
    hidden = torch.randn(2, 16, 2, 2)
    with torch.no_grad():
        projected = model.projector(hidden.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(2, 12, 2, 2)
        aligned = F.interpolate(projected, size=(4, 4), mode="bilinear", align_corners=False)
    tokens = 3 * aligned.flatten(2).transpose(1, 2)
    torch.testing.assert_close(repa_loss(model.projector, hidden, tokens), torch.tensor(-1.0))
    with pytest.raises(ValueError, match="square"):
        repa_loss(model.projector, hidden, tokens[:, :3])

    g = torch.Generator().manual_seed(0)
    dinov2 = torch.randn(2, 16, 12, generator=g)
    losses = training_loss(model, noise_scheduler(), *make_batch(), generator=g, dinov2_tokens=dinov2)
    torch.testing.assert_close(losses["loss"], losses["mse"] + 0.5 * losses["repa"])
    losses["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projector.parameters())
    assert set(training_loss(model, noise_scheduler(), *make_batch())) == {"loss", "mse"}  # no DINOv2: off
    with pytest.raises(ValueError, match="projector"):
        training_loss(make_model(), noise_scheduler(), *make_batch(), dinov2_tokens=dinov2)


def test_model_directory_round_trip(tmp_path):
    model = make_model(repa_dim=12)
    perturb_guidance(model)
    card = ModelCard(task=TASK, name="tiny", architecture=model.architecture, bands=["r", "g", "b"],
                     normalization=Normalization(offset=[0.0] * 3, scale=[1.0] * 3))
    save_model(tmp_path / "m", card, model.state_dict())
    loaded = load_into(build_model(load_card(tmp_path / "m", task=TASK).architecture), tmp_path / "m")
    c_image, c_coarse, z = latents()
    with torch.no_grad():
        torch.testing.assert_close(loaded(z, 20, c_image, c_coarse), model(z, 20, c_image, c_coarse))


def test_sd15_preset_loads_a_local_diffusers_folder(tmp_path):
    tiny = tiny_architecture()
    torch.manual_seed(3)
    unet = UNet2DConditionModel.from_config(tiny["unet"])
    vae = AutoencoderKL.from_config(tiny["vae"])
    unet.save_pretrained(tmp_path / "unet")
    vae.save_pretrained(tmp_path / "vae")

    arch = architecture_for("sd15", K, sd_path=tmp_path)
    assert arch["unet"]["block_out_channels"] == [8, 8, 16, 16] and arch["vae"]["block_out_channels"] == [8, 8]
    assert arch["text_tokens"] == 77
    json.dumps(arch)  # goes into the model card

    warnings = []

    class Recorder(Progress):
        def warning(self, message):
            warnings.append(message)

    model = build_model(arch, sd_path=str(tmp_path), progress=Recorder())
    pretrained = unet.state_dict()
    assert all(torch.equal(v, pretrained[k]) for k, v in model.unet.state_dict().items())
    assert all(torch.equal(v, pretrained[k]) for k, v in model.siamese.state_dict().items())
    assert all(torch.equal(v, vae.state_dict()[k]) for k, v in model.vae.state_dict().items())
    assert model.empty_text.shape == (1, 77, 8) and not model.empty_text.any()
    assert len(warnings) == 1 and "zeros" in warnings[0]
    conditions, z = conditions_and_latent(model)
    assert model.predict(z, 5, conditions).shape == z.shape

    with pytest.raises(ModelError, match="never downloaded"):
        architecture_for("sd15", K, sd_path="runwayml/stable-diffusion-v1-5")
    with pytest.raises(ModelError, match="never downloaded"):
        build_model(arch, sd_path=tmp_path / "missing")
    with pytest.raises(ValueError, match="sd15"):
        build_model(tiny, sd_path=tmp_path)
