"""The `lsr` demo stage runs, is exact and registered."""

from sparsejax.demo import STAGES, lsr


def test_lsr_demo_stage(capsys):
    assert STAGES["lsr"] == "sparsejax.demo.lsr"
    out = lsr.run(None)  # the stage uses no shared demo state
    assert out["max_score_diff_vs_brute_force"] < 1e-4
    assert 0.2 < out["mrr@10"] <= 1.0 and out["recall@100"] >= out["mrr@10"]
    assert "learned sparse retrieval" in capsys.readouterr().out
