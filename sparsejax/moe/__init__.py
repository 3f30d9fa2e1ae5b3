"""Sparse mixture of experts: routers, auxiliary losses, dispatch and expert compute.

* routers (`sparsejax.moe.routing`, `sparsejax.moe.gates`): router logits -> `Routing`;
* auxiliary losses (`sparsejax.moe.losses`): Switch load balancing, router z-loss;
* `moe_ffn` (`sparsejax.moe.dispatch`): the expert feed-forward through the ``einsum``,
  ``ragged`` or ``block_sparse`` implementation; `gmm` is its grouped matmul.
"""

from sparsejax.moe.dispatch import IMPLEMENTATIONS, block_diagonal_topology, dispatch_tensors, moe_ffn
from sparsejax.moe.gates import comet_gates, comet_init, comet_routing, moex_logits, smooth_step
from sparsejax.moe.gmm import GMM_BACKENDS, gmm
from sparsejax.moe.layer import MoEAux, MoEConfig, init_moe, moe_apply
from sparsejax.moe.losses import load_balancing_loss, router_z_loss
from sparsejax.moe.parallel import expert_parallel_moe_ffn
from sparsejax.moe.routing import Routing, expert_capacity, expert_choice_routing, top_k_routing

__all__ = [
    "GMM_BACKENDS",
    "IMPLEMENTATIONS",
    "MoEAux",
    "MoEConfig",
    "Routing",
    "block_diagonal_topology",
    "comet_gates",
    "comet_init",
    "comet_routing",
    "dispatch_tensors",
    "expert_capacity",
    "expert_choice_routing",
    "expert_parallel_moe_ffn",
    "gmm",
    "init_moe",
    "load_balancing_loss",
    "moe_apply",
    "moe_ffn",
    "moex_logits",
    "router_z_loss",
    "smooth_step",
    "top_k_routing",
]
