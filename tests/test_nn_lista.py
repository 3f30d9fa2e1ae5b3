"""The Flax NNX and Equinox LISTA modules: at initialisation they equal ISTA; gradients flow."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from _problems import dictionary_problem as _problem
from flax import nnx

from sparsejax import nn
from sparsejax.dictionary import ista


def test_lista_equinox_and_nnx_modules():
    d, y = _problem(5)
    dj, yj = jnp.asarray(d, jnp.float32), jnp.asarray(y, jnp.float32)
    ref = ista(dj, yj, 0.1, n_iter=3)
    m = nn.eqx.LISTA(dj, 0.1, 3)
    np.testing.assert_allclose(m(yj), ref, atol=1e-5)
    g = eqx.filter_grad(lambda m: jnp.sum(m(yj) ** 2))(m)
    assert g.threshold.shape == (3,)
    n = nn.LISTA(dj, 0.1, 3)
    np.testing.assert_allclose(n(yj), ref, atol=1e-5)
    grads = nnx.grad(lambda mod: jnp.sum(mod(yj) ** 2))(n)
    assert grads.lateral[...].shape == (50, 50)
