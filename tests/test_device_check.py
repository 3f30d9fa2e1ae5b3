"""benchmarks/device_check.py end to end on CPU (``--dry-run``: tiny sizes, interpret mode)."""

import importlib.util
import json
import pathlib

import jax
import pytest

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "device_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dry_run_end_to_end(tmp_path, capsys):
    out = tmp_path / "device_check.json"
    assert _load().main(["--dry-run", "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert json.loads(printed.splitlines()[-2]) == summary  # the one printed JSON line
    assert summary["ok"] and summary["failures"] == 0 and summary["dry_run"]
    assert {"device", "jax", "jaxlib"} <= set(summary)
    tests = summary["tests"]
    assert tests["failed"] == 0 and tests["cases"]  # the on-device tests were collected
    assert all(v in ("passed", "skipped") for v in tests["cases"].values())
    backends = {(r["backend"], r["density"]) for r in summary["matmul"]["rows"]}
    assert backends == {(b, d) for b in ("pallas_gpu", "xla") for d in (1.0, 0.25)}
    for row in summary["matmul"]["rows"]:
        assert row["rel_err"] < 2e-2 and row["fwd_ratio"] > 0 and row["fwd_bwd_ratio"] > 0
    rows = summary["attention"]["rows"]
    assert {r["backend"] for r in rows} == {"pallas_gpu", "xla"}
    assert all(r["max_abs_diff_to_xla"] < 3e-2 and r["fwd_bwd_speedup"] > 0 for r in rows)


def test_without_gpu_says_so_and_exits_zero(capsys):
    if jax.default_backend() != "cpu":
        pytest.skip("this host has an accelerator")
    assert _load().main([]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "no GPU" in lines[0]
