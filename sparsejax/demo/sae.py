"""Demo stage: sparse autoencoders on the demo MLP's last hidden activations.

Trains a TopK SAE (and a BatchTopK SAE with ``options["sae_batch_topk"]``) on the
256-wide last hidden layer of the trained digits MLP and reports FVU, L0, the dead-latent
fraction and how much of the test accuracy / cross-entropy survives splicing the reconstruction
into the network.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import optax

from sparsejax.demo._table import print_table
from sparsejax.demo.context import DemoContext, mlp_apply
from sparsejax.dictionary import sae as S


def run(ctx: DemoContext) -> dict:
    """Train SAEs on the MLP's last hidden activations and tabulate FVU, L0 and dead fraction."""
    _, h_train = mlp_apply(ctx.params, ctx.x_train, return_hidden=True)
    _, h_test = mlp_apply(ctx.params, ctx.x_test, return_hidden=True)
    head = ctx.params[f"dense_{len(ctx.params) - 1}"]

    def ce_from_hidden(h):
        logits = h @ head["kernel"] + head["bias"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, ctx.y_test).mean()

    d_in = h_train.shape[-1]
    d_sae = 2 * d_in
    steps = 40 if ctx.quick else int(ctx.options.get("sae_steps", 250))
    variants = [("topk", dict(activation="topk", k=16))]
    if ctx.options.get("sae_batch_topk", False):
        variants.append(("batch_topk", dict(activation="batch_topk", k=16)))
    rows = []
    for name, kwargs in variants:
        cfg = S.SAEConfig(d_in, d_sae, dead_tokens=10 * h_train.shape[0], **kwargs)
        t0 = time.perf_counter()
        result = S.train_sae(ctx.next_key(), h_train, cfg, steps=steps, batch_size=128,
                             learning_rate=1e-3, log_every=max(1, steps // 10),
                             progress=ctx.progress, desc=f"sae {name}")
        seconds = time.perf_counter() - t0
        threshold = result.state.threshold if cfg.activation == "batch_topk" else None

        @jax.jit
        def evaluate(params, state, threshold, cfg=cfg):
            recon, codes = S.forward(params, h_test, cfg, threshold=threshold)
            logits = recon @ head["kernel"] + head["bias"]
            return {"fvu": S.fvu(h_test, recon), "l0": S.l0(codes),
                    "dead_fraction": jnp.mean(S.dead_mask(state, cfg).astype(jnp.float32)),
                    "ce_loss_recovered": S.ce_loss_recovered(ce_from_hidden, h_test,
                                                             recon)["score"],
                    "accuracy_spliced": jnp.mean(jnp.argmax(logits, -1) == ctx.y_test)}

        metrics = {k: float(v) for k, v in evaluate(result.params, result.state,
                                                    threshold).items()}
        rows.append({"variant": name, "d_sae": d_sae, "k": cfg.k, **metrics,
                     "seconds": seconds, "train_fvu_last": float(result.history["fvu"][-1])})
    print_table(
        f"== sparse autoencoders on the MLP's last hidden activations ({d_in} -> {d_sae} latents) ==",
        ("sae", "latents", "k", "FVU", "L0", "dead", "CE recovered", "acc spliced", "s"),
        [(r["variant"], r["d_sae"], r["k"], r["fvu"], f"{r['l0']:.1f}", f"{r['dead_fraction']:.3f}",
          r["ce_loss_recovered"], r["accuracy_spliced"], f"{r['seconds']:.1f}") for r in rows],
        caption=f"dense test accuracy {ctx.dense_accuracy:.4f}; FVU and L0 on the test split; "
                "dead = latents silent for 10 epochs of training tokens")
    return {"d_in": d_in, "steps": steps, "saes": rows}


def plot(ax, result: dict, results: dict) -> None:
    """Fraction of variance unexplained and spliced accuracy of each SAE."""
    rows = result.get("saes", [])
    names = [r["variant"] for r in rows]
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["fvu"] for r in rows], 0.4, label="FVU (lower is better)")
    ax.bar([x + 0.2 for x in xs], [r["accuracy_spliced"] for r in rows], 0.4,
           label="accuracy with the SAE spliced in")
    ax.axhline(results["dense_accuracy"], color="gray", ls=":", label="dense accuracy")
    ax.set_xticks(list(xs), names)
    ax.set_ylim(0, 1.05)
    ax.set_title("sparse autoencoders")
