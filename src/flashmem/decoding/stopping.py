"""Stop strings: a row of a batch finishes once its decoded continuation contains one of them.

Evaluation harnesses stop generation at strings (lm-eval's `until`, e.g. "Question:") rather than at
token ids. generation.generate takes a rule with this `update` method; rows it reports finish like
rows at EOS (padding from then on, and they leave the batch), so a row's text up to the stop string
is what it would have been without the rule.
"""
from __future__ import annotations

from typing import Any


class StopStrings:
    """Per original row: the tokens generated so far and whether a stop string has appeared in their text."""

    def __init__(self, tokenizer: Any, strings: list[str], rows: int):
        self.tokenizer = tokenizer
        self.strings = [s for s in strings if s]
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.done = [False] * rows

    def update(self, origin: list[int], tokens: list[int]) -> list[bool]:
        """Record one new token per current batch row (origin: each row's original index); returns, per
        current row, whether it has just reached a stop string."""
        hits = []
        for row, token in zip(origin, tokens):
            hit = False
            if not self.done[row] and self.strings:
                self.tokens[row].append(token)
                # Special tokens are kept: a stop string may be one ("<|im_end|>").
                text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=False)
                hit = self.done[row] = any(s in text for s in self.strings)
            hits.append(hit)
        return hits
