"""The MoE demo stage runs with a quick context and reports sane results."""

import json

import jax
import numpy as np
import pytest

from sparsejax.demo import STAGES, make_context
from sparsejax.demo.moe import CONFIG, init, run


def test_moe_stage_has_the_dense_layers_active_weight_count():
    params = init(jax.random.key(0))
    w1, w2 = params["moe"]["w1"], params["moe"]["w2"]
    assert CONFIG.k * (w1[0].size + w2[0].size) == 256 * 256
    assert "moe" in STAGES


@pytest.mark.slow
def test_moe_stage_quick(capsys):
    ctx = make_context(steps=50, finetune_steps=5, quick=True, progress=False)
    result = run(ctx)
    out = capsys.readouterr().out
    assert "top-2 MoE test accuracy" in out and "expert 7" in out
    json.dumps(result)
    assert result["accuracy"] > 0.5
    assert sum(result["expert_load"]) <= 2 * ctx.x_test.shape[0]
    assert 0.0 <= result["dropped_fraction_test"] <= 1.0
    np.testing.assert_equal(result["active_expert_weights"], result["dense_weights"])
