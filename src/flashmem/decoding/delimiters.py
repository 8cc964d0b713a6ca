"""MemGen's insertion rule as a vocabulary mask: which token ids end in ",", "." or a newline.

The rule is about text, not token ids: BPE vocabularies merge punctuation into longer tokens
(".\n", "),", " 3.", "Ċ" for a newline), so every id is decoded once and its text tested. The mask
is built over the whole vocabulary once per tokenizer and looked up per generated token for free.
"""
from __future__ import annotations

import torch

from ..errors import FlashmemError

DELIMITERS = (",", ".", "\n")
# Trailing spaces/tabs are ignored: a token ". " closes a sentence exactly as "." does (some
# SentencePiece vocabularies carry the space after the mark). Newlines are never stripped.
_IGNORED_TAIL = " \t"

# (id(tokenizer), vocab_size) -> (tokenizer, mask). Holding the tokenizer keeps its id from being
# reused by a different object, which is what makes id() a safe key.
_CACHE: dict[tuple[int, int], tuple[object, torch.Tensor]] = {}


def ends_with_delimiter(text: str) -> bool:
    return text.rstrip(_IGNORED_TAIL).endswith(DELIMITERS)


def delimiter_token_mask(tokenizer, vocab_size: int) -> torch.Tensor:
    """(vocab_size,) bool on the CPU: True where the decoded token ends with ',', '.' or a newline.

    Ids the tokenizer does not know (a model's vocabulary padded past the tokenizer) are False.
    Cached per tokenizer object; callers get a copy they may move or modify.
    """
    if tokenizer is None:
        raise FlashmemError(
            "the delimiter trigger (MemGen's insertion rule) needs a tokenizer: load the backbone with one"
        )
    if vocab_size < 1:
        raise FlashmemError(f"vocab_size must be >= 1, got {vocab_size}")
    key = (id(tokenizer), int(vocab_size))
    if key not in _CACHE:
        _CACHE[key] = (tokenizer, _build_mask(tokenizer, int(vocab_size)))
    return _CACHE[key][1].clone()


def _build_mask(tokenizer, vocab_size: int) -> torch.Tensor:
    known = min(vocab_size, _tokenizer_size(tokenizer))
    texts = _decode_each(tokenizer, range(known))
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[:known] = torch.tensor([ends_with_delimiter(t) for t in texts], dtype=torch.bool)
    return mask


def _tokenizer_size(tokenizer) -> int:
    # transformers tokenizers: len() counts added tokens; a raw `tokenizers.Tokenizer` has get_vocab_size.
    if hasattr(tokenizer, "__len__"):
        return len(tokenizer)
    return tokenizer.get_vocab_size(with_added_tokens=True)


def _decode_each(tokenizer, ids: range) -> list[str]:
    """Each id decoded alone, in one batched call (the Rust decoder does the whole vocabulary fast)."""
    singles = [[i] for i in ids]
    if hasattr(tokenizer, "batch_decode"):  # transformers
        # No clean-up: it rewrites " ," and " ." and could move what the text ends with.
        return tokenizer.batch_decode(singles, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if hasattr(tokenizer, "decode_batch"):  # tokenizers.Tokenizer
        return tokenizer.decode_batch(singles, skip_special_tokens=False)
    return [tokenizer.decode(s) for s in singles]
