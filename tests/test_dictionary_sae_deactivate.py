"""Interpret-then-deactivate: transcription of the reference's feature search, gate on planted
concept features (TPR >= 0.99, FPR <= 0.01)."""

import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax.dictionary import sae as S


def _reference_features(concept, retain, top_n):
    """The reference's set arithmetic (only positive latents count as top features)."""
    def top(codes):
        out = set()
        for seq in codes:
            peak = seq.max(0)
            order = np.argsort(-peak, kind="stable")[:top_n]
            out |= {int(i) for i in order if peak[i] > 0}
        return out
    feats = top(concept) - top(retain)
    mask = np.zeros(concept.shape[-1], bool)
    mask[list(feats)] = True
    return mask


def _sparse_codes(rng, n, tokens, d_sae, active, latents):
    codes = np.zeros((n, tokens, d_sae))
    for i in range(n):
        for t in range(tokens):
            codes[i, t, rng.choice(latents, active, replace=False)] = rng.uniform(0.1, 2, active)
    return codes


@pytest.mark.parametrize("top_n", [1, 4, 40])
def test_concept_features_match_reference(top_n):
    rng = np.random.default_rng(0)
    concept = _sparse_codes(rng, 6, 3, 40, 5, np.arange(40))
    retain = _sparse_codes(rng, 8, 3, 40, 5, np.arange(10, 40))
    got = S.concept_features(jnp.asarray(concept), jnp.asarray(retain), top_n)
    np.testing.assert_array_equal(got, _reference_features(concept, retain, top_n))


def _planted(rng, n, tokens, concept_latents, background, with_concept):
    codes = _sparse_codes(rng, n, tokens, 48, 3, background)
    if with_concept:
        for i in range(n):
            codes[i, rng.integers(tokens), concept_latents] = rng.uniform(1.0, 2.0,
                                                                         len(concept_latents))
    return codes


def test_itd_finds_planted_features_and_gates_concept_inputs():
    rng = np.random.default_rng(1)
    d = 48
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    config = S.SAEConfig(d_in=d, d_sae=d, activation="relu")
    params = {"W_enc": jnp.asarray(q, jnp.float32), "W_dec": jnp.asarray(q.T, jnp.float32),
              "b_enc": jnp.full(d, -0.05), "b_dec": jnp.zeros(d)}  # bias removes noise
    planted = np.arange(40, 48)
    background = np.arange(40)
    noise = 0.01

    def inputs(n, with_concept):
        codes = _planted(rng, n, 4, planted, background, with_concept)
        x = codes @ q.T + noise * rng.normal(size=(n, 4, d))
        return jnp.asarray(x, jnp.float32)

    concept_x, retain_x = inputs(100, True), inputs(100, False)
    feats = S.concept_features(S.encode(params, concept_x, config),
                               S.encode(params, retain_x, config), top_n=16)
    truth = np.zeros(d, bool)
    truth[planted] = True
    tpr = np.mean(np.asarray(feats)[truth])
    fpr = np.mean(np.asarray(feats)[~truth])
    assert tpr >= 0.99 and fpr <= 0.01, (tpr, fpr)
    # the gate, calibrated on concept inputs (with slack: the concept strength varies), edits
    # held-out concept inputs only
    threshold = S.gate_threshold(S.deactivation_error(params, concept_x, config, feats, -6.0),
                                 margin=0.5)
    held_concept, held_other = inputs(300, True), inputs(300, False)
    out_c = S.deactivate_concept(params, held_concept, config, feats, -6.0, threshold)
    out_o = S.deactivate_concept(params, held_other, config, feats, -6.0, threshold)
    assert np.mean(out_c.edited) >= 0.99 and np.mean(out_o.edited) <= 0.01
    np.testing.assert_array_equal(out_o.output[~out_o.edited], held_other[~out_o.edited])
    # edited inputs: the concept latents are scaled by -6, the rest reconstructed
    codes = S.encode(params, held_concept, config)
    want = S.decode(params, S.deactivate(codes, feats, -6.0), config)
    np.testing.assert_allclose(out_c.output[out_c.edited], want[out_c.edited], atol=1e-5)
    np.testing.assert_allclose(out_c.error, S.deactivation_error(params, held_concept, config,
                                                                 feats, -6.0), rtol=1e-6)


def test_deactivate_checks_and_values():
    codes = jnp.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(S.deactivate(codes, jnp.array([True, False, True]), 0.5),
                                  [[0.0, 1.0, 1.0], [1.5, 4.0, 2.5]])
    with pytest.raises(ValueError, match="`features` must be a bool array"):
        S.deactivate(codes, jnp.array([1, 0, 1]), 0.5)
    with pytest.raises(ValueError, match="`top_n` must be"):
        S.concept_features(codes, codes, 4)
    with pytest.raises(ValueError, match="`margin` must be"):
        S.gate_threshold(jnp.ones(3), margin=1.0)
