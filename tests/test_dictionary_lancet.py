"""Elastic net against scikit-learn; Concept Lancet atoms and edits against numpy transcriptions."""

import jax
import numpy as np
import pytest

from sparsejax.dictionary import (
    add_concept,
    concept_atoms,
    concept_coefficients,
    elastic_net,
    remove_concept,
    replace_concept,
)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("alpha,l1_ratio,positive", [(0.05, 0.5, False), (0.1, 0.9, False),
                                                     (0.02, 0.1, True), (0.03, 1.0, False)])
def test_elastic_net_matches_sklearn(x64, alpha, l1_ratio, positive):
    from sklearn.linear_model import ElasticNet

    rng = np.random.default_rng(0)
    d = rng.normal(size=(30, 12))
    y = rng.normal(size=(3, 30))
    got = np.asarray(elastic_net(d, y, alpha, l1_ratio, positive=positive, n_iter=3000))
    for row, target in zip(got, y):
        ref = ElasticNet(alpha=alpha, l1_ratio=l1_ratio, fit_intercept=False, positive=positive,
                         tol=1e-12, max_iter=100_000).fit(d, target).coef_
        np.testing.assert_allclose(row, ref, atol=1e-8)
        assert np.array_equal(row == 0, ref == 0)


def test_elastic_net_float32_within_1e4_and_checks():
    from sklearn.linear_model import ElasticNet

    rng = np.random.default_rng(1)
    d = rng.normal(size=(40, 16)).astype(np.float32)
    y = rng.normal(size=(40,)).astype(np.float32)
    got = elastic_net(d, y, 0.05, 0.5)
    ref = ElasticNet(alpha=0.05, l1_ratio=0.5, fit_intercept=False, tol=1e-10,
                     max_iter=100_000).fit(d.astype(np.float64), y.astype(np.float64)).coef_
    np.testing.assert_allclose(got, ref, atol=1e-4)
    with pytest.raises(ValueError, match="`l1_ratio` must be"):
        elastic_net(d, y, 0.05, 1.5)
    with pytest.raises(ValueError, match="`alpha` must be"):
        elastic_net(d, y, -1.0)


def test_concept_atoms_are_signed_leading_singular_vectors(x64):
    rng = np.random.default_rng(2)
    stimuli = [rng.normal(size=(n, 8)) + 3 * rng.normal(size=8) for n in (5, 9, 2)]
    atoms = np.asarray(concept_atoms(stimuli))
    assert atoms.shape == (8, 3)
    for k, s in enumerate(stimuli):
        _, _, vt = np.linalg.svd(s)
        v = vt[0] if s.mean(0) @ vt[0] >= 0 else -vt[0]
        np.testing.assert_allclose(atoms[:, k], v, atol=1e-10)
    with pytest.raises(ValueError, match=r"stimuli\[1\]"):
        concept_atoms([stimuli[0], rng.normal(size=(3, 7))])


def test_concept_edits_are_coefficient_edits(x64):
    rng = np.random.default_rng(3)
    atoms = np.asarray(concept_atoms([rng.normal(size=(4, 10)) + 2 * np.eye(10)[k]
                                      for k in range(5)]))
    x = rng.normal(size=(6, 10))
    w = np.asarray(concept_coefficients(atoms, x, 0.01, 0.5))
    np.testing.assert_allclose(w, elastic_net(atoms, x, 0.01, 0.5), atol=1e-12)
    np.testing.assert_allclose(remove_concept(x, w, atoms, 2), x - np.outer(w[:, 2], atoms[:, 2]))
    np.testing.assert_allclose(replace_concept(x, w, atoms, 1, 4),
                               x + np.outer(w[:, 1], atoms[:, 4] - atoms[:, 1]))
    np.testing.assert_allclose(add_concept(x, w, atoms, 0, 1.5), x + 1.5 * atoms[:, 0])
    # removing a concept and decomposing again leaves (almost) none of it
    planted = 3.0 * atoms[:, 3] + 0.5 * atoms[:, 0]
    wp = concept_coefficients(atoms, planted, 0.001, 0.5)
    again = concept_coefficients(atoms, remove_concept(planted, wp, atoms, 3), 0.001, 0.5)
    assert abs(float(again[3])) < 0.02 * abs(float(wp[3]))
    with pytest.raises(ValueError, match="`target` must be"):
        replace_concept(x, w, atoms, 1, 5)
    with pytest.raises(ValueError, match="`coefficients` must have shape"):
        remove_concept(x, w[:, :3], atoms, 0)
