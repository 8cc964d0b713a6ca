"""Training sequences and the order they are read in.

An example becomes (prompt ids, answer ids): the prompt through the model's chat template, the
answer text followed by the tokenizer's EOS id (only answer tokens are scored). The micro-batch is
one example, because each sequence gets memory at its own insertion points; an optimiser step
accumulates `batch_size` of them. The order is a seeded permutation per epoch, so a position in
the stream (examples consumed) is all a checkpoint needs to resume it exactly.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from ..data.datasets import Example
from ..data.prompts import format_prompt
from ..errors import FlashmemError


@dataclass(frozen=True)
class Sequence:
    prompt: torch.Tensor  # (T,) int64
    answer: torch.Tensor  # (N,) int64, ends with EOS
    where: str  # "file line N", for messages
    reconstruct: bool = True  # False: another example of the same document rebuilds it (objectives.py)
    gist: torch.Tensor | None = None  # (G,) int64: the ids the latents should name (Example.gist), if any

    @property
    def n_tokens(self) -> int:
        return int(self.prompt.numel() + self.answer.numel())


def encode_example(tokenizer, example: Example, system: str | None = None) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids + EOS) of one example, the question asked with the given system prompt."""
    if tokenizer.eos_token_id is None:
        raise FlashmemError("the tokenizer has no EOS token: training needs one to end answers")
    prompt = tokenizer(format_prompt(tokenizer, example.question, system), add_special_tokens=False).input_ids
    answer = tokenizer(example.answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return prompt, answer


def encode_examples(
    tokenizer, examples: list[Example], max_length: int, on_bad_data: str, source: str, system: str | None = None
) -> list[Sequence]:
    """Tokenise; a sequence longer than max_length is an error (stop) or a counted, listed skip."""
    kept, skipped = [], []
    for example in examples:
        prompt, answer = encode_example(tokenizer, example, system)
        where = f"{source} line {example.line}"
        problem = length_problem(where, prompt, answer, max_length)
        if problem:
            if on_bad_data == "stop":
                raise FlashmemError(f"{problem} (pass --on-bad-data skip to drop such examples)")
            skipped.append(problem)
            continue
        kept.append(Sequence(torch.tensor(prompt), torch.tensor(answer), where))
    if skipped:
        listed = "; ".join(skipped[:5]) + (f"; and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        print(f"skipped {len(skipped)} of {len(examples)} examples over --max-length: {listed}", file=sys.stderr)
    if not kept:
        raise FlashmemError(f"no training sequences left from {source} (all longer than --max-length {max_length})")
    return kept


def length_problem(where: str, prompt: list[int], answer: list[int], max_length: int) -> str | None:
    """What is wrong with a sequence longer than max_length, or None."""
    length = len(prompt) + len(answer)
    return f"{where}: sequence of {length} tokens is longer than --max-length {max_length}" if length > max_length else None


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The permutation of one epoch; a function of (seed, epoch) only."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=gen).tolist()


@dataclass
class DataStream:
    """Examples in epoch order; `consumed` is the number of examples read since the start. Unshuffled
    (a generated stream, where every example is new), the order is the examples' own."""

    n: int
    seed: int
    consumed: int = 0
    shuffle: bool = True

    def order(self, epoch: int) -> list[int] | range:
        return epoch_order(self.n, self.seed, epoch) if self.shuffle else range(self.n)

    def take(self, count: int) -> list[int]:
        """The next `count` indices (crossing into the next epoch when one ends)."""
        out: list[int] = []
        while len(out) < count:
            epoch, offset = divmod(self.consumed, self.n)
            grab = list(self.order(epoch)[offset: offset + count - len(out)])
            out.extend(grab)
            self.consumed += len(grab)
        return out

    @property
    def epoch(self) -> int:
        return self.consumed // self.n

    def state(self) -> dict:
        epoch, offset = divmod(self.consumed, self.n)
        state = {"n": self.n, "seed": self.seed, "consumed": self.consumed, "epoch": epoch, "position": offset}
        return {**state, "permutation": epoch_order(self.n, self.seed, epoch)} if self.shuffle else state

    def restore(self, state: dict) -> None:
        if state["n"] != self.n or state["seed"] != self.seed:
            raise FlashmemError(
                f"checkpoint data order is for {state['n']} examples with seed {state['seed']}, "
                f"this run has {self.n} with seed {self.seed}: the data or its filtering changed"
            )
        self.consumed = int(state["consumed"])


def shard(items: list, rank: int, world: int) -> list:
    """This process's part of a global batch (strided, so sizes differ by at most one)."""
    return items[rank::world]


class LazySequences:
    """Examples tokenised when read (a generated stream too long to encode up front), the same way
    encode_examples does one; an over-long one is an error naming it."""

    def __init__(self, tokenizer, examples, max_length: int, source: str, system: str | None = None,
                 per_document: int = 1):
        self.tokenizer, self.examples, self.max_length, self.source, self.system = \
            tokenizer, examples, max_length, source, system
        self.per_document = per_document  # consecutive examples share a document: the first reconstructs it

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        example = self.examples[index]
        prompt, answer = encode_example(self.tokenizer, example, self.system)
        where = f"{self.source} item {example.line}"
        problem = length_problem(where, prompt, answer, self.max_length)
        if problem:
            raise FlashmemError(problem)
        return Sequence(torch.tensor(prompt), torch.tensor(answer), where, reconstruct=index % self.per_document == 0,
                        gist=encode_gist(self.tokenizer, example))


def encode_gist(tokenizer, example: Example) -> torch.Tensor | None:
    """The ids of an example's gist text, or None. It is read after a space, as its words stand in the document
    (" green locker 7859" gives the document's own " green" token, not "green"), so every target is a token
    the document holds and naming it is a copy (no special tokens)."""
    if not example.gist:
        return None
    return torch.tensor(tokenizer(" " + example.gist, add_special_tokens=False).input_ids)
