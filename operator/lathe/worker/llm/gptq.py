"""GPTQ (Frantar et al. 2022) for one weight, returning the integer codes and the grid they are on.

Written here rather than taken from ONNX Runtime 1.32's vendored GPTQ (quantization/neural_compressor/
weight_only.py), which spreads each column's error with a column of the upper Cholesky factor of H^-1
(`Hinv1[i:, i]`, zero below the diagonal) where GPTQ uses its row: no error is spread, and its output equals
round-to-nearest on the same grid (checked in tests/llm/test_gptq.py). Its packer also re-quantizes the result on
a grid recomputed from it. Here the codes, scales and zero points GPTQ chose are what MatMulNBits stores.

W is [K, N] (ONNX MatMul's weight: input features first), H the [K, K] Hessian of the inputs (2/n sum x^T x).
Blocks of `group` rows along K share a scale (and a zero point when asymmetric), as MatMulNBits' blocks do."""

from __future__ import annotations

import numpy as np


def _grid(w: np.ndarray, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per column of w [g, N]: scale and zero point of the min/max grid (GPTQ's find_params, per channel)."""
    maxq = 2 ** bits - 1
    lo = np.minimum(w.min(0), 0.0)
    hi = np.maximum(w.max(0), 0.0)
    if symmetric:
        hi = np.maximum(np.abs(lo), hi)
        lo = -hi
    flat = (lo == 0) & (hi == 0)
    lo, hi = np.where(flat, -1.0, lo), np.where(flat, 1.0, hi)
    scale = (hi - lo) / maxq
    zero = np.full_like(scale, (maxq + 1) // 2) if symmetric else np.round(-lo / scale)
    return scale, zero


def gptq_codes(weight: np.ndarray, hessian: np.ndarray, bits: int = 4, group: int = 32, symmetric: bool = True,
               blocksize: int = 128, percdamp: float = 0.01) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes [K, N] uint8, scales [K // group, N], zero points [K // group, N]); K must be a multiple of group."""
    w = weight.astype(np.float64).copy()
    k, n = w.shape
    if k % group or blocksize % group:
        raise ValueError(f"GPTQ needs the input size ({k}) and the block ({blocksize}) to be multiples of {group}")
    maxq = 2 ** bits - 1
    h = hessian.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead, :] = 0.0
    h[np.diag_indices(k)] += percdamp * np.mean(np.diag(h))
    hinv = np.linalg.cholesky(np.linalg.inv(h)).T  # upper: the inverse Hessian's Cholesky factor
    codes = np.zeros((k, n), dtype=np.uint8)
    scales = np.zeros((k // group, n))
    zeros = np.zeros((k // group, n))
    for i1 in range(0, k, blocksize):
        i2 = min(i1 + blocksize, k)
        w1 = w[i1:i2].copy()
        err = np.zeros_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            row = i1 + i
            if row % group == 0:  # the group's grid, from the weights as GPTQ has updated them so far
                s, z = _grid(w1[i:i + group], bits, symmetric)
                scales[row // group], zeros[row // group] = s, z
            q = np.clip(np.round(w1[i] / s) + z, 0, maxq)
            codes[row] = q
            e = (w1[i] - s * (q - z)) / h1[i, i]
            w1[i:] -= np.outer(h1[i, i:], e)  # the error, spread over the rows not yet quantized
            err[i] = e
        w[i2:] -= hinv[i1:i2, i2:].T @ err
    return codes, scales, zeros


def dequantize(codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray, group: int) -> np.ndarray:
    return (codes.astype(np.float64) - np.repeat(zeros, group, 0)) * np.repeat(scales, group, 0)
