"""MemGen's insertion rule as a vocabulary mask, on tiny tokenizers built in memory."""
import pytest
import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers import models as tk_models
from transformers import PreTrainedTokenizerFast

from flashmem.decoding import delimiters
from flashmem.decoding.delimiters import delimiter_token_mask
from flashmem.errors import FlashmemError

# token -> whether memory may follow it
CASES = {
    "<pad>": False, "a": False, ",": True, ".": True, "\n": True, "x.": True, "3,": True,
    ".\n": True, "),": True, " 3.": True, ". ": True, "\n  ": True, ".x": False, ",a": False,
    "...": True, "x": False, "\n\n": True, "3": False,
}


def word_tokenizer() -> Tokenizer:
    vocab = {tok: i for i, tok in enumerate(CASES)}
    tok = Tokenizer(tk_models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


def fast(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>")


def expected() -> torch.Tensor:
    return torch.tensor(list(CASES.values()))


@pytest.mark.parametrize("wrap", [fast, lambda t: t], ids=["transformers", "tokenizers"])
def test_each_token_is_judged_by_its_decoded_text(wrap):
    mask = delimiter_token_mask(wrap(word_tokenizer()), len(CASES))
    assert mask.dtype == torch.bool and mask.shape == (len(CASES),)
    wrong = [t for t, m, e in zip(CASES, mask.tolist(), expected().tolist()) if m != e]
    assert not wrong, f"misjudged tokens: {wrong!r}"


def test_byte_level_newline_counts():
    # GPT-2 style vocabularies spell a newline "Ċ": only decoding sees it.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(alphabet)}
    vocab["Ċ"] = vocab.get("Ċ", len(vocab))
    tok = Tokenizer(tk_models.BPE(vocab=vocab, merges=[]))
    tok.decoder = decoders.ByteLevel()
    mask = delimiter_token_mask(fast(tok), len(vocab))
    assert mask[vocab["Ċ"]] and mask[vocab["."]] and mask[vocab[","]]
    assert not mask[vocab["a"]] and not mask[vocab["Ġ"]]
    assert int(mask.sum()) == 3


def test_vocabulary_sizes_that_differ_from_the_tokenizer():
    tok = fast(word_tokenizer())
    padded = delimiter_token_mask(tok, len(CASES) + 10)  # model rows past the tokenizer: never delimiters
    assert torch.equal(padded[: len(CASES)], expected()) and not padded[len(CASES):].any()
    short = delimiter_token_mask(tok, 4)
    assert torch.equal(short, expected()[:4])


def test_built_once_per_tokenizer(monkeypatch):
    tok = fast(word_tokenizer())
    calls = []
    real = delimiters._decode_each
    monkeypatch.setattr(delimiters, "_decode_each", lambda t, ids: calls.append(1) or real(t, ids))
    first = delimiter_token_mask(tok, len(CASES))
    first[:] = False  # a caller's copy: changing it must not poison the cache
    second = delimiter_token_mask(tok, len(CASES))
    assert len(calls) == 1 and torch.equal(second, expected())
    delimiter_token_mask(fast(word_tokenizer()), len(CASES))  # another tokenizer object: its own entry
    assert len(calls) == 2


def test_no_tokenizer_is_a_clear_error():
    with pytest.raises(FlashmemError, match="needs a tokenizer"):
        delimiter_token_mask(None, 10)
