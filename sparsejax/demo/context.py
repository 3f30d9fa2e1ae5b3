"""Shared state of the demo: the digits data, a small MLP, its training loop.

Every demo stage is a function ``run(ctx: DemoContext) -> dict`` that prints its own section
and returns JSON-able results. The context holds the data and the trained dense model so each
stage reuses them instead of training its own.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsejax._checks import is_concrete

Params = dict[str, Any]


def load_digits_split(seed: int = 0, test_fraction: float = 0.25):
    """Load scikit-learn's embedded 8x8 digits (no download) and split it.

    Returns:
        ``(x_train, y_train, x_test, y_test)``: float32 features in ``[0, 1]`` of shape ``[n, 64]``
        and int32 labels in ``[0, 10)``.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "sparsejax demo needs scikit-learn for its embedded data: "
            "pip install 'sparsejax[demo]'"
        ) from err
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def init_mlp(key: jax.Array, sizes: tuple[int, ...] = (64, 256, 256, 10)) -> Params:
    """He-initialised MLP params ``{"dense_i": {"kernel": [in, out], "bias": [out]}}`` (Flax layout).

    One program per ``sizes`` compiled at XLA level 1 (`fast_jit`): the same values as drawing
    each kernel eagerly, which compiles one normal sampler per kernel shape at the default level
    (2.5 s CPU for the default sizes against 0.9 s). Inside another ``jit`` it is traced inline
    (compiler options belong to the top-level program), fused into that program as before."""
    if is_concrete(key):
        return _init_mlp(key, tuple(sizes), True)
    return _init_mlp_params(key, tuple(sizes), False)


def _init_mlp_params(key: jax.Array, sizes: tuple[int, ...], eager_rounding: bool) -> Params:
    params = {}
    keys = jax.random.split(key, len(sizes) - 1)
    for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
        normal = jax.random.normal(k, (n_in, n_out), jnp.float32)
        if eager_rounding:  # the scaling stays out of the sampler's fusion, as when run eagerly
            normal = jax.lax.optimization_barrier(normal)
        kernel = normal * jnp.sqrt(2.0 / n_in)
        params[f"dense_{i}"] = {"kernel": kernel, "bias": jnp.zeros((n_out,), jnp.float32)}
    return params


def mlp_apply(params: Params, x: jax.Array, *, return_hidden: bool = False):
    """Forward pass: ReLU hidden layers, linear logits. ``return_hidden`` also returns the last
    hidden activations ``[batch, hidden]``."""
    n = len(params)
    h = x
    for i in range(n):
        layer = params[f"dense_{i}"]
        z = h @ layer["kernel"] + layer["bias"]
        if i < n - 1:
            h = jax.nn.relu(z)
        else:
            logits = z
    return (logits, h) if return_hidden else logits


def accuracy(apply_fn: Callable, params: Params, x: jax.Array, y: jax.Array) -> float:
    """Top-1 accuracy of ``apply_fn(params, x)`` against integer labels ``y``.

    The plain MLP (`mlp_apply`, every stage's dense and pruned models) runs as one compiled
    program; other forwards (often a fresh closure per call) run op by op."""
    if apply_fn is mlp_apply:
        return float(_mlp_accuracy(params, x, y))
    return float(_accuracy(apply_fn, params, x, y))


def _accuracy(apply_fn: Callable, params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(apply_fn(params, x), -1) == y)


_mlp_accuracy = jax.jit(functools.partial(_accuracy, mlp_apply))


def median_time(fn: Callable, *args, repeats: int = 5) -> float:
    """Median wall seconds of ``fn(*args)`` over ``repeats`` calls after one warm-up (compile) call."""
    import time

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def interleaved_rounds(timers: Sequence[Callable[[], float]], repeats: int) -> np.ndarray:
    """``[repeats, len(timers)]`` seconds: ``repeats`` rounds that each call every timer once, in
    order (round-robin, so load drift on a shared machine hits every timed program alike). Each
    timer runs its own (already compiled) program and returns the seconds it measured."""
    return np.asarray([[timer() for timer in timers] for _ in range(repeats)],
                      dtype=np.float64).reshape(repeats, len(timers))


def fast_jit(fn: Callable | None = None, *, enabled: bool = True, level: int = 1,
             **kwargs: Any) -> Callable:
    """``jax.jit`` for the demo's long training programs (scans of many steps), compiled at XLA's
    backend optimisation level 1 (instead of the default 2) without LLVM's expensive passes: their
    compile is most of a stage's CPU (the SSVI training scan: 14.1 s CPU -> 8.6 s, the same time
    per step; level 0 would make the step ~12x slower). ``level=0`` is for programs whose compile
    is nearly all of their cost (the peft stage's 100-step fine-tunes of the small MLP: SpIEL's
    drop-and-grow step 8.1 s -> 2.8 s of compile, the 100 steps a fraction of a second either
    way); it also turns off XLA's CPU fusion emitters and the split of LLVM's codegen into parallel
    parts (`_LEVEL0_OPTIONS`, as the test suite's flags do: the six peft fine-tunes 14.1 -> 8.3-9.0
    s CPU, the same values bit for bit) where this XLA knows those options. Unchanged when
    ``XLA_FLAGS`` already sets a level (the test suite's fast-compile flags).
    ``enabled=False``: plain ``jax.jit`` (the shared training helpers' ``fast_compile`` switch).
    Usable as ``@fast_jit`` or ``fast_jit(static_argnames=..., level=...)``."""
    if fn is None:
        return functools.partial(fast_jit, enabled=enabled, level=level, **kwargs)
    if enabled and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
        kwargs["compiler_options"] = {"xla_backend_optimization_level": level,
                                      "xla_llvm_disable_expensive_passes": True,
                                      **(_level0_options() if level == 0 else {})}
    return jax.jit(fn, **kwargs)


_LEVEL0_OPTIONS = {"xla_cpu_use_fusion_emitters": False, "xla_cpu_parallel_codegen_split_count": 1}
"""XLA options of `fast_jit`'s level 0 beyond the level: at that level the CPU fusion emitters and
the parallel codegen split cost more compile than they buy (the test suite's ``XLA_FLAGS`` set the
same)."""


@functools.cache
def _level0_options() -> dict[str, Any]:
    """`_LEVEL0_OPTIONS` if this XLA knows them (an unknown compiler option fails the compile: one
    tiny probe program per process), else none."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=_LEVEL0_OPTIONS).lower(
            jax.ShapeDtypeStruct((), jnp.float32)).compile()
    except Exception:  # an older XLA without one of the options
        return {}
    return dict(_LEVEL0_OPTIONS)


_init_mlp = fast_jit(_init_mlp_params, static_argnums=(1, 2))


def random_draw(kind: str, key: jax.Array, shape: tuple[int, ...], **kwargs: Any) -> jax.Array:
    """``jax.random.<kind>(key, shape, **kwargs)`` compiled at XLA level 1 (`fast_jit`): the same
    values as the eager call, whose sampler program compiles at the default level for every new
    shape (about 1 s CPU against 0.25 s for a ``[2048, 256]`` uniform draw). Not inside ``jit``."""
    return _draw(key, kind, tuple(shape), tuple(sorted(kwargs.items())))


def _draw_values(key: jax.Array, kind: str, shape: tuple[int, ...], kwargs: tuple) -> jax.Array:
    return getattr(jax.random, kind)(key, shape, **dict(kwargs))


_draw = fast_jit(_draw_values, static_argnums=(1, 2, 3))


@functools.lru_cache(maxsize=32)
def _train_chunk(apply_fn: Callable, learning_rate: float, batch_size: int) -> Callable:
    """A compiled run of ``length`` Adam steps (`jax.lax.scan`) per (model, learning rate, batch
    size), shared by every call of `train`: the batches are drawn inside the scan from the carried
    key, and the mask tree is an argument, so fine-tuning with a new mask of the same structure does
    not recompile."""
    from sparsejax.demo._masking import apply_masks_or_identity

    opt = optax.adam(learning_rate)

    @fast_jit(static_argnames="length")
    def chunk(params, state, key, x, y, masks, *, length):
        def loss_fn(p, xb, yb):
            return optax.softmax_cross_entropy_with_integer_labels(apply_fn(p, xb), yb).mean()

        def body(carry, _):
            params, state, key = carry
            key, sub = jax.random.split(key)
            idx = jax.random.choice(sub, x.shape[0], (min(batch_size, x.shape[0]),),
                                    replace=False)
            loss, grads = jax.value_and_grad(loss_fn)(params, x[idx], y[idx])
            grads = apply_masks_or_identity(grads, masks)
            updates, state = opt.update(grads, state, params)
            params = apply_masks_or_identity(optax.apply_updates(params, updates), masks)
            return (params, state, key), loss

        (params, state, key), losses = jax.lax.scan(body, (params, state, key), None,
                                                    length=length)
        return params, state, key, losses

    return chunk


def train(
    params: Params,
    x: jax.Array,
    y: jax.Array,
    *,
    steps: int,
    key: jax.Array,
    apply_fn: Callable = mlp_apply,
    masks: Any = None,
    learning_rate: float = 1e-3,
    batch_size: int = 128,
    progress: bool = True,
    desc: str = "train",
    chunk: int = 100,
) -> Params:
    """Adam on softmax cross-entropy; with ``masks`` (a mask tree) the masked-out weights are held at
    zero: gradients are masked and the params re-masked after each step.

    The steps run as compiled `jax.lax.scan` chunks of ``chunk`` steps (the progress bar moves per
    chunk), so a step costs its arithmetic, not a Python round trip.
    """
    from tqdm.auto import tqdm

    from sparsejax.demo._masking import apply_masks_or_identity

    opt = optax.adam(learning_rate)
    state = opt.init(params)
    params = apply_masks_or_identity(params, masks)
    run = _train_chunk(apply_fn, learning_rate, batch_size)
    x, y = jnp.asarray(x), jnp.asarray(y)
    with tqdm(total=steps, desc=desc, disable=not progress, leave=False) as bar:
        done = 0
        while done < steps:
            length = min(chunk, steps - done)
            params, state, key, losses = run(params, state, key, x, y, masks, length=length)
            done += length
            if progress:
                bar.update(length)
                bar.set_postfix(loss=f"{float(losses[-1]):.3f}", refresh=False)
    return params


@dataclasses.dataclass
class DemoContext:
    """What every demo stage receives.

    Attributes:
        x_train, y_train, x_test, y_test: the digits split (``[n, 64]`` float32, ``[n]`` int32).
        params: the trained dense MLP (Flax layout, kernels ``[in, out]``).
        dense_accuracy: its test accuracy.
        key: a PRNG key for the stage to split.
        steps: training steps for the dense model; fine-tuning stages use ``finetune_steps``.
        finetune_steps: steps for a stage's brief fine-tune.
        quick: tiny settings (used by the tests): stages should shrink their work.
        progress: show progress bars.
    """

    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    params: Params
    dense_accuracy: float
    key: jax.Array
    steps: int
    finetune_steps: int
    quick: bool = False
    progress: bool = True
    options: dict = dataclasses.field(default_factory=dict)

    def accuracy(self, params: Params, apply_fn: Callable = mlp_apply) -> float:
        """Test accuracy of ``params`` under ``apply_fn``."""
        return accuracy(apply_fn, params, self.x_test, self.y_test)

    def finetune(self, params: Params, masks: Any = None, *, steps: int | None = None,
                 desc: str = "finetune", apply_fn: Callable = mlp_apply) -> Params:
        """Briefly fine-tune ``params`` on the training split with ``masks`` held fixed."""
        self.key, sub = jax.random.split(self.key)
        return train(params, self.x_train, self.y_train,
                     steps=self.finetune_steps if steps is None else steps, key=sub,
                     apply_fn=apply_fn, masks=masks, progress=self.progress, desc=desc)

    def next_key(self) -> jax.Array:
        """A fresh PRNG key."""
        self.key, sub = jax.random.split(self.key)
        return sub


def make_context(*, seed: int = 0, steps: int = 1500, finetune_steps: int = 300,
                 quick: bool = False, progress: bool = True, options: dict | None = None
                 ) -> DemoContext:
    """Load the data and train the dense MLP that every stage starts from."""
    x_tr, y_tr, x_te, y_te = load_digits_split(seed)
    key = jax.random.PRNGKey(seed)
    key, k_init, k_train = jax.random.split(key, 3)
    params = init_mlp(k_init)
    params = train(params, jnp.asarray(x_tr), jnp.asarray(y_tr), steps=steps, key=k_train,
                   progress=progress, desc="dense")
    ctx = DemoContext(jnp.asarray(x_tr), jnp.asarray(y_tr), jnp.asarray(x_te), jnp.asarray(y_te),
                      params, 0.0, key, steps, finetune_steps, quick, progress, options or {})
    ctx.dense_accuracy = ctx.accuracy(params)
    return ctx
