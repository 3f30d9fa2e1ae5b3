"""Plain numpy transcription of SparseGPT's column loop: the test oracle and the benchmark baseline."""

from __future__ import annotations

import numpy as np


def kept_count(size: int, sparsity: float) -> int:
    """`sparsejax.masks.kept_count` in numpy: ``round(size * (1 - s))`` in float32, at least 1."""
    k = int(np.round(np.float32(size) * (np.float32(1.0) - np.float32(sparsity))))
    return min(max(k, 1), size)


def sparsegpt_loop(W, H, sparsity=0.0, prunen=0, prunem=0, blocksize=128, percdamp=0.01,
                   dtype=np.float64):
    """``SparseGPT.fasterprune`` of IST-DASLab/sparsegpt, line by line in numpy; W is ``[rows, cols]``
    (torch layout), ``H = X^T X``.

    ``prunen`` counts *pruned* entries per group of ``prunem`` (the reference's convention). One
    change: an unstructured tile drops exactly ``size - kept_count`` entries (the reference drops
    those ``<=`` its threshold, one more). Returns ``(W, mask)`` with ``mask`` True = kept.
    """
    W = np.array(W, dtype)
    H = np.array(H, dtype)
    rows, columns = W.shape
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * np.mean(np.diag(H))
    H[np.arange(columns), np.arange(columns)] += damp
    Hinv = np.linalg.cholesky(np.linalg.inv(H)).T  # upper Cholesky factor of H^-1
    pruned = np.zeros_like(W, bool)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].copy()
        Q1 = np.zeros_like(W1)
        Err1 = np.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if prunen == 0:
            tmp = W1 ** 2 / np.diag(Hinv1)[None, :] ** 2
            order = np.argsort(-tmp.ravel(), kind="stable")
            mask1 = np.ones(tmp.size, bool)
            mask1[order[:kept_count(tmp.size, sparsity)]] = False
            mask1 = mask1.reshape(tmp.shape)
        else:
            mask1 = np.zeros_like(W1, bool)
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if prunen != 0 and i % prunem == 0:
                tmp = W1[:, i:i + prunem] ** 2 / np.diag(Hinv1)[i:i + prunem][None, :] ** 2
                low = np.argsort(tmp, axis=1, kind="stable")[:, :prunen]
                np.put_along_axis(mask1[:, i:i + prunem], low, True, axis=1)
            q = w.copy()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= np.outer(err1, Hinv1[i, i:])
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        pruned[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W, ~pruned
