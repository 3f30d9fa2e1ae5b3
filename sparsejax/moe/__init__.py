"""Sparse mixture of experts: routers, auxiliary losses, dispatch and expert compute.

* routers (`sparsejax.moe.routing`, `sparsejax.moe.gates`): router logits -> `Routing`
  (Switch/GShard/Mixtral/Qwen softmax top-k, DeepSeek-V3 sigmoid group-limited top-k with
  aux-loss-free balancing, expert choice, COMET trees);
* auxiliary losses (`sparsejax.moe.losses`): Switch load balancing, router z-loss;
* `moe_ffn` (`sparsejax.moe.dispatch`): the expert feed-forward (two-matrix or gated experts)
  through a registered backend; `gmm` is its grouped matmul;
* the layer as pure functions (`sparsejax.moe.layer`): `MoEConfig`, `init_moe`, `moe_apply`
  (shared experts, padding masks, jitter);
* expert parallelism (`sparsejax.moe.parallel`).
"""

from sparsejax.moe.dispatch import (
    MOE_FFN_BACKENDS,
    block_diagonal_topology,
    dispatch_tensors,
    expert_buffers_ffn,
    moe_ffn,
)
from sparsejax.moe.gates import comet_gates, comet_init, comet_routing, smooth_step
from sparsejax.moe.gmm import gmm
from sparsejax.moe.layer import MoEAux, MoEConfig, init_moe, moe_apply
from sparsejax.moe.losses import load_balancing_loss, router_z_loss
from sparsejax.moe.parallel import expert_parallel_moe_ffn
from sparsejax.moe.routing import (
    CAPACITY_FORMULAS,
    Routing,
    expert_capacity,
    expert_choice_routing,
    jitter,
    router_scores,
    top_k_routing,
    update_expert_bias,
)

__all__ = [
    "CAPACITY_FORMULAS",
    "MOE_FFN_BACKENDS",
    "MoEAux",
    "MoEConfig",
    "Routing",
    "block_diagonal_topology",
    "comet_gates",
    "comet_init",
    "comet_routing",
    "dispatch_tensors",
    "expert_buffers_ffn",
    "expert_capacity",
    "expert_choice_routing",
    "expert_parallel_moe_ffn",
    "gmm",
    "init_moe",
    "jitter",
    "load_balancing_loss",
    "moe_apply",
    "moe_ffn",
    "router_scores",
    "router_z_loss",
    "smooth_step",
    "top_k_routing",
    "update_expert_bias",
]
