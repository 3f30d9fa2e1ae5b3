"""Random test problems shared by the test modules (one definition each)."""

import numpy as np


def dictionary_problem(seed, n_features=30, n_atoms=50, n_signals=6, dtype=np.float64):
    """``(d, y)``: a random dictionary with unit-norm atoms (columns) ``[n_features, n_atoms]`` and
    random signals (rows) ``[n_signals, n_features]``, numpy."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n_features, n_atoms))
    d /= np.linalg.norm(d, axis=0)
    y = rng.normal(size=(n_signals, n_features))
    return d.astype(dtype), y.astype(dtype)


def sparse_regression(seed, n, d, k=5, noise=0.05):
    """``(x, y, w)``: ``y = x @ w + noise`` with ``k`` nonzero weights, numpy."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    w = np.zeros(d)
    w[rng.choice(d, k, replace=False)] = rng.normal(size=k) * 3
    return x, x @ w + noise * rng.normal(size=n), w
