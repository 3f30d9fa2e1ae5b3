"""Parity with sentence-transformers' SPLADE pieces (SpladePooling, FlopsLoss,
select_max_active_dims) on the MLM logits of a small random BERT masked-LM built locally.

Needs torch, transformers and sentence-transformers (never sparsejax dependencies): skipped
cleanly without them.
"""

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
st_sparse = pytest.importorskip("sentence_transformers.sparse_encoder")

from sentence_transformers.sparse_encoder.losses import FlopsLoss  # noqa: E402
from sentence_transformers.sparse_encoder.models import SpladePooling  # noqa: E402
from sentence_transformers.util import select_max_active_dims  # noqa: E402

from sparsejax import retrieval as R  # noqa: E402


@pytest.fixture(scope="module")
def mlm_batch():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=32)
    model = transformers.BertForMaskedLM(config).eval()
    ids = torch.randint(5, 97, (6, 11))
    mask = torch.ones_like(ids)
    for row, n in enumerate([11, 9, 4, 11, 1, 7]):
        mask[row, n:] = 0
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits * 4.0  # spread the activations
    return logits, mask


@pytest.mark.parametrize("pooling", ["max", "sum"])
@pytest.mark.parametrize("activation", ["relu", "log1p_relu"])
def test_splade_pooling_parity(mlm_batch, pooling, activation):
    logits, mask = mlm_batch
    module = SpladePooling(pooling_strategy=pooling, activation_function=activation).eval()
    with torch.no_grad():
        want = module({"token_embeddings": logits.clone(), "attention_mask": mask})[
            "sentence_embedding"].numpy()
    got = R.splade_pool(jnp.asarray(logits.numpy()), jnp.asarray(mask.numpy()), pooling=pooling,
                        activation=activation)
    assert (want > 0).any() and (want == 0).any()
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("masked", [False, True])
def test_flops_loss_parity(mlm_batch, masked):
    logits, mask = mlm_batch
    with torch.no_grad():
        reps = SpladePooling().eval()({"token_embeddings": logits.clone(),
                                       "attention_mask": mask})["sentence_embedding"]
    l0 = (reps != 0).sum(1).numpy()
    threshold = int(np.median(l0)) if masked else None
    assert not masked or 0 < (l0 <= threshold).sum() < len(l0)  # the l0 mask drops some rows
    with torch.no_grad():
        want = float(FlopsLoss(None, threshold=threshold).compute_loss_from_embeddings(reps))
    got = float(R.flops_loss(jnp.asarray(reps.numpy()), threshold=threshold))
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("k", [1, 5, 30])
def test_select_max_active_dims_parity(mlm_batch, k):
    logits, mask = mlm_batch
    with torch.no_grad():
        reps = SpladePooling().eval()({"token_embeddings": logits.clone(),
                                       "attention_mask": mask})["sentence_embedding"]
    want = select_max_active_dims(reps.clone(), k).numpy()
    got = np.asarray(R.max_active_dims(jnp.asarray(reps.numpy()), k))
    # torch.topk breaks ties among zeros arbitrarily: compare the kept values, not zero positions
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
