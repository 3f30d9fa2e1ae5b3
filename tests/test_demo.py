"""The demo runs end to end with tiny settings and prints its table."""

import json

import pytest

from sparsejax.cli import main


def test_demo_quick(capsys, tmp_path):
    code = main(["demo", "--quick", "--no-progress", "--steps", "60", "--finetune-steps", "5",
                 "--stages", "pruning", "--sparsities", "0.5,0.9", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "dense model: test accuracy" in out
    assert "one-shot magnitude pruning" in out
    cells = [[c.strip() for c in line.strip("│┃ ").split("│")] for line in out.splitlines()
             if line.startswith("│")]
    assert [c[0] for c in cells] == ["dense", "unstructured", "unstructured", "2:4"]
    assert cells[3][5] == "yes"  # the N:M check column
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["stages"]["pruning"]["rows"]
    assert [r["sparsity"] for r in rows[1:3]] == [0.5, 0.9]
    assert rows[2]["density"] == pytest.approx(0.1, abs=1e-3)
    assert (tmp_path / "demo.png").stat().st_size > 1000


def test_demo_bad_arguments(capsys):
    assert main(["demo", "--stages", "nope"]) == 2
    assert "unknown stage" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--sparsities", "1.5"])
    assert main(["demo", "--steps", "0"]) == 2


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "sparsejax 0.1.0" in out and "backend cpu" in out


def test_fast_jit_sets_the_level_unless_xla_flags_do(monkeypatch):
    import jax
    import jax.numpy as jnp

    from sparsejax.demo import context

    seen = []
    real_jit = jax.jit
    monkeypatch.setattr(context.jax, "jit", lambda fn, **kw: seen.append(kw) or real_jit(fn, **kw))
    monkeypatch.setenv("XLA_FLAGS", "")
    f = context.fast_jit(lambda x: jnp.sin(x) * 2.0)
    assert seen[-1]["compiler_options"]["xla_backend_optimization_level"] == 1
    # XLA accepts the options (an unknown one raises at compile) and computes the same
    assert float(f(jnp.ones(3))[0]) == float(jnp.sin(1.0) * 2.0)
    h = context.fast_jit(level=0)(lambda x: jnp.sin(x) * 2.0)
    options = seen[-1]["compiler_options"]
    assert options["xla_backend_optimization_level"] == 0
    # level 0 adds the fusion-emitter and codegen-split options where this XLA knows them
    assert ({k: v for k, v in options.items() if k in context._LEVEL0_OPTIONS}
            == context._level0_options())
    assert float(h(jnp.ones(3))[0]) == float(jnp.sin(1.0) * 2.0)
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
    g = context.fast_jit(static_argnames="n")(lambda x, n: x * n)
    assert "compiler_options" not in seen[-1] and seen[-1]["static_argnames"] == "n"
    assert float(g(jnp.ones(2), n=3)[0]) == 3.0


def test_fast_jit_level0_drops_options_this_xla_does_not_know(monkeypatch):
    from sparsejax.demo import context

    monkeypatch.setattr(context, "_LEVEL0_OPTIONS", {"xla_no_such_option_for_the_test": True})
    context._level0_options.cache_clear()
    try:
        assert context._level0_options() == {}
    finally:
        monkeypatch.undo()
        context._level0_options.cache_clear()
    assert context._level0_options() == context._LEVEL0_OPTIONS
