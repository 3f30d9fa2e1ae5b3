"""Calibration and application through the ``tap`` hook of `sparsejax.oneshot.prune_model`.

A model written for one-shot pruning passes the input of every linear layer through
``tap(name, x, where=None) -> x`` (``forward_fn(params, batch, tap)``; `sparsejax.models.embed`
does). The same hook serves activation sparsity:

* `collect_inputs` runs ``forward_fn`` on calibration batches and returns, per layer name, the
  tapped inputs of the real tokens (``where`` drops padding), ready for `calibrate_thresholds`;
* `threshold_tap` returns a ``tap`` that applies `sparsify` with per-layer thresholds (TEAL);
* `sparsejax.activation.rsparse_tap` does the same for R-Sparse.

Layers without a threshold pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax._checks import check_callable, check_choice
from sparsejax.activation.thresholds import PREFILL_RULES, teal_sparsify

__all__ = ["collect_inputs", "threshold_tap"]

Tap = Callable[..., jax.Array]


def collect_inputs(
    forward_fn: Callable[[Any, Any, Tap], Any],
    params: Any,
    batches: Iterable[Any],
    names: Iterable[str] | None = None,
) -> dict[str, np.ndarray]:
    """The inputs of the tapped linear layers on calibration data, real tokens only.

    Args:
        forward_fn: ``(params, batch, tap) -> anything``; calls ``tap(name, x, where=None)`` with
            the input ``x [..., features]`` of every linear layer (``where [...]``: bool mask of
            the real tokens, ``None``: all).
        params: model parameters.
        batches: iterable of calibration batches.
        names: layers to collect (default: every tapped layer).

    Returns:
        ``{name: float32 array [tokens, features]}`` in tap order (tokens of all batches).

    Raises:
        TypeError: ``forward_fn`` not callable.
        ValueError: no batch, or a requested name never tapped.
    """
    check_callable(forward_fn, "forward_fn")
    wanted = None if names is None else list(names)

    @jax.jit
    def run(params, batch):
        seen: dict[str, tuple] = {}

        def tap(name, x, where=None):
            if wanted is None or name in wanted:
                w = jnp.ones(x.shape[:-1], bool) if where is None else jnp.asarray(where, bool)
                seen[name] = (x, jnp.broadcast_to(w, x.shape[:-1]))
            return x

        forward_fn(params, batch, tap)
        return seen

    out: dict[str, list] = {}
    n_batches = 0
    for batch in batches:
        n_batches += 1
        for name, (x, w) in run(params, batch).items():
            x, w = np.asarray(x, np.float32), np.asarray(w, bool)
            out.setdefault(name, []).append(x.reshape(-1, x.shape[-1])[w.reshape(-1)])
    if n_batches == 0:
        raise ValueError("`batches` must hold at least one batch; got none.")
    if wanted is not None:
        missing = [n for n in wanted if n not in out]
        if missing:
            raise ValueError(f"`names` must be layers passed to `tap` by `forward_fn`; got "
                             f"{missing} never tapped.")
    if not out:
        raise ValueError("`forward_fn` must pass at least one layer input to `tap`; got none.")
    return {name: np.concatenate(parts) for name, parts in out.items()}


def threshold_tap(thresholds: Mapping[str, Any], *, prefill: str = "all") -> Tap:
    """A ``tap`` that sparsifies each listed layer's input: ``sparsify(x, thresholds[name])``.

    Args:
        thresholds: ``{layer name: tau}`` (scalars or ``[features]`` arrays); other layers pass
            through.
        prefill: ``"all"`` (every token, the default), or TEAL's prompt rule ``"half"`` /
            ``"none"`` of `teal_sparsify` for inputs ``[..., seq, features]`` of a causal model.

    Returns:
        ``tap(name, x, where=None) -> x`` for ``forward_fn(params, batch, tap)``.

    Raises:
        ValueError: unknown ``prefill``.
    """
    thresholds = dict(thresholds)
    check_choice(prefill, "prefill", PREFILL_RULES)

    def tap(name, x, where=None):
        del where
        if name not in thresholds:
            return x
        return teal_sparsify(x, thresholds[name], prefill=prefill)

    return tap
