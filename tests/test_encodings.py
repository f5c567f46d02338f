import pytest
import torch

from core.encodings import bit_class_probabilities, codewords, decode_bits, encode_bits, n_bits


@pytest.mark.parametrize("k", [2, 3, 5, 8, 16])
def test_bits_round_trip_every_class(k):
    labels = torch.arange(k).repeat(3, 1)[None].expand(2, 3, k)           # (B, H, W)
    bits = encode_bits(labels, k)
    assert bits.shape == (2, n_bits(k), 3, k) and set(bits.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(decode_bits(bits, k), labels)


@pytest.mark.parametrize("k", [2, 3, 5, 8, 16])
def test_noisy_bits_never_decode_to_an_invalid_class(k):
    generator = torch.Generator().manual_seed(k)
    noisy = torch.randn(4, n_bits(k), 32, 32, generator=generator) * 3
    decoded = decode_bits(noisy, k)
    assert decoded.min() >= 0 and decoded.max() < k
    assert len(decoded.unique()) == k     # every valid class is still reachable


def test_msb_first_and_nearest_valid_code():
    assert codewords(5).tolist()[3] == [-1, 1, 1]        # 3 = 011
    bits = torch.tensor([1.0, 1.0, 1.0])[:, None, None]   # 111 is not a class when K = 5
    assert decode_bits(bits, 5).item() == 3               # nearest valid code: 011


def test_soft_probabilities_agree_with_the_decision():
    bits = torch.randn(2, 3, 8, 8)
    probs = bit_class_probabilities(bits, 6)
    assert probs.shape == (2, 6, 8, 8)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 8, 8))
    assert torch.equal(probs.argmax(1), decode_bits(bits, 6))


def test_bad_inputs_are_explained():
    with pytest.raises(ValueError, match="at least 2 classes"):
        n_bits(1)
    with pytest.raises(ValueError, match=r"0\.\.4"):
        encode_bits(torch.tensor([[5]]), 5)
