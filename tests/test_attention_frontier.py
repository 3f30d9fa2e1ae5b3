"""Sparse-frontier methods: forced entries, exact budgets, NumPy restatements of each rule."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsejax.attention import BlockMask, attention
from sparsejax.attention import decode as D
from sparsejax.attention import prefill as P


def _rand(seed, b=1, h=4, hkv=2, lq=150, d=16):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, h, lq, d))
    k = rng.normal(size=(b, hkv, lq, d))
    return q, k


def _window_probs(q, k, w):
    """Causal softmax of the last w query rows over all keys (float64), one head: [w, L]."""
    lq, d = q.shape
    s = q[lq - w :] @ k.T / math.sqrt(d)
    qpos = np.arange(lq - w, lq)[:, None]
    s = np.where(np.arange(lq)[None, :] <= qpos, s, -np.inf)
    s = s - s.max(-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(-1, keepdims=True)


def _diag_sums(a, lq):
    w = a.shape[0]
    out = np.zeros(lq)
    for r in range(w):
        i = lq - w + r
        for j in range(i + 1):
            out[i - j] += a[r, j]
    return out


def _top(x, k):
    out = np.zeros(x.shape, bool)
    out[np.argsort(-x, kind="stable")[:k]] = True
    return out


@pytest.mark.parametrize("lq,vs,ss,lw", [(150, 20, 70, 32), (60, 512, 512, 256), (200, 8, 8, 200)])
def test_vertical_slash_lines(lq, vs, ss, lw):
    q, k = _rand(lq, lq=lq)
    v, s = P.vertical_slash_lines(
        jnp.asarray(q, jnp.float32),
        jnp.asarray(k, jnp.float32),
        vertical_size=vs,
        slash_size=ss,
        last_q=lw,
    )
    v, s = np.asarray(v), np.asarray(s)
    nv, ns, w = min(vs, lq), min(ss, lq), min(lw, lq)
    assert np.all(v.sum(-1) == nv) and np.all(s.sum(-1) == ns)
    assert v[..., : min(4, nv)].all()  # first 4 keys forced
    assert s[..., : min(64, ns)].all()  # 64 nearest diagonals forced
    for h in range(4):
        a = _window_probs(q[0, h], k[0, h // 2], w)
        vert = a.sum(0)
        vert[: min(4, nv)] = np.inf
        sl = _diag_sums(a, lq)
        sl[: min(64, ns)] = np.inf
        np.testing.assert_array_equal(v[0, h], _top(vert, nv))
        np.testing.assert_array_equal(s[0, h], _top(sl, ns))


def _minference_ref(vert, slash, lq, bs):
    """MInference's per-query-block coverage, restated: greedily merged slash ranges + columns."""
    out = np.zeros((lq, lq), bool)
    vcols = np.nonzero(vert)[0]
    for m in range(-(-lq // bs)):
        end = (m + 1) * bs
        ends = sorted(max(end - s, bs) for s in np.nonzero(slash)[0] if s < end)
        ranges = []
        for e in ends:
            if not ranges:
                ranges.append([e - bs, e])
            elif e > ranges[-1][1] + bs:
                ranges.append([e - bs, e])
            elif e > ranges[-1][1]:
                ranges[-1][1] += bs
        last_end = ranges[-1][1] if ranges else 0
        for i in range(m * bs, min(end, lq)):
            for a, b in ranges:
                out[i, a : min(b, i + 1)] = True
            for c in vcols:
                if c < last_end and c <= i:
                    out[i, c] = True
    return out


@settings(max_examples=10, deadline=None)
@given(st.sampled_from([37, 100]), st.integers(0, 10_000), st.sampled_from([8, 16]))
def test_minference_coverage_matches_restated_rule(lq, seed, bs):
    rng = np.random.default_rng(seed)
    vert = rng.random(lq) < 0.1
    slash = rng.random(lq) < 0.1
    slash[0] = True
    got = np.asarray(
        P.vertical_slash_tokens(jnp.asarray(vert), jnp.asarray(slash), block_size=bs)
    )
    np.testing.assert_array_equal(got, _minference_ref(vert, slash, lq, bs))
    # the conversion only ever adds keys to the exact pattern
    exact = np.asarray(
        P.vertical_slash_tokens(jnp.asarray(vert), jnp.asarray(slash), coverage="exact")
    )
    i, j = np.arange(lq)[:, None], np.arange(lq)[None, :]
    np.testing.assert_array_equal(
        exact, (j <= i) & (vert[None, :] | slash[np.clip(i - j, 0, None)])
    )
    assert np.all(got | ~exact)
    rows = jnp.array([lq - 1, 3])
    sub = P.vertical_slash_tokens(
        jnp.asarray(vert), jnp.asarray(slash), block_size=bs, rows=rows
    )
    np.testing.assert_array_equal(np.asarray(sub), got[[lq - 1, 3]])


def _block_kinds(dense, bs):
    """Block kinds of a dense [B, H, L, L] mask (from_dense is tested against loops elsewhere)."""
    return np.asarray(BlockMask.from_dense(np.asarray(dense), bs, bs).block_map)


@pytest.mark.parametrize("coverage", ["minference", "exact"])
def test_vertical_slash_mask_is_lazy_and_exact(coverage):
    """The mask holds lines (and per-block coverage), never an L x L array; its block map is
    exact on emptiness, FULL only where every token is kept; under jit it equals the tokens."""
    q, k = _rand(0, lq=48)
    q, k = jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32)
    sizes = dict(vertical_size=8, slash_size=8, last_q=16)
    fn = jax.jit(lambda q, k: P.vertical_slash_mask(q, k, coverage=coverage, block_size=16, **sizes))
    mask = fn(q, k)
    assert isinstance(mask.predicate, P.VerticalSlashTokens)
    assert all(x.shape[-2:] != (48, 48) for x in jax.tree_util.tree_leaves(mask))
    v, s = P.vertical_slash_lines(q, k, **sizes)
    tokens = np.asarray(P.vertical_slash_tokens(v, s, coverage=coverage, block_size=16))
    np.testing.assert_array_equal(np.asarray(mask.to_dense()), tokens)
    kinds, brute = np.asarray(mask.block_map), _block_kinds(tokens, 16)
    np.testing.assert_array_equal(kinds == 0, brute == 0)
    assert np.all(brute[kinds == 2] == 2)
    if coverage == "minference":  # the kernel evaluates the lazy predicate inside its tiles
        vv = jnp.asarray(np.random.default_rng(1).normal(size=(1, 2, 48, 16)), jnp.float32)
        # each side one compiled program (eager, every op of the tiled path compiled on its own)
        got = jax.jit(lambda q, k, v: attention(q, k, v, mask, backend="xla"))(q, k, vv)
        dense_mask = BlockMask.from_dense(tokens, 16, 16)
        ref = jax.jit(lambda q, k, v: attention(q, k, v, dense_mask, backend="reference"))(q, k, vv)
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
    else:
        flex = P.flexprefill_mask(q, k, min_budget=8, approximation_size=16, coverage=coverage,
                                  block_size=16)
        fv, fs = P.flexprefill_lines(q, k, min_budget=8, approximation_size=16)
        want = np.asarray(P.vertical_slash_tokens(fv, fs, coverage=coverage, block_size=16))
        np.testing.assert_array_equal(np.asarray(flex.to_dense()), want)
        np.testing.assert_array_equal(np.asarray(flex.block_map) == 0, _block_kinds(want, 16) == 0)


@pytest.mark.parametrize("alpha,min_budget", [(0.65, 8), (0.9, 4), (0.3, 100)])
def test_flexprefill_budgets(alpha, min_budget):
    lq = 120
    q, k = _rand(7, lq=lq)
    q[..., -40:, :] *= 3.0  # sharper last rows: budgets differ per head
    v, s = P.flexprefill_lines(
        jnp.asarray(q, jnp.float32),
        jnp.asarray(k, jnp.float32),
        alpha=alpha,
        approximation_size=64,
        min_budget=min_budget,
    )
    v, s = np.asarray(v), np.asarray(s)
    for h in range(4):
        a = _window_probs(q[0, h], k[0, h // 2], 64)
        vert = a.mean(0)
        sl = _diag_sums(a, lq) / 64
        for score, got, forced in ((vert, v[0, h], 4), (sl, s[0, h], 64)):
            c = np.cumsum(np.sort(score)[::-1])
            size = min(max(min_budget, int((c <= alpha).sum()) + 1), lq)
            assert got.sum() == size
            forced_score = score.copy()
            forced_score[:forced] = np.inf
            np.testing.assert_array_equal(got, _top(forced_score, size))
            assert got[: min(forced, size)].all()


def _pool(x, bs):
    lq = x.shape[0]
    nb = -(-lq // bs)
    x = np.pad(x, [(0, nb * bs - lq), (0, 0)])
    return x.reshape(nb, bs, -1).sum(1) / bs


@pytest.mark.parametrize("lq,bs,top_k", [(100, 16, 3), (100, 16, 4), (64, 8, 5), (40, 16, 64)])
def test_block_topk(lq, bs, top_k):
    q, k = _rand(lq + top_k, lq=lq)
    got = np.asarray(
        P.block_topk_blocks(
            jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32), block_size=bs, top_k=top_k
        )
    )
    nb = -(-lq // bs)
    m, n = np.arange(nb)[:, None], np.arange(nb)[None, :]
    assert np.all(got[..., n > m] == 0)
    assert np.all(got[..., np.arange(nb), np.arange(nb)])  # diagonal forced
    assert np.all(got[..., np.arange(1, nb), np.arange(nb - 1)])  # sub-diagonal forced
    assert np.all(got[..., 0])  # first block forced
    np.testing.assert_array_equal(
        got.sum(-1), np.broadcast_to(np.minimum(top_k, np.arange(nb) + 1), got.shape[:-1])
    )
    for h in range(4):
        p = _pool(q[0, h], bs) @ _pool(k[0, h // 2], bs).T
        p = np.where((n == m) | (n == m - 1) | (n == 0), np.inf, p)
        p = np.where(n <= m, p, -np.inf)
        for row in range(nb):
            np.testing.assert_array_equal(
                got[0, h, row], _top(p[row], min(top_k, nb)) & (n[0] <= row)
            )
    mask = P.block_topk_mask(
        jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32), block_size=bs, top_k=top_k
    )
    dense = np.asarray(mask.to_dense())
    i, j = np.arange(lq)[:, None], np.arange(lq)[None, :]
    np.testing.assert_array_equal(dense, got[:, :, i // bs, j // bs] & (j <= i))


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("lk", [200, 197])
def test_quest(share, lk):
    rng = np.random.default_rng(lk)
    q = rng.normal(size=(2, 4, 16))
    k = rng.normal(size=(2, 2, lk, 16))
    ps, budget = 8, 64
    got = np.asarray(
        D.quest_keep(
            jnp.asarray(q, jnp.float32),
            jnp.asarray(k, jnp.float32),
            page_size=ps,
            token_budget=budget,
            share_pages=share,
        )
    )
    cur = (lk - 1) // ps
    assert np.all(got.sum(-1) == budget + (lk - cur * ps))
    assert got[..., cur * ps :].all()  # current page kept
    for b in range(2):
        scores = np.zeros((4, cur))
        for h in range(4):
            pages = k[b, h // 2, : cur * ps].reshape(cur, ps, 16)
            lo, hi = pages.min(1), pages.max(1)
            scores[h] = np.maximum(q[b, h] * lo, q[b, h] * hi).sum(-1)
        if share:
            scores = np.repeat(scores.reshape(2, 2, cur).sum(1), 2, axis=0)
        for h in range(4):
            pages = _top(scores[h], budget // ps)
            np.testing.assert_array_equal(got[b, h, : cur * ps], np.repeat(pages, ps))
    if share:
        np.testing.assert_array_equal(got[:, 0], got[:, 1])
    short = D.quest_keep(
        jnp.asarray(q, jnp.float32),
        jnp.asarray(k[:, :, :60], jnp.float32),
        page_size=ps,
        token_budget=budget,
    )
    assert np.asarray(short).all()


def _snap_importance(q, k, w, kernel, mode):
    """[Hkv, L] pooled importance for one batch row."""
    h, hkv = q.shape[0], k.shape[0]
    g = h // hkv
    lq = q.shape[1]
    a = np.stack([_window_probs(q[i], k[i // g], w) for i in range(h)])  # [H, w, L]
    a = a.reshape(hkv, g, w, lq)
    imp = a.mean(1).sum(1) if mode == "mean" else a.max(2).max(1)
    pad = kernel // 2
    x = np.pad(imp, [(0, 0), (pad, pad)])
    return np.stack([x[:, t : t + kernel].sum(-1) / kernel for t in range(lq)], axis=-1)


def test_snapkv():
    q, k = _rand(11, b=2, lq=120)
    got = np.asarray(
        D.snapkv_keep(
            jnp.asarray(q, jnp.float32),
            jnp.asarray(k, jnp.float32),
            token_budget=40,
            window=24,
            kernel_size=7,
            local_window=16,
            prefix_tokens=4,
        )
    )
    assert got.shape == (2, 2, 120) and np.all(got.sum(-1) == 40)
    assert got[..., :4].all() and got[..., -16:].all()
    for b in range(2):
        imp = _snap_importance(q[b], k[b], 24, 7, "mean")
        imp[:, :4] = np.inf
        imp[:, -16:] = np.inf
        for h in range(2):
            np.testing.assert_array_equal(got[b, h], _top(imp[h], 40))
    # capacity above L keeps everything
    all_kept = D.snapkv_keep(
        jnp.asarray(q, jnp.float32),
        jnp.asarray(k, jnp.float32),
        token_budget=1024,
        window=24,
        kernel_size=7,
        local_window=16,
        prefix_tokens=4,
    )
    assert np.asarray(all_kept).all()


def test_ada_snapkv():
    q, k = _rand(12, b=2, h=8, hkv=4, lq=160)
    q[:, :4] *= 4.0  # make some heads peaky so budgets become uneven
    cap, local, prefix = 40, 8, 2
    got = np.asarray(
        D.ada_snapkv_keep(
            jnp.asarray(q, jnp.float32),
            jnp.asarray(k, jnp.float32),
            token_budget=cap,
            window=24,
            kernel_size=5,
            local_window=local,
            prefix_tokens=prefix,
            min_head_budget_ratio=0.5,
        )
    )
    m = max(int(cap * 0.5), local + prefix)
    assert np.all(got.sum((-1, -2)) == cap * 4)
    assert np.all(got.sum(-1) >= m)
    assert got[..., :prefix].all() and got[..., -local:].all()
    assert len(set(got.sum(-1).ravel().tolist())) > 1  # per-head budgets differ
    for b in range(2):
        imp = _snap_importance(q[b], k[b], 24, 5, "max")
        imp[:, :prefix] = np.inf
        imp[:, -local:] = np.inf
        sel = np.stack([_top(imp[h], m) for h in range(4)])
        rest = np.where(sel, -np.inf, imp).ravel()
        sel = sel | _top(rest, cap * 4 - m * 4).reshape(4, -1)
        np.testing.assert_array_equal(got[b], sel)


def test_errors():
    q = jnp.ones((1, 4, 64, 8))
    k = jnp.ones((1, 2, 64, 8))
    with pytest.raises(ValueError, match="multiple"):
        P.vertical_slash_lines(q, jnp.ones((1, 3, 64, 8)))
    with pytest.raises(ValueError, match=r"\[B, H, L, D\]"):
        P.vertical_slash_lines(q[0], k[0])
    with pytest.raises(ValueError, match="vertical_size"):
        P.vertical_slash_lines(q, k, vertical_size=0)
    with pytest.raises(ValueError, match="alpha"):
        P.flexprefill_lines(q, k, alpha=0.0)
    with pytest.raises(ValueError, match="top_k"):
        P.block_topk_blocks(q, k, top_k=2)
    with pytest.raises(ValueError, match="coverage"):
        P.vertical_slash_tokens(jnp.ones(8, bool), jnp.ones(8, bool), coverage="blocks")
    with pytest.raises(ValueError, match="divisible"):
        D.quest_keep(q[:, :, 0], k, page_size=16, token_budget=40)
    with pytest.raises(ValueError, match="must exceed"):
        D.snapkv_keep(
            q, k, token_budget=40, window=16, local_window=32, prefix_tokens=8, kernel_size=5
        )
    with pytest.raises(ValueError, match="odd"):
        D.snapkv_keep(q, k, token_budget=40, window=16, local_window=8, kernel_size=4)
    with pytest.raises(ValueError, match="window"):
        D.ada_snapkv_keep(q, k, token_budget=40, window=64, local_window=8, kernel_size=5)
    with pytest.raises(ValueError, match="token_budget"):
        D.ada_snapkv_keep(q, k, token_budget=100, window=16, local_window=8, kernel_size=5)


def test_bf16_inputs_keep_exact_budgets():
    q, k = _rand(5, lq=96)
    qb, kb = jnp.asarray(q, jnp.bfloat16), jnp.asarray(k, jnp.bfloat16)
    v, s = P.vertical_slash_lines(qb, kb, vertical_size=12, slash_size=20, last_q=16)
    assert np.all(np.asarray(v).sum(-1) == 12) and np.all(np.asarray(s).sum(-1) == 20)
    blocks = np.asarray(P.block_topk_blocks(qb, kb, block_size=16, top_k=3))
    assert np.all(blocks.sum(-1) == np.minimum(3, np.arange(6) + 1))
    keep = D.snapkv_keep(qb, kb, token_budget=40, window=16, kernel_size=5, local_window=8)
    assert np.all(np.asarray(keep).sum(-1) == 40)
    pages = D.quest_keep(qb[:, :, -1], kb, page_size=8, token_budget=32)
    assert np.all(np.asarray(pages).sum(-1) == 32 + 96 - 88)
