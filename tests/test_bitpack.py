"""Bit-packed kernels: exact agreement with float arithmetic on ±1 values, whatever the width."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from compactcnn.deploy.bitpack import (
    _popcount_table,
    binary_conv2d,
    binary_linear,
    binary_matmul,
    pack_signs,
    unpack_signs,
    xnor_conv2d,
)

SETTINGS = settings(max_examples=40, deadline=None)


def reals(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Small integers as float32, so that exact zeros (sign +1) are common."""
    return rng.integers(-3, 4, size=shape).astype(np.float32)


def signs(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, 1, -1).astype(np.int64)


@SETTINGS
@given(rows=st.integers(1, 4), n=st.integers(1, 200), seed=st.integers(0, 2**32 - 1))
def test_pack_round_trips_for_any_width(rows: int, n: int, seed: int) -> None:
    x = reals(np.random.default_rng(seed), rows, n)
    packed, width = pack_signs(x)
    assert width == n
    assert packed.dtype == np.uint64 and packed.shape == (rows, -(-n // 64))
    np.testing.assert_array_equal(unpack_signs(packed, n), signs(x))


def test_padding_bits_of_the_last_word_are_zero() -> None:
    packed, _ = pack_signs(np.ones(70))
    assert int(packed[1]) == 0b111111  # 6 real bits, 58 bits of padding left clear


def test_byte_table_popcount_matches_numpy() -> None:
    words = np.random.default_rng(0).integers(0, 2**64, size=(7, 5), dtype=np.uint64)
    words[0, :3] = [0, 2**64 - 1, 1]
    np.testing.assert_array_equal(_popcount_table(words), np.bitwise_count(words))


@SETTINGS
@given(m=st.integers(1, 6), k=st.integers(1, 6), n=st.integers(1, 300),
       seed=st.integers(0, 2**32 - 1))
def test_matmul_is_the_exact_sign_dot_product(m: int, k: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = reals(rng, m, n), reals(rng, k, n)
    got = binary_matmul(pack_signs(a)[0], pack_signs(b)[0], n)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, signs(a) @ signs(b).T)


def test_matmul_refuses_mismatched_widths() -> None:
    with pytest.raises(ValueError, match="widths differ"):
        binary_matmul(pack_signs(np.ones((2, 64)))[0], pack_signs(np.ones((2, 65)))[0], 64)


@SETTINGS
@given(batch=st.integers(1, 5), n=st.integers(1, 200), out=st.integers(1, 9),
       seed=st.integers(0, 2**32 - 1))
def test_linear_equals_the_float_layer(batch: int, n: int, out: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, w = reals(rng, batch, n), reals(rng, out, n)
    scale = rng.random(out).astype(np.float32)
    bias = rng.standard_normal(out).astype(np.float32)
    got = binary_linear(x, pack_signs(w)[0], n, scale, bias)
    counts = F.linear(torch.from_numpy(signs(x)).float(), torch.from_numpy(signs(w)).float())
    want = counts * torch.from_numpy(scale) + torch.from_numpy(bias)
    np.testing.assert_array_equal(got, want.numpy())


def test_linear_refuses_an_input_of_the_wrong_width() -> None:
    with pytest.raises(ValueError, match="features"):
        binary_linear(np.ones((1, 10)), pack_signs(np.ones((3, 12)))[0], 12, np.ones(3), None)


@st.composite
def conv_cases(draw: st.DrawFn) -> dict:
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    height = draw(st.integers(max(1, kernel[0] - 2 * padding[0]), 9))
    width = draw(st.integers(max(1, kernel[1] - 2 * padding[1]), 9))
    return dict(batch=draw(st.integers(1, 3)), channels=draw(st.integers(1, 9)),
                out=draw(st.integers(1, 5)), size=(height, width), kernel=kernel,
                stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))), padding=padding,
                seed=draw(st.integers(0, 2**32 - 1)))


@SETTINGS
@given(case=conv_cases())
def test_conv_integer_part_equals_zero_padded_float_conv(case: dict) -> None:
    """Channel counts up to 9 with kernels up to 4x4 give n from 1 to 144: across word edges."""
    rng = np.random.default_rng(case["seed"])
    x = reals(rng, case["batch"], case["channels"], *case["size"])
    w = reals(rng, case["out"], case["channels"], *case["kernel"])
    n = w[0].size
    got = xnor_conv2d(x, pack_signs(w.reshape(case["out"], n))[0], n, case["kernel"],
                      case["stride"], case["padding"])
    want = F.conv2d(torch.from_numpy(signs(x)), torch.from_numpy(signs(w)),
                    stride=case["stride"], padding=case["padding"])
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want.numpy())


def test_conv_scales_and_shifts_per_channel_like_torch() -> None:
    rng = np.random.default_rng(1)
    x, w = reals(rng, 2, 70, 6, 5), reals(rng, 3, 70, 3, 3)  # n = 630: ten words, last partial
    scale, bias = rng.random(3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    got = binary_conv2d(x, pack_signs(w.reshape(3, -1))[0], 630, scale, bias, 3, stride=2,
                        padding=1)
    counts = F.conv2d(torch.from_numpy(signs(x)).float(), torch.from_numpy(signs(w)).float(),
                      stride=2, padding=1)
    want = counts * torch.from_numpy(scale).view(1, -1, 1, 1) + torch.from_numpy(bias).view(
        1, -1, 1, 1)
    np.testing.assert_array_equal(got, want.numpy())


def test_conv_refuses_an_input_with_the_wrong_channel_count() -> None:
    packed, n = pack_signs(np.ones((2, 3 * 3 * 4)))
    with pytest.raises(ValueError, match="channels"):
        xnor_conv2d(np.ones((1, 5, 6, 6)), packed, n, 3)
