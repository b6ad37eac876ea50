"""Bit-packed ±1 arithmetic: the kernels an Espresso-style binary network runs on at inference.

A ±1 vector of length n is stored as bits (1 for +1, 0 for -1), 64 to a uint64 word along the
reduction axis, so that a dot product of two such vectors is one XOR and one popcount per word:
the number of disagreeing positions d gives sum(a * b) = (n - d) - d = n - 2 d. The last word is
padded with 0 bits in *both* operands, so padding never disagrees and n stays the true length.

Everything here is NumPy, vectorised over neurons and pixels; the only Python loop runs over the
words of the reduction axis (a handful per layer), which keeps the temporary at one
(rows x columns) array instead of a (rows x columns x words) one that large layers cannot afford.

Sign convention: sign(0) = +1, as a bit cannot hold a third value; the training layers in
:mod:`compactcnn.deploy.binary` use the same convention, so packed and float paths agree exactly.
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 64

_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount_table(words: np.ndarray) -> np.ndarray:
    """Bits set in each uint64, through a byte table: the fallback for numpy < 2.0."""
    as_bytes = np.ascontiguousarray(words).view(np.uint8).reshape(*words.shape, 8)
    return _BYTE_POPCOUNT[as_bytes].sum(axis=-1, dtype=np.uint8)


# numpy >= 2.0 has a native popcount (one instruction per word where the CPU has one).
popcount = getattr(np, "bitwise_count", _popcount_table)


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def pack_signs(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Pack sign(x) along the last axis into uint64 words; return (packed, n).

    ``n`` is returned because the packed shape alone cannot tell how many bits of the last word
    are real, and every dot product needs it.
    """
    return _pack_bits(np.asarray(x) >= 0)


def _pack_bits(bits: np.ndarray) -> tuple[np.ndarray, int]:
    """Pack a bool array (True for +1) along its last axis into uint64 words."""
    n = bits.shape[-1]
    words = -(-n // WORD_BITS)
    packed = np.packbits(bits, axis=-1, bitorder="little")
    pad_bytes = words * (WORD_BITS // 8) - packed.shape[-1]
    if pad_bytes:
        widths = [(0, 0)] * (packed.ndim - 1) + [(0, pad_bytes)]
        packed = np.pad(packed, widths)
    return np.ascontiguousarray(packed).view(np.uint64), n


def unpack_signs(packed: np.ndarray, n: int) -> np.ndarray:
    """The ±1 (int8) array that :func:`pack_signs` packed; a debugging and testing aid."""
    as_bytes = np.ascontiguousarray(packed).view(np.uint8)
    bits = np.unpackbits(as_bytes, axis=-1, count=n, bitorder="little")
    return bits.astype(np.int8) * 2 - 1


def binary_matmul(packed_a: np.ndarray, packed_b: np.ndarray, n: int) -> np.ndarray:
    """sum_k sign(a[i, k]) * sign(b[j, k]) for packed rows a (M, words) and b (N, words).

    Returns an exact int32 (M, N) array: n - 2 * popcount(a XOR b), summed over words.
    """
    if packed_a.shape[-1] != packed_b.shape[-1]:
        raise ValueError(f"packed widths differ: {packed_a.shape[-1]} vs {packed_b.shape[-1]}")
    disagree = np.zeros((packed_a.shape[0], packed_b.shape[0]), dtype=np.int32)
    for w in range(packed_a.shape[-1]):
        disagree += popcount(packed_a[:, w, None] ^ packed_b[None, :, w])
    return n - 2 * disagree


def _affine(counts: np.ndarray, scale: np.ndarray, bias: np.ndarray | None,
            channel_axis: int) -> np.ndarray:
    """counts * scale + bias in float32, the same two roundings the torch layers make."""
    shape = [1] * counts.ndim
    shape[channel_axis] = -1
    out = counts.astype(np.float32) * np.asarray(scale, np.float32).reshape(shape)
    if bias is not None:
        out = out + np.asarray(bias, np.float32).reshape(shape)
    return out


def binary_linear(x_signs: np.ndarray, packed_w: np.ndarray, n: int, scale: np.ndarray,
                  bias: np.ndarray | None) -> np.ndarray:
    """A binary fully connected layer: (sign(x) . sign(w)) * scale + bias, x of shape (B, n).

    ``x_signs`` may hold any reals: only their signs are used, as the layer binarises its input.
    """
    packed_x, n_x = pack_signs(x_signs)
    if n_x != n:
        raise ValueError(f"input has {n_x} features, the packed weights expect {n}")
    return _affine(binary_matmul(packed_x, packed_w, n), scale, bias, channel_axis=1)


def _valid_taps(size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int]) -> np.ndarray:
    """(OH, OW, KH, KW) bool: which kernel taps of each output pixel land inside the image."""
    inside = np.pad(np.ones(size, dtype=bool), [(padding[0],) * 2, (padding[1],) * 2])
    windows = np.lib.stride_tricks.sliding_window_view(inside, kernel)
    return windows[::stride[0], ::stride[1]]


def xnor_conv2d(x: np.ndarray, packed_w: np.ndarray, n: int, kernel_size: int | tuple[int, int],
                stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0
                ) -> np.ndarray:
    """The integer part of a binary convolution: conv2d(sign(x), sign(w)) with zero padding.

    ``x`` is (B, C, H, W) reals; ``packed_w`` is ``pack_signs(w.reshape(O, C * KH * KW))``.
    Only groups=1 and dilation=1, the layers binary networks are made of.

    Zero padding has no ±1 bit, so the image is padded with +1 instead and the error is removed
    exactly: a padded tap adds sign(w) of that tap, so each output pixel subtracts the sum of
    sign(w) over its padded taps, precomputed per position as (padded taps) @ (channel sums).
    """
    kernel, stride, padding = _pair(kernel_size), _pair(stride), _pair(padding)
    batch, channels, height, width = x.shape
    if channels * kernel[0] * kernel[1] != n:
        raise ValueError(f"input has {channels} channels, the packed weights expect "
                         f"{n // (kernel[0] * kernel[1])}")
    signs = np.pad(np.asarray(x) >= 0, [(0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2],
                   constant_values=True)
    windows = np.lib.stride_tricks.sliding_window_view(signs, kernel, axis=(2, 3))
    windows = windows[:, :, ::stride[0], ::stride[1]]  # (B, C, OH, OW, KH, KW)
    out_h, out_w = windows.shape[2:4]
    # Rows are pixels, columns (c, kh, kw): the order in which w.reshape(O, -1) lays out taps.
    patches = windows.transpose(0, 2, 3, 1, 4, 5).reshape(batch * out_h * out_w, n)
    counts = binary_matmul(_pack_bits(patches)[0], packed_w, n)  # (B*OH*OW, O)

    padded = ~_valid_taps((height, width), kernel, stride, padding)
    if padded.any():
        tap_sums = unpack_signs(packed_w, n).reshape(-1, channels, *kernel).sum(axis=1)
        correction = padded.reshape(out_h * out_w, -1).astype(np.int32) @ (
            tap_sums.reshape(tap_sums.shape[0], -1).T.astype(np.int32))  # (OH*OW, O)
        counts = (counts.reshape(batch, out_h * out_w, -1) - correction).reshape(counts.shape)
    return counts.reshape(batch, out_h, out_w, -1).transpose(0, 3, 1, 2)


def binary_conv2d(x: np.ndarray, packed_w: np.ndarray, n: int, scale: np.ndarray,
                  bias: np.ndarray | None, kernel_size: int | tuple[int, int],
                  stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0
                  ) -> np.ndarray:
    """A binary convolution: :func:`xnor_conv2d` * per-channel scale + bias, float32 NCHW."""
    counts = xnor_conv2d(x, packed_w, n, kernel_size, stride, padding)
    return _affine(counts, scale, bias, channel_axis=1)
