"""``import sparsejax`` stays light: no Flax, Equinox, optax or models until used; the Equinox
adapters never import Flax."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import sparsejax
heavy = [m for m in ("flax", "equinox", "optax", "sparsejax.nn", "sparsejax.models",
                     "sparsejax.training") if m in sys.modules]
assert not heavy, heavy
import sparsejax.nn.eqx as E
for name in ("BlockSparseLinear", "NMLinear", "Masked", "SparseMultiHeadAttention", "MoE",
             "LISTA", "SparseAutoencoder", "to_sparse", "to_dense"):
    getattr(E, name)
assert "flax" not in sys.modules
assert sparsejax.BlockSparse.__name__ == "BlockSparse" and sparsejax.nn.Masked is not E.Masked
print("ok")
"""


def test_import_is_lazy_and_eqx_adapters_need_no_flax():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"
