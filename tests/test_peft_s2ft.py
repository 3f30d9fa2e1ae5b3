"""S2FT (`sparsejax.peft.s2ft`): co-permutation keeps the model's function, the slice's gradients
are the matching rows / columns of a full fine-tune's gradients, and the step never forms a
frozen kernel's gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import models
from sparsejax.peft import s2ft

CFG = models.BertConfig(vocab_size=40, hidden=16, layers=1, heads=4, intermediate=24,
                        max_position=12)
CFG2 = models.BertConfig(vocab_size=40, hidden=16, layers=2, heads=4, intermediate=24,
                         max_position=12)
SEL = {"v": [[1, 3]], "o": [[3]], "u": [[5, 7, 20]], "d": [[7, 2]]}


@pytest.fixture(scope="module")
def setup():
    params = models.init_params(jax.random.key(0), CFG)
    ids = jax.random.randint(jax.random.key(1), (3, 7), 0, CFG.vocab_size)
    mask = jnp.ones((3, 7), jnp.int32).at[0, 5:].set(0)
    return params, ids, mask


@jax.jit
def _encode(p, ids, mask):
    return models.encode(p, ids, mask, CFG)


def _loss(p, ids, mask):
    return jnp.sum(jnp.sin(models.encode(p, ids, mask, CFG)))


def test_coupled_order_matches_reference_layout():
    order, first, second = s2ft.coupled_order([1, 3, 4], [3, 0], 6)
    # only_first [1, 4], both [3], only_second [0], rest [2, 5]
    assert order.tolist() == [1, 4, 3, 0, 2, 5]
    assert first == (0, 3) and second == (2, 4)
    with pytest.raises(ValueError, match="first"):
        s2ft.coupled_order([1, 1], [], 6)


def test_permutation_keeps_function_and_slices_are_where_expected(setup):
    params, ids, mask = setup
    s2p = s2ft.s2ft_bert(params, CFG, SEL)
    ref = _encode(params, ids, mask)
    np.testing.assert_allclose(_encode(s2p, ids, mask), ref, rtol=1e-5, atol=1e-5)
    hd = CFG.hidden // CFG.heads
    lp = s2p["layers"][0]
    assert (lp["value"]["kernel"].axis, lp["value"]["kernel"].start) == (1, 0)
    assert lp["value"]["kernel"].values.shape == (16, 2 * hd)  # heads 1 (v only) and 3 (v & o)
    assert (lp["attn_out"]["kernel"].start, lp["attn_out"]["kernel"].values.shape) == (hd, (hd, 16))
    # the permuted value kernel's first head is the original head 1
    np.testing.assert_array_equal(lp["value"]["kernel"].base[:, :hd],
                                  params["layers"][0]["value"]["kernel"][:, hd:2 * hd])
    empty = s2ft.s2ft_bert(params, CFG, {**SEL, "d": [[]]})["layers"][0]["ffn_out"]["kernel"]
    assert not isinstance(empty, s2ft.S2Kernel)  # an empty selection stays a plain kernel
    assert s2ft.trainable_count(s2p) == sum(v.size for v in s2ft.values(s2p))


def test_slice_gradients_equal_full_gradient_rows(setup):
    params, ids, mask = setup
    s2p = s2ft.s2ft_bert(params, CFG, SEL)
    key = jax.random.key(2)
    vals = [0.1 * jax.random.normal(k, v.shape) for k, v in
            zip(jax.random.split(key, len(s2ft.values(s2p))), s2ft.values(s2p))]
    s2p = s2ft.with_values(s2p, vals)
    g_s2 = jax.jit(jax.grad(lambda v: _loss(s2ft.with_values(s2p, v), ids, mask)))(vals)
    merged = s2ft.merge(s2p)
    np.testing.assert_allclose(_encode(merged, ids, mask),
                               _encode(s2p, ids, mask), rtol=1e-5, atol=1e-5)
    g_full = jax.jit(jax.grad(_loss))(merged, ids, mask)
    kernels = [(i, n) for i, lp in enumerate(s2p["layers"]) for n in lp
               if isinstance(lp[n].get("kernel") if isinstance(lp[n], dict) else None,
                             s2ft.S2Kernel)]
    flat = [k for k in jax.tree.leaves(s2p, is_leaf=lambda x: isinstance(x, s2ft.S2Kernel))
            if isinstance(k, s2ft.S2Kernel)]
    assert len(kernels) == len(flat) == len(g_s2)
    for (i, n), k, g in zip(kernels, flat, g_s2):
        full = g_full["layers"][i][n]["kernel"]
        m = k.values.shape[k.axis]
        want = full[:, k.start:k.start + m] if k.axis == 1 else full[k.start:k.start + m]
        np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-6)


def test_step_forms_no_frozen_kernel_gradient(setup):
    params, ids, mask = setup
    s2p = s2ft.s2ft_bert(params, CFG, SEL)
    vals = s2ft.values(s2p)
    jaxpr = jax.make_jaxpr(jax.grad(lambda v: _loss(s2ft.with_values(s2p, v), ids, mask)))(vals)
    full_shapes = {(16, 16), (16, 24), (24, 16)}

    def dots(jx):
        for eqn in jx.eqns:
            if eqn.primitive.name == "dot_general":
                yield tuple(eqn.outvars[0].aval.shape)
            for sub in jax.core.jaxprs_in_params(eqn.params):
                yield from dots(sub)

    shapes = list(dots(jaxpr.jaxpr))
    assert shapes and not full_shapes & set(shapes)
    # while a full fine-tune's gradient forms them
    full = jax.make_jaxpr(jax.grad(_loss))(params, ids, mask)
    assert full_shapes <= set(dots(full.jaxpr))


def test_select_units_criteria_and_errors():
    params = models.init_params(jax.random.key(0), CFG2)
    scores = np.array([0.3, 2.0, -1.0, 5.0, 0.0])
    assert s2ft.select_units(5, 2, criterion="activation", scores=scores).tolist() == [1, 3]
    r = s2ft.select_units(5, 3, key=jax.random.key(0))
    assert len(set(r.tolist())) == 3 and r.tolist() == sorted(r.tolist())
    sel = s2ft.select_bert(params, CFG2, v_ratio=0.25, d_ratio=0.1, criterion="weight")
    assert sum(map(len, sel["v"])) == 2 and sum(map(len, sel["d"])) == 4
    norms = [np.linalg.norm(np.asarray(params["layers"][i]["value"]["kernel"])
                            .reshape(16, 4, 4), axis=(0, 2)) for i in range(2)]
    flat = np.concatenate(norms)
    top = set(np.argsort(-flat)[:2].tolist())
    assert {i * 4 + h for i in range(2) for h in sel["v"][i]} == top
    with pytest.raises(ValueError, match="count"):
        s2ft.select_units(3, 4, key=jax.random.key(0))
    with pytest.raises(ValueError, match="criterion"):
        s2ft.select_units(3, 1, criterion="l1")
    with pytest.raises(ValueError, match="key"):
        s2ft.select_units(3, 1)


def test_demo_stage_is_registered():
    from sparsejax.demo import STAGES

    assert STAGES["peft"] == "sparsejax.demo.peft"


@pytest.mark.slow
def test_demo_stage_quick(capsys):
    from sparsejax.demo import make_context
    from sparsejax.demo.peft import METHODS, run

    ctx = make_context(steps=100, finetune_steps=60, quick=True, progress=False)
    result = run(ctx)
    assert "sparse fine-tuning" in capsys.readouterr().out
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == list(METHODS)
    lora = rows["LoRA r=2"]["trainable"]
    assert abs(rows["SpIEL"]["trainable"] - lora) <= 1  # equal budgets
    assert rows["full fine-tune"]["accuracy"] > rows["pretrained (no tuning)"]["accuracy"]
