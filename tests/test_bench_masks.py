"""Smoke test of benchmarks/masks.py at a tiny size (no timing is asserted)."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "masks.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_masks", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_masks_benchmark_tiny_counts_exact(tmp_path, capsys):
    out = tmp_path / "masks.json"
    result = _load().main(["--size", "128", "--repeats", "1", "--modes", "eager", "--no-compress",
                           "--out", str(out)])
    printed = capsys.readouterr().out
    assert "jaxpruner comparison skipped" in printed
    saved = json.loads(out.read_text())
    assert saved["meta"]["shape"] == [128, 128]
    names = [c["name"] for c in result["masks"]]
    assert names == ["unstructured_s0.5", "unstructured_s0.9", "nm_2:4_axis-1", "nm_2:4_axis0",
                     "block_128x128_mean_s0.5", "block_32x32_mean_s0.5", "block_4x4_mean_s0.5"]
    for case in result["masks"]:
        eager = case["modes"]["eager"]
        assert eager["exact"], case
        assert eager["kept"] == case["expected_kept"]
    # 128*128*(1-0.9) = 1638.4 -> 1638 kept; one 128x128 tile -> kept_count(1, .5) = 1 tile
    assert result["masks"][1]["expected_kept"] == 1638
    assert result["masks"][4]["expected_kept"] == 128 * 128


def test_masks_benchmark_rejects_bad_size():
    with pytest.raises(SystemExit):
        _load().main(["--size", "100", "--out", "/dev/null"])
