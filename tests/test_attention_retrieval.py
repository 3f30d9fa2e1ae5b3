"""The synthetic needle-retrieval task: dense solves it, masks that drop the needle fail, and the
patterns are scored on it at small size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax.attention import attention, decode, prefill
from sparsejax.attention.moa import MoARule
from sparsejax.demo import retrieval as R


@pytest.fixture(scope="module")
def task():
    return R.make_retrieval_task(
        jax.random.key(0), batch=4, heads=4, seq_len=256, head_dim=32, num_queries=8
    )


def test_task_layout(task):
    b, h, lq, d = task.q.shape
    assert (b, h, lq, d) == (4, 4, 256, 32)
    assert np.all(np.asarray(task.needle) < lq - 9)
    k_at = jnp.take_along_axis(task.v, task.needle[..., None, None], axis=2)[:, :, 0]
    np.testing.assert_allclose(k_at, task.codes[task.label])


def test_dense_solves_and_needle_decides(task):
    assert R.retrieval_accuracy(task) == 1.0
    pos = jnp.arange(256)
    only_needle = pos[None, None, :] == task.needle[..., None]
    assert R.retrieval_accuracy(task, only_needle) == 1.0
    assert R.retrieval_accuracy(task, ~only_needle) <= 0.4  # chance is 1/16
    empty = jnp.zeros((1, 1, 256), bool)
    labels = R.retrieval_predict(task, empty)  # zero output, no NaN
    assert labels.shape == (4, 4)


def test_predict_matches_attention_kernel(task):
    rule = MoARule(block_size=32, max_new_tokens=0, sink_size=32, minimum_cache_size=0,
                   split_size=32)
    mask = prefill.moa_mask([0.0] * 4, [0.5, 0.25, 0.3, 1.0], 256, rule=rule)
    row = R.mask_answer_row(mask)
    np.testing.assert_array_equal(row, np.asarray(mask.to_dense())[:, :, -1])
    out = attention(task.q, task.k, task.v, mask, backend="reference")[:, :, -1]
    expect = jnp.argmax(out @ task.codes.T, axis=-1)
    np.testing.assert_array_equal(R.retrieval_predict(task, row), expect)


def test_methods_accuracy_small(task):
    """Accuracy of each method at small size (reported; dynamic ones find the needle)."""
    q, k = task.q, task.k
    results = {}
    mask = prefill.vertical_slash_mask(
        q, k, vertical_size=16, slash_size=16, last_q=32, block_size=16
    )
    results["vertical_slash"] = R.retrieval_accuracy(task, R.mask_answer_row(mask))
    results["block_topk"] = R.retrieval_accuracy(
        task, R.mask_answer_row(prefill.block_topk_mask(q, k, block_size=16, top_k=4))
    )
    results["quest"] = R.retrieval_accuracy(
        task, decode.quest_keep(q[:, :, -1], k, page_size=16, token_budget=96)
    )
    results["snapkv"] = R.retrieval_accuracy(
        task,
        decode.snapkv_keep(
            q, k, token_budget=32, window=16, kernel_size=5, local_window=8, prefix_tokens=4
        ),
    )
    blocks = prefill.sparsed_blocks(q, k, new_generation=8, block_size=16, rho=0.2)
    results["sparsed"] = R.retrieval_accuracy(task, blocks[:, :, -1].repeat(16, axis=-1))
    window = prefill.moa_mask([0.0] * 4, [0.25] * 4, 256, rule=MoARule(max_new_tokens=0))  # sink 64 + local 64
    results["moa_window"] = R.retrieval_accuracy(task, R.mask_answer_row(window))
    print(results)
    assert results["vertical_slash"] >= 0.9
    assert results["snapkv"] >= 0.9
    assert results["sparsed"] >= 0.9
    # a static sink + window keeps the needle only when it lies in the window
    in_window = np.mean((np.asarray(task.needle) < 64) | (np.asarray(task.needle) >= 192))
    assert results["moa_window"] <= in_window + 0.25


def test_causal_density():
    tril = np.tril(np.ones((5, 5), bool))
    assert R.causal_density(tril) == 1.0
    m = np.zeros((2, 5, 5), bool)
    m[0, 4, :] = True  # 5 of 15 causal pairs in one of two heads
    assert R.causal_density(m) == pytest.approx(5 / 30)
    assert R.causal_density(np.triu(np.ones((5, 5), bool), 1)) == 0.0


def test_errors():
    with pytest.raises(ValueError, match="seq_len"):
        R.make_retrieval_task(jax.random.key(0), seq_len=1)
    with pytest.raises(ValueError, match="num_queries"):
        R.make_retrieval_task(jax.random.key(0), seq_len=16, num_queries=16)
    with pytest.raises(TypeError, match="bool"):
        R.mask_answer_row(jnp.ones((2, 3)))
