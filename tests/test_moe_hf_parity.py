"""Parity with the MoE blocks of Hugging Face ``transformers`` (Mixtral, Qwen2-MoE with a shared
expert, DeepSeek-V3 with group-limited sigmoid routing) on small random float32 configurations.

Skips cleanly without ``torch`` / ``transformers`` (they are never sparsejax dependencies)."""

import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import moe

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

T, D, F, E = 20, 16, 24, 8


def _t2j(t):
    return jnp.asarray(t.detach().numpy())


def _init(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


def _experts(experts):
    """transformers' fused ``gate_up_proj [E, 2F, d]`` / ``down_proj [E, d, F]`` -> w1, w3, w2."""
    gate_up = experts.gate_up_proj.detach()
    f = gate_up.shape[1] // 2
    return {"w1": _t2j(gate_up[:, :f].transpose(1, 2)), "w3": _t2j(gate_up[:, f:].transpose(1, 2)),
            "w2": _t2j(experts.down_proj.detach().transpose(1, 2))}


def _mlp(mlp):
    return {"w1": _t2j(mlp.gate_proj.weight.T), "w3": _t2j(mlp.up_proj.weight.T),
            "w2": _t2j(mlp.down_proj.weight.T)}


def _run(block, params, cfg, seed):
    x = torch.randn(2, T // 2, D, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        want = block(x)
        want = want[0] if isinstance(want, tuple) else want
    y, _ = moe.moe_apply(params, _t2j(x), cfg)
    return np.asarray(y), want.numpy()


@pytest.mark.parametrize("backend", ["einsum", "ragged_xla"])
def test_mixtral_block(backend):
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    hf = MixtralConfig(hidden_size=D, intermediate_size=F, num_local_experts=E,
                       num_experts_per_tok=2)
    block = _init(MixtralSparseMoeBlock(hf).eval(), 0)
    cfg = moe.MoEConfig.mixtral(D, F, E, 2, backend=backend)
    params = {"router": _t2j(block.gate.weight.T), **_experts(block.experts)}
    y, want = _run(block, params, cfg, 1)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm", [False, True])
def test_qwen2_moe_block_with_shared_expert(norm):
    from transformers import Qwen2MoeConfig
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

    hf = Qwen2MoeConfig(hidden_size=D, moe_intermediate_size=F, num_experts=E,
                        num_experts_per_tok=4, shared_expert_intermediate_size=32,
                        norm_topk_prob=norm)
    block = _init(Qwen2MoeSparseMoeBlock(hf).eval(), 2)
    cfg = moe.MoEConfig.qwen2_moe(D, F, E, 4, shared_d_ff=32, norm_topk_prob=norm,
                                  backend="ragged_xla")
    shared = {**_mlp(block.shared_expert), "gate": _t2j(block.shared_expert_gate.weight.T)}
    params = {"router": _t2j(block.gate.weight.T), **_experts(block.experts), "shared": shared}
    y, want = _run(block, params, cfg, 3)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_deepseek_v3_block_group_limited_sigmoid():
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    hf = DeepseekV3Config(hidden_size=D, moe_intermediate_size=F, n_routed_experts=E,
                          num_experts_per_tok=3, n_group=4, topk_group=2, n_shared_experts=2,
                          routed_scaling_factor=2.5, norm_topk_prob=True)
    block = _init(DeepseekV3MoE(hf).eval(), 4)
    with torch.no_grad():  # a nonzero aux-loss-free bias (a buffer, not a parameter)
        block.gate.e_score_correction_bias.copy_(torch.linspace(-0.5, 0.5, E))
    cfg = moe.MoEConfig.deepseek_v3(D, F, E, 3, num_groups=4, top_groups=2,
                                    routed_scaling_factor=2.5, num_shared_experts=2,
                                    backend="ragged_xla")
    params = {"router": _t2j(block.gate.weight.T), **_experts(block.experts),
              "expert_bias": _t2j(block.gate.e_score_correction_bias),
              "shared": _mlp(block.shared_experts)}
    y, want = _run(block, params, cfg, 5)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
