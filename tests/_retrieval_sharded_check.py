"""Run by tests/test_sharded_checks.py in a subprocess with 8 host CPU devices.

Builds the same index on one device and split over 8 devices of a mesh axis, and checks that
`search` (the same call) gives the same scores and ids, that the shards really sit on 8 devices,
and that the ids match a scipy brute force. Prints "OK" on success.
"""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax.sharding import Mesh

from sparsejax import retrieval as R

assert len(jax.devices()) == 8, jax.devices()
rng = np.random.default_rng(0)
n, vocab = 203, 64  # not a multiple of 8: the last shard is padded
p = 1.0 / np.arange(1, vocab + 1)
docs = ((rng.random((n, vocab)) < 0.5 * p / p[:8].mean()) *
        rng.integers(1, 17, (n, vocab))).astype(np.float32) / 8
queries = ((rng.random((9, vocab)) < 0.15) * rng.integers(1, 17, (9, vocab))).astype(np.float32) / 8

one = R.build_index(docs)
s1, i1 = R.search(one, jnp.asarray(queries), 12)
mesh = Mesh(np.array(jax.devices()), ("docs",))
eight = R.build_index(docs, mesh=mesh, axis="docs", dense_terms=4)
assert eight.num_shards == 8 and eight.docs_per_shard == 26
assert len(eight.doc_ids.sharding.device_set) == 8
s8, i8 = jax.jit(lambda q: R.search(eight, q, 12, max_terms=64, max_work=4096))(
    jnp.asarray(queries))
np.testing.assert_array_equal(np.asarray(i8), np.asarray(i1))
np.testing.assert_array_equal(np.asarray(s8), np.asarray(s1))
s = (sp.csr_matrix(queries) @ sp.csr_matrix(docs).T).toarray()
np.testing.assert_array_equal(np.asarray(i8), np.argsort(-s, axis=1, kind="stable")[:, :12])
print("OK")
