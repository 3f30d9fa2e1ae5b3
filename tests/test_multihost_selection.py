"""The global allocation's selection (`sparsejax.allocation.global_keep`), which works on sharded
leaves without concatenating them, against a NumPy reference: exactly k kept, the k highest
scores, ties by lower position in the concatenation, NaN last."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from sparsejax import allocation, compute_masks

SHAPES = [(5, 7), (0, 3), (130, 130), (9,), (2, 3, 4)]  # 130*130 > 2**14: the radix regime
_keep = jax.jit(allocation.global_keep)


def reference(arrays, sparsity):
    """``kept_count`` highest of the float32 concatenation, ties by lower index, NaN lowest."""
    flat = np.concatenate([np.asarray(a, np.float32).reshape(-1) for a in arrays])
    k = max(1, int(np.round(np.float32(flat.size) * (np.float32(1) - np.float32(sparsity)))))
    key = np.where(np.isnan(flat), -np.inf, flat).astype(np.float64)
    key[np.isnan(flat)] = -np.inf
    rank = np.lexsort((np.arange(flat.size), np.isnan(flat), -key))  # by -score, NaN last, index
    keep = np.zeros(flat.size, bool)
    keep[rank[:k]] = True
    out, offset = [], 0
    for a in arrays:
        out.append(keep[offset:offset + a.size].reshape(a.shape))
        offset += a.size
    return out


@given(seed=st.integers(0, 2**16), levels=st.sampled_from([0, 2, 5]),
       sparsity=st.sampled_from([0.0, 0.37, 0.8, 0.999, 1.0]), nans=st.booleans())
def test_global_keep_matches_reference(seed, levels, sparsity, nans):
    rng = np.random.default_rng(seed)
    arrays = []
    for shape in SHAPES:
        x = rng.normal(size=shape).astype(np.float32)
        if levels:  # few distinct values: many ties across leaves and inside the radix regime
            x = np.round(x * levels) / levels
        if nans and x.size:
            x.reshape(-1)[rng.integers(0, x.size, 2)] = np.nan
        arrays.append(x)
    got = _keep([jnp.asarray(a) for a in arrays], sparsity)
    for g, w in zip(got, reference(arrays, sparsity), strict=True):
        np.testing.assert_array_equal(np.asarray(g), w)


def test_compute_masks_global_and_global_topk_agree():
    rng = np.random.default_rng(0)
    params = {"a": jnp.asarray(rng.normal(size=(20, 30)), jnp.float32),
              "b": jnp.asarray(np.round(rng.normal(size=(5, 7))), jnp.float32)}
    masks = compute_masks(params, "unstructured", 0.75, allocation="global")
    want = reference([np.abs(params["a"]), np.abs(params["b"])], 0.75)  # magnitude scores
    np.testing.assert_array_equal(np.asarray(masks["a"]), want[0])
    np.testing.assert_array_equal(np.asarray(masks["b"]), want[1])
    sp = allocation.global_topk(params, 0.75)
    for name, w in zip("ab", want):
        np.testing.assert_allclose(float(sp[name]), 1 - w.sum() / w.size, rtol=1e-6)
