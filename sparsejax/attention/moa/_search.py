"""MoA search: one elastic rule ``(alpha, beta)`` per head under a density budget.

Reference: thu-nics/MoA ``scripts/pipeline/elastic_generate.py``: candidate grid
``alpha in linspace(-L_min, L_prof, (L_prof + L_min) // 1024 + 1)``, ``beta in linspace(0, 1, 9)``,
one candidate per head, minimising the dropped influence summed over the profiled lengths subject
to a KV density budget at every constrained length. The reference solves this MILP with
Gurobi/CVXPY; here an exact dynamic program or a Lagrangian relaxation solves it. The search
scores a candidate with the same block layout `moa_blocks` produces at inference (the reference's
search approximates it by a BigBird band of ``int(alpha // 64 + beta * n_blocks)`` blocks plus one
global block).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sparsejax._checks import check_int
from sparsejax.attention.moa._pattern import moa_blocks
from sparsejax.attention.moa._rule import DEFAULT_RULE, MoARule, check_rule

__all__ = ["moa_candidates", "moa_search"]


def moa_candidates(
    profile_lengths: Sequence[int],
    extra_lengths: Sequence[int] = (),
    *,
    num_alphas: int | None = None,
    alpha_interval: int = 1024,
    num_betas: int = 9,
) -> tuple[np.ndarray, np.ndarray]:
    """The reference's elastic-rule candidate grid.

    ``alpha in linspace(-L_min, L_prof, num_alphas)`` (``num_alphas = (L_prof + L_min) //
    alpha_interval + 1`` by default) crossed with ``beta in linspace(0, 1, num_betas)``; a pair is
    kept when ``alpha + beta * L_prof <= L_prof``, ``alpha + beta * L_max <= L_max`` and
    ``alpha + beta * L_min > 0`` (``L_prof`` the longest profiled length, ``L_min``/``L_max`` over
    all lengths), then sorted stably by ``alpha + beta * L_max``.

    Args:
        profile_lengths: profiled lengths.
        extra_lengths: further lengths the rules must be valid for (e.g. longer budget lengths).
        num_alphas: number of alphas (default from ``alpha_interval``).
        alpha_interval: spacing used for the default ``num_alphas`` (1024).
        num_betas: number of betas (9).

    Returns:
        ``(alphas, betas)`` float64 numpy arrays ``[C]``.
    """
    prof = [
        check_int(x, "profile_lengths[i]", minimum=1)
        for x in profile_lengths
    ]
    if not prof:
        raise ValueError("`profile_lengths` must not be empty; got none.")
    extra = [
        check_int(x, "extra_lengths[i]", minimum=1)
        for x in extra_lengths
    ]
    all_len = prof + extra
    l_prof, l_max, l_min = max(prof), max(all_len), min(all_len)
    num_betas = check_int(num_betas, "num_betas", minimum=1)
    if num_alphas is None:
        num_alphas = (l_prof + l_min) // check_int(alpha_interval, "alpha_interval", minimum=1) + 1
    num_alphas = check_int(num_alphas, "num_alphas", minimum=1)
    alpha = np.linspace(-l_min, l_prof, num_alphas, dtype=np.float32).astype(np.float64)
    beta = np.linspace(0.0, 1.0, num_betas, dtype=np.float32).astype(np.float64)
    a, b = np.meshgrid(alpha, beta, indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    ok = (a + b * l_prof <= l_prof) & (a + b * l_max <= l_max) & (a + b * l_min > 0)
    a, b = a[ok], b[ok]
    order = np.argsort(a + b * l_max, kind="stable")
    return a[order], b[order]


def _candidate_tables(
    profiles: Mapping[int, np.ndarray],
    budget_lengths: Sequence[int],
    alphas: np.ndarray,
    betas: np.ndarray,
    rule: MoARule,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Loss [H, C] (summed over profiled lengths), integer KV-block cost [L, C] and nb [L]."""
    block_size = rule.block_size
    num_heads = next(iter(profiles.values())).shape[0]
    c = alphas.size
    loss = np.zeros((num_heads, c))
    for n, e in profiles.items():
        e = np.asarray(e, dtype=np.float64)
        nb = -(-n // block_size)
        if e.shape != (num_heads, nb, nb):
            raise ValueError(
                f"profiles[{n}] must have shape [H, nb, nb] = {(num_heads, nb, nb)}, got {e.shape}"
            )
        lay = moa_blocks(alphas, betas, n, rule=rule)  # [C, nb, nb]
        tril = np.tril(np.ones((nb, nb), dtype=bool))
        dropped = (~lay & tril[None]).reshape(c, -1).astype(np.float64)
        loss += e.reshape(num_heads, -1) @ dropped.T
    cost = np.zeros((len(budget_lengths), c), dtype=np.int64)
    nbs = np.zeros(len(budget_lengths), dtype=np.int64)
    for i, n in enumerate(budget_lengths):
        lay = moa_blocks(alphas, betas, n, rule=rule)
        cost[i] = lay.sum(-1).max(-1)  # KV blocks held (the reference's "kv" density x nb)
        nbs[i] = lay.shape[-1]
    return loss, cost, nbs


def _solve_exact(
    loss: np.ndarray, cost: np.ndarray, cap: np.ndarray, max_states: int
) -> np.ndarray:
    """Exact multiple-choice knapsack with vector costs: DP over Pareto-optimal partial states."""
    num_heads, _ = loss.shape
    min_cost = cost.min(axis=1)  # [L]
    # states: cost tuple -> (loss, choice list)
    states: dict[tuple, tuple[float, tuple]] = {tuple([0] * cost.shape[0]): (0.0, ())}
    for h in range(num_heads):
        remaining_min = min_cost * (num_heads - h - 1)
        new: dict[tuple, tuple[float, tuple]] = {}
        for used, (val, choice) in states.items():
            u = np.asarray(used)
            tot = u[:, None] + cost  # [L, C]
            ok = np.all(tot + remaining_min[:, None] <= cap[:, None], axis=0)
            for ci in np.nonzero(ok)[0]:
                key = tuple(tot[:, ci].tolist())
                v = val + loss[h, ci]
                if key not in new or v < new[key][0]:
                    new[key] = (v, choice + (int(ci),))
        if not new:
            raise ValueError("density_budget is infeasible: even the sparsest candidates exceed it")
        # Pareto pruning: drop states with both higher cost (componentwise) and higher loss.
        keys = sorted(new, key=lambda k: new[k][0])
        kept: list[tuple] = []
        for k in keys:
            ka = np.asarray(k)
            if any(np.all(np.asarray(o) <= ka) for o in kept):
                continue
            kept.append(k)
        if len(kept) > max_states:
            raise ValueError(
                f"solver='exact' exceeded max_states={max_states} Pareto states; "
                "use solver='lagrangian'"
            )
        states = {k: new[k] for k in kept}
    best = min(states.values(), key=lambda s: s[0])
    return np.asarray(best[1], dtype=np.int64)


def _solve_lagrangian(
    loss: np.ndarray, cost: np.ndarray, cap: np.ndarray, iters: int = 300
) -> np.ndarray:
    """Lagrangian relaxation (subgradient, one multiplier per budget) + repair/improve."""
    num_heads, _ = loss.shape
    scale = np.maximum(cap, 1).astype(np.float64)
    ncost = cost / scale[:, None]  # [L, C] normalised
    loss_scale = max(float(np.abs(loss).max()), 1e-30)
    lam = np.zeros(cost.shape[0])
    best, best_val = None, np.inf

    def value(ch):
        return float(loss[np.arange(num_heads), ch].sum())

    def feasible(ch):
        return np.all(cost[:, ch].sum(axis=1) <= cap)

    for t in range(iters):
        red = loss / loss_scale + lam @ ncost  # [H, C]
        ch = np.argmin(red, axis=1)
        if feasible(ch) and value(ch) < best_val:
            best, best_val = ch.copy(), value(ch)
        sub = ncost[:, ch].sum(axis=1) - cap / scale
        lam = np.maximum(0.0, lam + (1.0 / np.sqrt(t + 1.0)) * sub / max(num_heads, 1))
    if best is None:  # repair: move heads to cheaper candidates with the best loss/cost ratio
        ch = np.argmin(loss, axis=1)
        while not feasible(ch):
            over = cost[:, ch].sum(axis=1) - cap
            w = (over > 0).astype(np.float64) / scale
            best_r, move = -np.inf, None
            for h in range(num_heads):
                dc = (cost[:, ch[h], None] - cost) * w[:, None]  # saving per candidate
                saving = dc.sum(0)
                dl = loss[h] - loss[h, ch[h]]
                ratio = np.where(saving > 0, saving / (dl + 1e-12 * loss_scale), -np.inf)
                c = int(np.argmax(ratio))
                if ratio[c] > best_r:
                    best_r, move = ratio[c], (h, c)
            if move is None:
                raise ValueError(
                    "density_budget is infeasible: even the sparsest candidates exceed it"
                )
            ch[move[0]] = move[1]
        best = ch
    # greedy improvement: best feasible single-head switch until none improves
    ch = best.copy()
    used = cost[:, ch].sum(axis=1)
    improved = True
    while improved:
        improved = False
        gain_best, move = 0.0, None
        for h in range(num_heads):
            new_used = used[:, None] - cost[:, ch[h], None] + cost  # [L, C]
            ok = np.all(new_used <= cap[:, None], axis=0)
            gain = np.where(ok, loss[h, ch[h]] - loss[h], -np.inf)
            c = int(np.argmax(gain))
            if gain[c] > gain_best:
                gain_best, move = gain[c], (h, c)
        if move is not None:
            h, c = move
            used = used - cost[:, ch[h]] + cost[:, c]
            ch[h] = c
            improved = True
    return ch


def moa_search(
    profiles: Mapping[int, np.ndarray],
    density_budget: float | Mapping[int, float],
    *,
    budget_lengths: Sequence[int] | None = None,
    candidates: tuple[np.ndarray, np.ndarray] | None = None,
    solver: str = "auto",
    rule: MoARule = DEFAULT_RULE,
    max_states: int = 20000,
) -> dict[str, Any]:
    """Choose one elastic rule ``(alpha, beta)`` per head under a density budget.

    For head ``h`` and candidate ``c`` the dropped influence at profiled length ``N`` is the sum of
    ``profiles[N][h]`` over the causal blocks the candidate's layout (`moa_blocks` with
    ``rule.max_new_tokens`` set to 0) does not visit. The objective is the sum over profiled lengths; the
    constraint, at every budget length ``N``, is that the mean over heads of the KV density
    (KV blocks held / ``nb``, the reference's ``"kv"`` density) is at most the budget.

    Args:
        profiles: ``{N: [H, nb, nb]}`` block influences from `moa_profile`.
        density_budget: a density in ``(0, 1]`` for every budget length, or ``{N: density}``.
        budget_lengths: lengths to constrain (default: the profiled lengths, or the keys of a
            mapping budget).
        candidates: ``(alphas, betas)``; default `moa_candidates` of the lengths.
        solver: ``"exact"`` (dynamic program over Pareto-optimal integer block costs; exponential
            only in the worst case), ``"lagrangian"`` (subgradient on one multiplier per length,
            then greedy repair and improvement; always feasible, not always optimal) or ``"auto"``
            (exact, falling back to Lagrangian beyond ``max_states``).
        rule: The `MoARule` of the layouts (its ``max_new_tokens`` is replaced by 0); use the
            rule the profiles were pooled with.
        max_states: state limit of the exact solver.

    Returns:
        dict with ``alphas``/``betas`` (``[H]`` float arrays), ``choice`` (``[H]`` candidate
        indices), ``loss`` (dropped influence), ``density`` (``{N: mean KV density}``) and the
        ``candidates`` used.
    """
    if not isinstance(profiles, Mapping) or not profiles:
        raise ValueError("profiles must be a non-empty mapping {length: [H, nb, nb]}")
    if solver not in ("auto", "exact", "lagrangian"):
        raise ValueError(f"solver must be 'auto', 'exact' or 'lagrangian', got {solver!r}")
    if isinstance(density_budget, Mapping):
        budgets = {int(k): float(v) for k, v in density_budget.items()}
        if budget_lengths is None:
            budget_lengths = sorted(budgets)
    else:
        if budget_lengths is None:
            budget_lengths = sorted(profiles)
        budgets = {int(n): float(density_budget) for n in budget_lengths}
    budget_lengths = [int(n) for n in budget_lengths]
    for n in budget_lengths:
        if n not in budgets:
            raise ValueError(f"density_budget has no entry for budget length {n}")
        if not 0.0 < budgets[n] <= 1.0:
            raise ValueError(f"density_budget must be in (0, 1], got {budgets[n]} at length {n}")
    if candidates is None:
        extra = [n for n in budget_lengths if n not in profiles]
        candidates = moa_candidates(sorted(profiles), extra)
    alphas, betas = (np.asarray(c, dtype=np.float64) for c in candidates)
    if alphas.shape != betas.shape or alphas.ndim != 1 or alphas.size == 0:
        raise ValueError(
            f"candidates must be two equal-length non-empty 1-D arrays, got shapes {alphas.shape} "
            f"and {betas.shape} (for short lengths pass candidates=moa_candidates(lengths, "
            "alpha_interval=...) with an interval below the reference's 1024)"
        )
    rule = dataclasses.replace(check_rule(rule), max_new_tokens=0)
    loss, cost, nbs = _candidate_tables(profiles, budget_lengths, alphas, betas, rule)
    num_heads = loss.shape[0]
    cap = np.floor(np.asarray([budgets[n] for n in budget_lengths]) * nbs * num_heads + 1e-9)
    cap = cap.astype(np.int64)
    if np.any(cost.min(axis=1) * num_heads > cap):
        raise ValueError(
            f"density_budget {budgets} is infeasible: the sparsest candidate needs "
            f"{(cost.min(axis=1) / nbs).tolist()} per head at lengths {budget_lengths}"
        )
    if solver == "lagrangian":
        choice = _solve_lagrangian(loss, cost, cap)
    else:
        try:
            choice = _solve_exact(loss, cost, cap, max_states)
        except ValueError:
            if solver == "exact":
                raise
            choice = _solve_lagrangian(loss, cost, cap)
    dens = {
        n: float(cost[i, choice].sum() / (nbs[i] * num_heads)) for i, n in enumerate(budget_lengths)
    }
    return {
        "alphas": alphas[choice],
        "betas": betas[choice],
        "choice": choice,
        "loss": float(loss[np.arange(num_heads), choice].sum()),
        "density": dens,
        "candidates": (alphas, betas),
    }
