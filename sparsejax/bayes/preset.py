"""`SSVIPreset`: the SSVI paper's training configuration in one object (`SSVI_CIFAR`).

The reference run (ljb121002/SSVI, ``scripts/ssvi_cifar.sh`` with the defaults of
``train_cifar.py``) differs from sparsejax's defaults in its prior, its initialisation, its KL
weight, its optimizer and in two subspace-update details. `SSVI_CIFAR` holds every one of those
values; its methods build the pieces::

    post = B.SSVI_CIFAR.init_posterior(key, params, dense="conv_init/*")  # first conv kept dense
    opt = B.SSVI_CIFAR.optimizer(steps_per_epoch=391)
    loss = ce + B.SSVI_CIFAR.kl_weight(state.count, 391) * B.kl_divergence(p, 0.005) / 50_000

See docs/bayes.md for the table of reference values against sparsejax's defaults.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int

from sparsejax import masks as _masks
from sparsejax._checks import check_int, check_sparsity
from sparsejax.bayes.posterior import Posterior
from sparsejax.bayes.transform import ssvi
from sparsejax.select import Where, select

__all__ = ["SSVI_CIFAR", "SSVIPreset"]

PyTree = Any


@dataclasses.dataclass(frozen=True)
class SSVIPreset:
    """One SSVI training configuration (defaults: the paper's CIFAR run, `SSVI_CIFAR`).

    Attributes:
        density: kept fraction of every sparse leaf (``--dense_allocation 0.1``).
        prior_sigma: prior ``N(0, prior_sigma^2)`` (``--prior_std 0.005``).
        mu_init_std: means drawn from ``N(0, mu_init_std^2)`` (``--posterior_mean_init (0, 0.01)``).
        sigma_init: ``(mean, std)``: ``sigma = |N(mean, std^2)|``, ``rho = log(expm1(sigma))``
            (``--posterior_std_init_mean 0.0006``, ``--posterior_std_init (., 0.0005)``).
        kl_scale: weight of ``KL / num_data`` in the loss (``--kl_scale 0.01``).
        kl_warmup_fraction: the KL weight ramps up per epoch over this fraction of training
            (``min(2 * epoch / epochs, 1)``, epochs counted from 1).
        learning_rate: SGD learning rate of the means and biases (``--lr 0.01`` in the script).
        std_learning_rate: SGD learning rate of ``rho`` (``--lr_std 0.01``).
        momentum: SGD momentum (``0.9``).
        weight_decay: coupled L2 on the means and biases, not on ``rho`` (``--wd 5e-4``).
        epochs: training epochs; the learning rate follows ``CosineAnnealingLR(T_max=epochs)``
            stepped once per epoch (``--epochs 200``).
        batch_size: ``128``.
        update_every: subspace-update period in steps (``--delta 100``).
        drop_fraction: initial drop fraction, cosine-decayed (``--alpha 0.3``).
        end_fraction: subspace updates stop at this fraction of training (``T_end = 0.75``).
        criterion: removal score (``--drop_criteria SNR_mean_abs``).
        regrow_dropped: a just-dropped entry may grow back at the same update (the reference's
            ``_rigl_step`` does).
    """

    density: float = 0.1
    prior_sigma: float = 0.005
    mu_init_std: float = 0.01
    sigma_init: tuple[float, float] = (6e-4, 5e-4)
    kl_scale: float = 0.01
    kl_warmup_fraction: float = 0.5
    learning_rate: float = 0.01
    std_learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epochs: int = 200
    batch_size: int = 128
    update_every: int = 100
    drop_fraction: float = 0.3
    end_fraction: float = 0.75
    criterion: str = "SNR_mean_abs"
    regrow_dropped: bool = True

    def init_posterior(self, key: jax.Array, params: PyTree, *, dense: Where = None,
                       where: Where = None) -> Posterior:
        """The reference's initial posterior over ``params``' shapes.

        Every selected leaf gets a uniformly random mask keeping ``density`` of its entries
        (``dense`` leaves: all of them; the reference keeps the first layer dense under its
        uniform allocation), means ``N(0, mu_init_std^2)`` and ``rho = log(expm1(|N(m, s^2)|))``
        on the mask (``0`` outside; ``|.|`` floored at ``1e-8`` where the reference redraws).
        Unselected leaves (biases) keep their value.

        Args:
            key: PRNG key.
            params: a pytree of float arrays (the values of selected leaves are not used).
            dense: selector (glob, callable ``(path, leaf) -> bool``) of selected leaves kept
                dense but Bayesian, e.g. the first convolution; ``None``: none.
            where: leaf selector (default: float arrays with ``ndim >= 2``).

        Returns:
            a `Posterior` mirroring ``params``.
        """
        check_sparsity(self.density, "density")
        chosen = select(where, tree=params)
        is_dense = (lambda path, leaf: False) if dense is None else select(dense, tree=params)
        leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
        keys = jax.random.split(key, max(len(leaves), 1))
        mean, std = self.sigma_init
        mu, rho, masks = [], [], []
        for k, (path, x) in zip(keys, leaves):
            if not chosen(path, x):
                mu.append(x), rho.append(None), masks.append(None)
                continue
            k_mask, k_mu, k_rho = jax.random.split(k, 3)
            m = (jnp.ones(x.shape, bool) if is_dense(path, x)
                 else _masks.random(k_mask, x.shape, 1.0 - self.density))
            sigma = jnp.maximum(jnp.abs(mean + std * jax.random.normal(k_rho, x.shape, x.dtype)),
                                1e-8)
            zero = jnp.zeros((), x.dtype)
            mu.append(jnp.where(m, self.mu_init_std * jax.random.normal(k_mu, x.shape, x.dtype),
                                zero))
            rho.append(jnp.where(m, jnp.log(jnp.expm1(sigma)), zero))
            masks.append(m)
        return Posterior(*(jax.tree.unflatten(treedef, t) for t in (mu, rho, masks)))

    def total_steps(self, steps_per_epoch: int) -> int:
        """``epochs * steps_per_epoch``."""
        return self.epochs * check_int(steps_per_epoch, "steps_per_epoch", minimum=1)

    def kl_weight(self, step: Int[Array, ""] | int, steps_per_epoch: int) -> Float[Array, ""]:
        """``kl_scale * min(epoch / (kl_warmup_fraction * epochs), 1)`` with ``epoch = step //
        steps_per_epoch + 1`` (the reference's per-epoch ramp); the loss is
        ``cross_entropy + kl_weight * KL / num_data``."""
        steps_per_epoch = check_int(steps_per_epoch, "steps_per_epoch", minimum=1)
        epoch = jnp.asarray(step, jnp.int32) // steps_per_epoch + 1
        ramp = epoch.astype(jnp.float32) / (self.kl_warmup_fraction * self.epochs)
        return jnp.float32(self.kl_scale) * jnp.minimum(ramp, 1.0)

    def optimizer(self, steps_per_epoch: int) -> optax.GradientTransformationExtraArgs:
        """`ssvi` around the reference's SGD, with its subspace-update settings.

        The inner optimizer is torch's ``SGD(momentum, weight_decay)`` with two parameter groups
        (means and biases: ``learning_rate`` and ``weight_decay``; ``rho``: ``std_learning_rate``,
        no decay) under ``CosineAnnealingLR(T_max=epochs)`` stepped per epoch. The cosine is keyed
        on the inner optimizer's step count, which (as the reference's ``optimizer.step``) does
        not advance at the subspace-update steps, so its epoch boundaries run late by one step
        per ``update_every`` (the reference steps its scheduler by data epochs).

        Args:
            steps_per_epoch: optimizer steps per epoch (``ceil(num_data / batch_size)``).

        Returns:
            the `ssvi` transform (``end_step = int(end_fraction * epochs * steps_per_epoch)``).
        """
        total = self.total_steps(steps_per_epoch)
        lr, epochs = self.learning_rate, self.epochs

        def means(packed):  # ssvi's inner params: (mu tree, (rho leaves...))
            return (jax.tree.map(lambda _: True, packed[0]), tuple(False for _ in packed[1]))

        def stds(packed):
            return (jax.tree.map(lambda _: False, packed[0]), tuple(True for _ in packed[1]))

        def neg_lr(count):
            epoch = (count // steps_per_epoch).astype(jnp.float32)
            return -lr * 0.5 * (1.0 + jnp.cos(jnp.float32(math.pi) * epoch / epochs))

        inner = optax.chain(
            optax.add_decayed_weights(self.weight_decay, mask=means),
            optax.trace(decay=self.momentum),
            optax.masked(optax.scale(self.std_learning_rate / lr), stds),
            optax.scale_by_schedule(neg_lr),
        )
        return ssvi(inner, end_step=max(int(self.end_fraction * total), 1),
                    update_every=self.update_every, drop_fraction=self.drop_fraction,
                    criterion=self.criterion, regrow_dropped=self.regrow_dropped)


SSVI_CIFAR = SSVIPreset()
"""The configuration of the SSVI paper's CIFAR runs (``scripts/ssvi_cifar.sh``): ResNet-18, 10%
density, 200 epochs of SGD at lr 0.01, batch 128."""
