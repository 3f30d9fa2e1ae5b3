"""Parity with the ``peft`` library's SHiRA (a sparse delta at a fixed support) given the same
indices and values: forward to 1e-6 and the merged weights (needs torch and peft: skipped
without them)."""

import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import peft

torch = pytest.importorskip("torch")
hf_peft = pytest.importorskip("peft")
if not hasattr(hf_peft, "ShiraConfig"):
    pytest.skip("this peft release has no SHiRA", allow_module_level=True)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # peft's custom-mask notices


def test_shira_forward_and_merge_match_peft():
    rng = np.random.default_rng(0)
    sizes = [(12, 10), (10, 6)]  # (in, out)
    r = 1
    masks = {}
    for din, dout in sizes:  # torch layout [out, in], r (in + out) entries as SHiRA sizes them
        m = np.zeros(dout * din, np.float32)
        m[rng.choice(dout * din, r * (din + dout), replace=False)] = 1.0
        masks[(dout, din)] = m.reshape(dout, din)

    def mask_fn(base_layer, r, **kwargs):
        return torch.from_numpy(masks[tuple(base_layer.weight.shape)])

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 10), torch.nn.Tanh(), torch.nn.Linear(10, 6))
    config = hf_peft.ShiraConfig(r=r, target_modules=["0", "2"], mask_type="custom")
    config.mask_fn = mask_fn
    shira = hf_peft.get_peft_model(model, config)
    layers = [shira.base_model.model[0], shira.base_model.model[2]]
    with torch.no_grad():
        for layer in layers:
            w = layer.shira_weight["default"]
            w.copy_(torch.from_numpy(rng.normal(size=w.shape).astype(np.float32)))
    x = rng.normal(size=(5, 12)).astype(np.float32)
    with torch.no_grad():
        want = shira(torch.from_numpy(x)).numpy()

    params, delta = {}, {}
    for name, layer in zip(("l0", "l2"), layers):
        base = layer.base_layer
        kernel = jnp.asarray(base.weight.detach().numpy().T)  # Flax [in, out]
        rows, cols = layer.shira_indices["default"].numpy()  # torch (out, in) pairs
        params[name] = {"kernel": kernel, "bias": jnp.asarray(base.bias.detach().numpy())}
        delta[name] = {"kernel": peft.SparseDelta(
            jnp.asarray(cols * kernel.shape[1] + rows, jnp.int32),
            jnp.asarray(layer.shira_weight["default"].detach().numpy()), None,
            tuple(kernel.shape)), "bias": None}
        # the same support as delta_from_masks builds from the transposed mask
        from_mask = peft.delta_from_masks({"k": kernel}, {"k": jnp.asarray(
            masks[tuple(base.weight.shape)].T > 0)})["k"]
        np.testing.assert_array_equal(np.sort(delta[name]["kernel"].indices), from_mask.indices)

    def forward(p):
        h = jnp.tanh(x @ p["l0"]["kernel"] + p["l0"]["bias"])
        return h @ p["l2"]["kernel"] + p["l2"]["bias"]

    got = forward(peft.apply(params, delta))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    merged, _ = peft.merge(params, delta)
    unloaded = shira.merge_and_unload()
    np.testing.assert_allclose(merged["l0"]["kernel"], unloaded[0].weight.detach().numpy().T,
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(merged["l2"]["kernel"], unloaded[2].weight.detach().numpy().T,
                               rtol=1e-6, atol=1e-6)
