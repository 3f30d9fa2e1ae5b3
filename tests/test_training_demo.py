"""The `training` demo stage runs end to end with tiny settings."""

import json

import pytest

from sparsejax.cli import main


@pytest.mark.slow
def test_demo_training_stage(capsys, tmp_path):
    code = main(["demo", "--quick", "--no-progress", "--steps", "40", "--stages", "training",
                 "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "sparse training from scratch" in out
    rows = json.loads((tmp_path / "results.json").read_text())["stages"]["training"]["rows"]
    assert [r["method"] for r in rows] == ["dense", "gradual magnitude 90%", "RigL 90% (ERK)",
                                           "2:4 SR-STE"]
    sparsity = {r["method"]: r["sparsity"] for r in rows}
    assert sparsity["dense"] == 0.0
    assert abs(sparsity["RigL 90% (ERK)"] - 0.9) < 1e-3
    assert sparsity["2:4 SR-STE"] == 0.5
    assert all(r["compilations"] == 1 for r in rows)  # one compiled step serves every step
    assert all(r["accuracy"] > 0.3 for r in rows)
    assert (tmp_path / "demo.png").stat().st_size > 1000
