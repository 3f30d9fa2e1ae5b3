"""SpIEL (`sparsejax.peft.spiel`) step by step against a float64 transcription of AlanAnsell/peft
``tuners/sft`` (``SftSelector`` with its gradient hooks, ``select_rigl``, ``select_sm3`` and the
``SftSM3`` row / column accumulators); the values' optimizer is plain SGD on both sides."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsejax import peft


class RefSft:
    """The reference's selection logic for one 2-D delta, transcribed to numpy float64."""

    def __init__(self, shape, indices, *, R, A, T, p0, algo, lr):
        self.shape, self.numel = shape, int(np.prod(shape))
        self.indices = np.array(indices, np.int64)
        self.values = np.zeros(len(indices))
        self.R, self.A, self.T, self.p0, self.algo, self.lr = R, A, T, p0, algo, lr
        self.completed, self.hook, self.scores = 0, False, None
        self.row, self.col = np.zeros(shape[0]), np.zeros(shape[1])
        self.begin_selection_phase()

    # --- the layer's backward with its weight-grad hook, and the optimizer step
    def train_step(self, dense_grad):
        if self.hook:
            self._hook(dense_grad.reshape(-1))
        g = dense_grad.reshape(-1)[self.indices]
        if self.algo == "sm3":  # SftSM3's accumulator update (sparse, 2-D branch)
            r, c = self.indices // self.shape[1], self.indices % self.shape[1]
            upd = np.minimum(self.row[r], self.col[c]) + g * g
            np.maximum.at(self.row, r, upd)
            np.maximum.at(self.col, c, upd)
        self.values = self.values - self.lr * g
        self.step()

    def _hook(self, grad):
        if self.scores is not None:
            ci, cg, cs, n = self.scores
            new = grad[ci]
            self.scores = (ci, cg + new, cs + new * new, n + 1)
        else:
            ci = np.argsort(-np.abs(grad), kind="stable")[: len(self.values)]
            self.scores = (ci, grad[ci], grad[ci] ** 2, np.ones(len(ci)))

    # --- SftSelector
    def step(self):
        self.completed += 1
        if (self.completed + 1) % self.R == 0:
            self.begin_selection_phase()
        if self.completed % self.R == self.A:
            self.end_selection_phase()

    def begin_selection_phase(self):
        if self.algo == "sm3":
            return
        self.scores, self.hook = None, True

    def end_selection_phase(self):
        if self.completed > self.T:
            return
        self.hook = False
        if self.completed == self.A:
            p = 1
        else:
            p = self.p0 * (1 - self.completed / self.T)
        self.select_rigl(p) if self.algo == "rigl" else self.select_sm3(p)
        self.scores = None

    def select_rigl(self, p):
        ci, cg, _, _ = self.scores
        n = int(len(self.values) * p)
        changing = np.argsort(np.abs(self.values), kind="stable")[:n]
        outgoing = self.indices[changing]
        is_out = np.zeros(self.numel, bool)
        is_out[outgoing] = True
        is_cur = np.zeros(self.numel, bool)
        is_cur[self.indices] = True
        remaining = is_cur & ~is_out
        valid = ~remaining[ci]
        ci, cg = ci[valid], cg[valid]
        best = np.argsort(-np.abs(cg), kind="stable")[: min(n, len(cg))]
        incoming = ci[best]
        is_in = np.zeros(self.numel, bool)
        is_in[incoming] = True
        changing = changing[~is_in[outgoing]]
        incoming = incoming[~is_out[incoming]]
        changing = changing[: len(incoming)]
        self.indices[changing] = incoming
        self.values[changing] = 0.0

    def select_sm3(self, p):
        n = int(len(self.values) * p)
        changing = np.argsort(np.abs(self.values), kind="stable")[:n]
        is_cur = np.zeros(self.numel, bool)
        is_cur[self.indices] = True
        est = np.outer(self.row, self.col).reshape(-1)[~is_cur]
        cand = np.arange(self.numel)[~is_cur]
        incoming = cand[np.argsort(-est, kind="stable")[:n]]
        self.indices[changing] = incoming
        self.values[changing] = 0.0

    def dense(self):
        out = np.zeros(self.numel)
        out[self.indices] = self.values
        return out.reshape(self.shape)


def _problem(steps, shape=(12, 10), batch=16, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=shape)
    xs = rng.normal(size=(steps, batch, shape[0]))
    ys = rng.normal(size=(steps, batch, shape[1]))
    return w, xs, ys


def _grad(w_eff, x, y):
    return x.T @ (x @ w_eff - y) / len(x)


@pytest.mark.parametrize("algo", ["rigl", "sm3"])
def test_spiel_matches_reference_step_by_step(algo):
    R, A, T, p0, lr, steps = 6, 2, 16, 0.5, 0.1, 18
    w, xs, ys = _problem(steps)
    base = {"w": jnp.asarray(w, jnp.float32)}
    delta = peft.sparse_delta(base, 0.1, where="w", key=jax.random.key(1))
    k = delta["w"].indices.shape[0]
    ref = RefSft(w.shape, np.asarray(delta["w"].indices), R=R, A=A, T=T, p0=p0, algo=algo,
                 lr=lr)
    tx = peft.spiel(optax.sgd(lr), total_steps=T, reselect_every=R, accumulate_steps=A,
                    initial_rate=p0, regrow="grad" if algo == "rigl" else "sm3")
    state = tx.init(delta)

    @jax.jit
    def step(delta, state, x, y):
        g = {"w": jnp.asarray(x).T @ (x @ peft.apply(base, delta)["w"] - y) / x.shape[0]}
        upd, state = tx.update(g, state, delta)
        return optax.apply_updates(delta, upd), state

    moved_total = 0
    for t in range(steps):
        ref.train_step(_grad(w + ref.dense(), xs[t], ys[t]))
        before = set(np.asarray(delta["w"].indices).tolist())
        delta, state = step(delta, state, jnp.float32(xs[t]), jnp.float32(ys[t]))
        idx = np.asarray(delta["w"].indices)
        assert len(set(idx.tolist())) == k  # the budget: k distinct entries
        assert set(idx.tolist()) == set(ref.indices.tolist()), t
        moved_total += len(before - set(idx.tolist()))
        np.testing.assert_allclose(np.asarray(peft.dense(delta, base)["w"]), ref.dense(),
                                   rtol=1e-4, atol=1e-6)
    assert moved_total > k  # the support really moved (the first reselection replaces it all)


def test_spiel_schedule_and_errors():
    assert float(peft.spiel_fraction(5, total_steps=100, accumulate_steps=5,
                                     initial_rate=0.2)) == 1.0
    np.testing.assert_allclose(float(peft.spiel_fraction(25, total_steps=100, accumulate_steps=5,
                                                         initial_rate=0.2)), 0.2 * 0.75)
    with pytest.raises(ValueError, match="accumulate_steps"):
        peft.spiel(optax.sgd(1.0), total_steps=10, reselect_every=5, accumulate_steps=5)
    with pytest.raises(ValueError, match="regrow"):
        peft.spiel(optax.sgd(1.0), total_steps=10, regrow="magnitude")
    base = {"w": jnp.ones((2, 3, 4))}
    delta = peft.sparse_delta(base, 0.5, where="w", key=jax.random.key(0))
    with pytest.raises(ValueError, match="2-D"):
        peft.spiel(optax.sgd(1.0), total_steps=10, regrow="sm3").init(delta)


def test_spiel_optimizer_state_is_proportional_to_the_budget():
    base = {"w": jnp.ones((64, 32)), "b": jnp.ones((32,))}
    delta = peft.sparse_delta(base, 0.05, where="w", key=jax.random.key(0))
    k = peft.delta_size(delta)
    state = peft.spiel(optax.adam(1e-3), total_steps=10).init(delta)
    sizes = sum(x.size for x in jax.tree.leaves(state.inner_state))
    assert sizes == 2 * k + 1  # adam's mu and nu over the k values, and its count
