"""The block-sparse demo stage runs with a quick context and reports sane results."""

import json

import numpy as np

from sparsejax.demo import make_context
from sparsejax.demo.block_sparse import block_magnitude_mask, run


def test_block_magnitude_mask_keeps_largest_blocks_per_row():
    w = np.zeros((4, 6), np.float32)
    w[0:2, 2:4] = 5.0  # row 0: block column 1 largest
    w[2:4, 4:6] = 1.0  # row 1: block column 2 largest
    w[2:4, 0:2] = 0.5
    mask = block_magnitude_mask(w, (2, 2), 1 / 3)
    np.testing.assert_array_equal(mask, [[False, True, False], [False, False, True]])


def test_block_sparse_stage_quick(capsys):
    ctx = make_context(steps=50, finetune_steps=5, quick=True, progress=False)
    result = run(ctx)
    out = capsys.readouterr().out
    assert "block-sparse hidden layer" in out and "vs dense" in out
    json.dumps(result)
    rows = result["block_sparse"]
    assert [r["block_density"] for r in rows] == [0.5, 0.25]
    assert out.count("│ block-sparse") == 2  # every density has its row in the table
    for row in rows:
        assert 0.0 <= row["accuracy_finetuned"] <= 1.0
        assert row["weight_bytes"] < result["dense"]["weight_bytes"]
        assert row["matmul_seconds"] > 0
