"""The float64 per-token loop every `moe_ffn` backend is checked against (one definition for the
MoE test modules)."""

import numpy as np


def np_gelu(z):
    """``jax.nn.gelu`` (tanh approximation) in float64 numpy."""
    return 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)))


def np_silu(z):
    """``jax.nn.silu`` in float64 numpy."""
    return z / (1 + np.exp(-z))


def loop_reference(x, routing, w1, w2, act=np_gelu, w3=None):
    """Per token, per kept slot: the expert's FFN scaled by its gate (float64 numpy); with ``w3``
    the gated FFN ``(act(x w1) * (x w3)) w2``."""
    x, w1, w2 = (np.asarray(a, np.float64) for a in (x, w1, w2))
    w3 = None if w3 is None else np.asarray(w3, np.float64)
    idx, wts, kept = (np.asarray(a) for a in (routing.expert_index, routing.combine_weights,
                                               routing.kept))
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(idx.shape[1]):
            if kept[t, j]:
                e = idx[t, j]
                h = act(x[t] @ w1[e])
                if w3 is not None:
                    h = h * (x[t] @ w3[e])
                out[t] += float(wts[t, j]) * (h @ w2[e])
    return out
