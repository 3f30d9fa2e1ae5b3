"""A minimal BERT WordPiece tokenizer (uncased), enough to feed the bundled MiniLM encoder.

It follows the Hugging Face ``BertNormalizer`` (clean text, spaces around CJK characters, lowercase,
strip accents), ``BertPreTokenizer`` (split on whitespace and punctuation) and the ``WordPiece`` model
(greedy longest match with ``##`` continuations, words over 100 characters become ``[UNK]``), then
adds ``[CLS]``/``[SEP]``. No dependency beyond numpy.
"""

from __future__ import annotations

import pathlib
import unicodedata
from collections.abc import Sequence

import numpy as np

__all__ = ["WordPiece"]


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def _normalize(text: str) -> str:
    out = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD:
            continue
        if ch in "\t\n\r" or unicodedata.category(ch) == "Zs":
            out.append(" ")
        elif unicodedata.category(ch).startswith("C"):
            continue
        elif _is_cjk(cp):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    text = unicodedata.normalize("NFD", "".join(out).lower())
    return "".join(ch for ch in text if unicodedata.category(ch) != "Mn")


def _pre_tokenize(text: str) -> list[str]:
    words = []
    for chunk in text.split():
        word = ""
        for ch in chunk:
            if _is_punctuation(ch):
                if word:
                    words.append(word)
                words.append(ch)
                word = ""
            else:
                word += ch
        if word:
            words.append(word)
    return words


class WordPiece:
    """Uncased BERT WordPiece over a ``vocab.txt`` (one token per line, id = line number).

    Args:
        vocab: path of ``vocab.txt``, or a list of tokens.
    """

    def __init__(self, vocab: str | pathlib.Path | Sequence[str]):
        if isinstance(vocab, str | pathlib.Path):
            vocab = pathlib.Path(vocab).read_text(encoding="utf-8").splitlines()
        self.vocab = {token: i for i, token in enumerate(vocab)}
        for special in ("[UNK]", "[CLS]", "[SEP]", "[PAD]"):
            if special not in self.vocab:
                raise ValueError(f"`vocab` must contain the token {special!r}; it does not.")
        self.unk, self.cls, self.sep, self.pad = (self.vocab[t] for t in
                                                  ("[UNK]", "[CLS]", "[SEP]", "[PAD]"))

    def _word(self, word: str) -> list[int]:
        if len(word) > 100:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            else:
                return [self.unk]
            start = end
        return ids

    def tokenize(self, text: str) -> list[int]:
        """Token ids of one text, without ``[CLS]``/``[SEP]``."""
        return [i for word in _pre_tokenize(_normalize(text)) for i in self._word(word)]

    def __call__(self, texts: Sequence[str], max_length: int = 256,
                 pad_to_multiple_of: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Batch of texts -> ``(input_ids, attention_mask)``, int32 ``[batch, width]``.

        Each row is ``[CLS] tokens [SEP]`` truncated to ``max_length`` (sentence-transformers'
        ``max_seq_length`` of all-MiniLM-L6-v2 is 256) and right-padded with ``[PAD]`` to the
        longest row rounded up to ``pad_to_multiple_of`` (fewer shapes, fewer ``jit`` compiles).
        """
        if isinstance(texts, str):
            raise TypeError("`texts` must be a sequence of strings; got a single str (wrap it in "
                            "a list).")
        rows = [[self.cls, *self.tokenize(t)[:max_length - 2], self.sep] for t in texts]
        width = -(-max(len(r) for r in rows) // pad_to_multiple_of) * pad_to_multiple_of
        ids = np.full((len(rows), width), self.pad, np.int32)
        mask = np.zeros((len(rows), width), np.int32)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = r
            mask[i, :len(r)] = 1
        return ids, mask
