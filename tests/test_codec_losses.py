"""Codec training losses and the multi-scale STFT discriminator: zero on identical inputs, ordered by
error size, hand-computed hinge values, relative feature matching, discriminator shapes at every
scale, switchable adversarial terms, and float32 results under bf16 autocast."""

from __future__ import annotations

import math

import pytest
import torch

from speechkit.models.codec.discriminator import MultiScaleSTFTDiscriminator
from speechkit.models.codec.losses import (
    CodecLossWeights,
    MelL1Loss,
    MultiResolutionSTFTLoss,
    feature_matching_loss,
    generator_loss,
    hinge_d_loss,
    hinge_g_loss,
    waveform_l1,
)

SAMPLE_RATE = 16000
N_FFTS = (2048, 1024, 512, 256, 128)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tensors are tiny: intra-op threads cost more in sync than they save (10x and more on a busy host)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def stft_loss() -> MultiResolutionSTFTLoss:
    return MultiResolutionSTFTLoss()


@pytest.fixture(scope="module")
def mel_loss() -> MelL1Loss:
    return MelL1Loss()


def _speechlike(batch: int = 2, samples: int = SAMPLE_RATE // 4, seed: int = 0) -> torch.Tensor:
    """(batch, 1, samples) harmonic tones with a little noise: a target with structure in every band.

    A quarter second by default: long enough for the 2048-point STFTs, short enough for a fast CPU test.
    """
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / SAMPLE_RATE
    f0 = 120.0 + 60.0 * torch.rand(batch, 1, 1, generator=g)
    tones = sum(0.3 / k * torch.sin(2 * math.pi * k * f0 * t) for k in range(1, 6))
    return tones + 0.01 * torch.randn(batch, 1, len(t), generator=g)


def _noisy(y: torch.Tensor, level: float, seed: int = 1) -> torch.Tensor:
    return y + level * torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))


def _expected_logits_shape(batch: int, samples: int, n_fft: int) -> tuple[int, int, int, int]:
    """Uncentered STFT frames with hop n_fft / 4; three stride-2 convs take n_fft/2 + 1 bins to n_fft/16 + 1."""
    return batch, 1, (samples - n_fft) // (n_fft // 4) + 1, n_fft // 16 + 1


# ---- reconstruction losses -------------------------------------------------------------------

def test_reconstruction_losses_are_zero_for_identical_inputs_and_positive_otherwise(stft_loss, mel_loss):
    y = _speechlike()
    y_hat = _noisy(y, 0.05)
    for loss in (stft_loss, mel_loss, waveform_l1):
        assert loss(y, y).item() == 0.0
        assert loss(y_hat, y).item() > 0.0


def test_doubled_amplitude_gives_the_known_losses(stft_loss, mel_loss):
    # Magnitudes (and mels) all double: spectral convergence ‖2Y - Y‖ / ‖Y‖ = 1, log distance ln 2.
    y = _speechlike()
    assert stft_loss(2 * y, y).item() == pytest.approx(1 + math.log(2), rel=1e-4)
    assert mel_loss(2 * y, y).item() == pytest.approx(math.log(2), rel=1e-4)
    assert waveform_l1(2 * y, y).item() == pytest.approx(y.abs().mean().item(), rel=1e-5)


def test_stft_and_mel_losses_grow_with_the_noise_level(stft_loss, mel_loss):
    y = _speechlike()
    for loss in (stft_loss, mel_loss):
        assert loss(_noisy(y, 0.003), y) < loss(_noisy(y, 0.03), y) < loss(_noisy(y, 0.3), y)


def test_mel_loss_gradient_reaches_the_reconstruction(mel_loss):
    y = _speechlike()
    y_hat = _noisy(y, 0.05).requires_grad_()
    mel_loss(y_hat, y).backward()
    assert torch.isfinite(y_hat.grad).all()
    assert y_hat.grad.abs().sum() > 0


def test_spectral_losses_are_finite_on_silence(stft_loss, mel_loss):
    silence = torch.zeros(2, 1, SAMPLE_RATE // 4)
    for loss in (stft_loss, mel_loss):
        y_hat = _noisy(silence, 0.01).requires_grad_()
        value = loss(y_hat, silence)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(y_hat.grad).all()


# ---- adversarial losses ----------------------------------------------------------------------

def test_hinge_losses_on_hand_made_logits():
    real = [torch.tensor([2.0, 0.5]), torch.tensor([[-1.0]])]
    fake = [torch.tensor([-2.0, 0.0]), torch.tensor([[1.0]])]
    # D: scale 1 mean(0, 0.5) + mean(0, 1) = 0.75; scale 2: 2 + 2 = 4; mean 2.375.
    assert hinge_d_loss(real, fake).item() == pytest.approx(2.375)
    # G: scale 1 mean(3, 1) = 2; scale 2: relu(1 - 1) = 0; mean 1.
    assert hinge_g_loss(fake).item() == pytest.approx(1.0)
    # Confident and correct everywhere: no loss.
    assert hinge_d_loss([torch.full((3,), 1.5)], [torch.full((3,), -1.5)]).item() == 0.0
    assert hinge_g_loss([torch.full((3,), 1.5)]).item() == 0.0


def test_feature_matching_is_zero_for_identical_features_relative_and_detaches_real():
    feats = [[torch.randn(2, 4, 5, 3), torch.randn(2, 4, 5, 2)], [torch.randn(2, 4, 7, 3)]]
    assert feature_matching_loss(feats, [[f.clone() for f in maps] for maps in feats]).item() == 0.0
    # Off by half the real magnitude at any scale of the map: 0.5 for both discriminators.
    for scale in (1.0, 1000.0):
        real = [[torch.full((1, 2, 3, 3), 2.0 * scale)], [torch.full((1, 2, 3, 3), -4.0 * scale)]]
        fake = [[torch.full((1, 2, 3, 3), 3.0 * scale)], [torch.full((1, 2, 3, 3), -2.0 * scale)]]
        assert feature_matching_loss(real, fake).item() == pytest.approx(0.5)
    real_map = torch.ones(1, 2, 3, 3, requires_grad=True)
    fake_map = torch.zeros(1, 2, 3, 3, requires_grad=True)
    feature_matching_loss([[real_map]], [[fake_map]]).backward()
    assert real_map.grad is None and fake_map.grad is not None


# ---- discriminator ---------------------------------------------------------------------------

@pytest.mark.parametrize("batch, samples", [(1, SAMPLE_RATE), (2, 12345)])
def test_discriminator_shapes_at_every_scale(batch, samples):
    disc = MultiScaleSTFTDiscriminator(filters=4)
    with torch.no_grad():
        logits, feats = disc(_speechlike(batch, samples))
    assert len(logits) == len(feats) == len(N_FFTS)
    for n_fft, scale_logits, scale_feats in zip(N_FFTS, logits, feats):
        expected = _expected_logits_shape(batch, samples, n_fft)
        assert scale_logits.shape == expected
        assert len(scale_feats) == 5
        assert all(f.shape[:3] == (batch, 4, expected[2]) for f in scale_feats)
        assert scale_feats[-1].shape[3] == expected[3]  # the last map feeds the logits conv directly


def test_discriminator_gradient_reaches_every_input():
    torch.manual_seed(0)
    disc = MultiScaleSTFTDiscriminator(filters=4)
    x = _speechlike(batch=2).requires_grad_()
    logits, _ = disc(x)
    sum(z.sum() for z in logits).backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad.abs().flatten(1).sum(1) > 0).all()  # every item, not only the first


# ---- generator loss --------------------------------------------------------------------------

def test_generator_loss_has_adversarial_parts_only_with_a_discriminator(stft_loss, mel_loss):
    torch.manual_seed(0)
    weights = CodecLossWeights()
    y = _speechlike()
    y_hat = _noisy(y, 0.05).requires_grad_()

    total, parts = generator_loss(y_hat, y, None, weights, stft_loss, mel_loss)
    assert set(parts) == {"waveform_l1", "stft", "mel"}
    assert total.item() == pytest.approx(sum(getattr(weights, k) * v.item() for k, v in parts.items()), rel=1e-6)

    disc = MultiScaleSTFTDiscriminator(filters=4, n_ffts=(512, 128))
    total, parts = generator_loss(y_hat, y, disc, weights, stft_loss, mel_loss)
    assert set(parts) == {"waveform_l1", "stft", "mel", "adversarial", "feature_matching"}
    assert all(not v.requires_grad for v in parts.values())
    assert parts["adversarial"] > 0 and parts["feature_matching"] > 0
    assert total.item() == pytest.approx(sum(getattr(weights, k) * v.item() for k, v in parts.items()), rel=1e-6)
    total.backward()
    assert y_hat.grad.abs().sum() > 0

    with pytest.raises(ValueError, match="trim"):
        generator_loss(y_hat[..., :-1], y, None, weights, stft_loss, mel_loss)


# ---- mixed precision -------------------------------------------------------------------------

def test_losses_are_float32_under_bf16_autocast(stft_loss, mel_loss):
    torch.manual_seed(0)
    y = _speechlike()
    decoder = torch.nn.Conv1d(1, 1, 3, padding=1)  # stands in for a codec decoder run under autocast
    disc = MultiScaleSTFTDiscriminator(filters=4, n_ffts=(512, 128))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_hat = decoder(y)
        assert y_hat.dtype == torch.bfloat16
        stft, mel = stft_loss(y_hat, y), mel_loss(y_hat, y)
        real_logits, real_feats = disc(y)
        fake_logits, fake_feats = disc(y_hat)
        others = [waveform_l1(y_hat, y), hinge_d_loss(real_logits, fake_logits), hinge_g_loss(fake_logits),
                  feature_matching_loss(real_feats, fake_feats)]
        total, parts = generator_loss(y_hat, y, disc, CodecLossWeights(), stft_loss, mel_loss)
    for value in [stft, mel, total, *others, *parts.values()]:
        assert value.dtype == torch.float32 and torch.isfinite(value)
    # Spectra computed in float32 from the bf16 samples, not in bf16: equal to the float32 result.
    assert stft.item() == pytest.approx(stft_loss(y_hat.float(), y).item(), rel=1e-6)
    assert mel.item() == pytest.approx(mel_loss(y_hat.float(), y).item(), rel=1e-6)
    total.backward()
    assert decoder.weight.grad is not None and torch.isfinite(decoder.weight.grad).all()
