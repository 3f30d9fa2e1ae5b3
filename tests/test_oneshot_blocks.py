"""sparsejax.oneshot.prune_blocks against prune_model on a small random MiniLM-shaped encoder (no
weights needed), its argument errors, and the length-sorted batching of `models.MiniLM`."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from sparsejax import models
from sparsejax.oneshot import prune_blocks, prune_model

# two blocks: block 1 is calibrated on the outputs of the pruned block 0
CONFIG = models.BertConfig(vocab_size=40, hidden=16, layers=2, heads=4, intermediate=32,
                           max_position=64)


def _forward(params, batch, tap):
    return models.embed(params, *batch, CONFIG, tap)


def _block(layer, carry, tap):
    return models.encoder_block(layer, carry, CONFIG, tap)


_input = jax.jit(models.encoder_input, static_argnums=3)


@pytest.fixture(scope="module")
def encoder():
    # random weights of unit-order fan-in scale, drawn in numpy (no eager JAX op per shape)
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if leaf.ndim == 2:
            return (rng.normal(size=leaf.shape) / np.sqrt(leaf.shape[0])).astype(np.float32)
        return ((name.endswith("['scale']") + 0.1 * rng.normal(size=leaf.shape))
                .astype(np.float32))

    shapes = jax.eval_shape(lambda: models.init_params(jax.random.key(0), CONFIG))
    params = jax.tree_util.tree_map_with_path(draw, shapes)
    batches = []
    for _ in range(2):
        ids = rng.integers(1, CONFIG.vocab_size, size=(3, 8)).astype(np.int32)
        mask = np.ones_like(ids)
        mask[1, 5:] = 0  # padding stays out of the statistics in both drivers
        batches.append((ids, mask))
    return params, batches, [_input(params, *b, CONFIG) for b in batches]


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "dsnot"])
def test_prune_blocks_matches_prune_model(encoder, method):
    params, batches, inputs = encoder
    want, want_masks = prune_model(params, _forward, batches, method, sparsity=0.5,
                                   groups=models.layer_groups(CONFIG), axis=0)
    got, got_masks = prune_blocks(params["layers"], _block, inputs, method, sparsity=0.5, axis=0)
    assert len(got) == len(got_masks) == CONFIG.layers
    for k in range(CONFIG.layers):
        assert got_masks[k]["attn_ln"]["scale"] is None and got_masks[k]["query"]["bias"] is None
        np.testing.assert_array_equal(got[k]["query"]["bias"], params["layers"][k]["query"]["bias"])
        for name in models.LINEARS:
            mask = got_masks[k][name]["kernel"]
            np.testing.assert_array_equal(mask, want_masks["layers"][k][name]["kernel"])
            assert mask.mean() == 0.5
            w, ref = got[k][name]["kernel"], want["layers"][k][name]["kernel"]
            if method == "sparsegpt":
                # the weight updates solve with Gram matrices that the two drivers accumulate in
                # different compiled programs (one block vs the model's prefix): float32 rounding
                np.testing.assert_allclose(w, ref, rtol=0, atol=1e-5 * float(np.abs(ref).max()))
                np.testing.assert_array_equal(w == 0, ~mask)
            else:
                np.testing.assert_array_equal(w, ref)


def test_prune_blocks_rejects_bad_arguments(encoder):
    params, _, inputs = encoder
    blocks = params["layers"]
    with pytest.raises(ValueError, match=r"`axis` must be given"):
        prune_blocks(blocks, _block, inputs, "wanda", sparsity=0.5)
    with pytest.raises(ValueError, match=r"`inputs` must hold at least one batch"):
        prune_blocks(blocks, _block, [], "wanda", sparsity=0.5, axis=0)
    with pytest.raises(TypeError, match=r"`inputs` must be a re-iterable sequence"):
        prune_blocks(blocks, _block, iter(inputs), "wanda", sparsity=0.5, axis=0)
    with pytest.raises(ValueError, match=r"`blocks` must be a non-empty sequence"):
        prune_blocks([], _block, inputs, "wanda", sparsity=0.5, axis=0)
    odd = dict(blocks[1], ffn_in={"kernel": blocks[1]["ffn_in"]["kernel"][:, :16],
                                  "bias": blocks[1]["ffn_in"]["bias"]})
    with pytest.raises(ValueError, match=r"`blocks\[1\]` must be of the structure, shapes.*"
                                         r"ffn_in/kernel"):
        prune_blocks([blocks[0], odd], _block, inputs, "wanda", sparsity=0.5, axis=0)
    with pytest.raises(ValueError, match=r"`layers` names a layer 'query'"):
        prune_blocks(blocks, _block, inputs, "wanda", sparsity=0.5, axis=0, layers=["query"])
    with pytest.raises(ValueError, match=r"`axis` must be the input-feature axis of 'ffn_in/kernel'"):
        prune_blocks(blocks, _block, inputs, "wanda", sparsity=0.5, axis=1)
    with pytest.raises(ValueError, match="`method` must be one of"):
        prune_blocks(blocks, _block, inputs, "obs", sparsity=0.5, axis=0)
    masked = [(h, np.zeros_like(mask)) for h, mask in inputs]
    with pytest.raises(ValueError, match=r"`inputs` must be batches with at least one counted"):
        prune_blocks(blocks, _block, masked, "wanda", sparsity=0.5, axis=0)


def test_prune_blocks_subset_of_layers_and_nm(encoder):
    params, _, inputs = encoder
    got, masks = prune_blocks(params["layers"][:2], _block, inputs, "wanda", n=2, m=4, axis=0,
                              layers=["ffn_in/kernel", "ffn_out/kernel"])
    for k in range(2):
        assert masks[k]["query"]["kernel"] is None
        np.testing.assert_array_equal(got[k]["query"]["kernel"],
                                      params["layers"][k]["query"]["kernel"])
        for name in ("ffn_in", "ffn_out"):
            mask = np.asarray(masks[k][name]["kernel"])
            assert (mask.reshape(-1, 4, mask.shape[1]).sum(axis=1) == 2).all()  # 2:4 on inputs


def test_minilm_call_sorts_by_length_and_keeps_the_order(encoder):
    params = encoder[0]
    tok = models.WordPiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "c", "d", "e"])
    model = models.MiniLM(params, CONFIG, tok)
    # 5 texts of 3..34 tokens, not in length order: batches of 2 by length are [3, 5] and [8, 14]
    # tokens (width 32) and [34] (width 64)
    texts = ["a b c d e " * 6 + "a b", "a", "b c d", "e d c b a e", "c " * 12]
    got = model(texts, batch_size=2)
    ids, mask = tok(texts)  # all five in one batch, in the given order, padded to 34
    want = jax.jit(models.embed, static_argnums=3)(params, ids, mask, CONFIG)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert len({tuple(np.round(row, 3)) for row in got}) == 5  # five different embeddings
