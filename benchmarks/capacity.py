"""What K memory vectors can hold at all: optimised directly for one recall document, read through the cut.

Issue 32's first step, before any encoder. For one generated recall document with F facts, K vectors
are optimised (Adam) against the frozen backbone so that, with the document evicted, the model
answers every fact's question. The model sees what it would see after a query-agnostic memory:

    [attention sinks | K memory slots | "\\n\\nQuestion: ... Answer with the number only." + chat end] -> answer

The sinks are the prompt's first n_sinks tokens at positions 0..; the memory slots sit where the
document ended (positions P..P+K-1, P = tokens before the question), the question after them. Two
injection paths:
  embed: K input embeddings (FlashMem's path: what the consolidator emits), K x d values; with
         --embed-norm each on the token-embedding norm, as flashmem's latents are;
  kv:    K keys and values at every layer, as the cache holds them (500xCompressor's path),
         K x layers x 2 x n_kv x head_dim values.
Loss: NLL of the facts' answer sentences (and the end-of-turn token), all F questions in one batch, or
a random --facts-per-step of them each step (long documents).
Scored: greedy answers through the same cut, one question at a time (first number == the value), every
`--check-every` steps; a point stops early once all F facts are answered. Init: the embeddings (embed)
or the real cache entries (kv) of K evenly spaced document tokens. K = 0 is the plain cut (no memory).

Each point is one JSON line in --out (resumable: points already there are skipped).

    python benchmarks/capacity.py --setting context=128,facts=4 --docs 3 --ks 0,1,2,4,8,16,32 \
        --paths embed,kv --out results/eviction/capacity.jsonl --threads 1
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from flashmem.data.answers import is_correct
from flashmem.data.prompts import format_prompt
from flashmem.data.recall import Fact, make_document, parse_spec, question_suffix, spec_string
from flashmem.models.loader import load_backbone
from flashmem.models.runtime import set_threads


@dataclass
class Case:
    """One document's questions, tokenised around the cut."""

    sinks: torch.Tensor  # (n_sinks,) the prompt's first tokens
    doc_ids: torch.Tensor  # (P,) everything before the question (chat header and the document)
    suffixes: list[torch.Tensor]  # per fact: the question and the chat turn's end
    answers: list[torch.Tensor]  # per fact: the answer sentence and the end-of-turn token
    facts: list[Fact]


def build_case(bb, spec_text: str, split: str, index: int, n_sinks: int) -> Case:
    doc = make_document(parse_spec(spec_text), split, index)
    tok = bb.tokenizer
    doc_ids, suffixes, answers = None, [], []
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for fact in doc.facts:
        text = format_prompt(tok, doc.text + question_suffix(fact))
        cut = text.index(question_suffix(fact))  # the question starts here, in characters
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        start = next(i for i, (a, _) in enumerate(enc.offset_mapping) if a >= cut)
        ids = torch.tensor(enc.input_ids)
        if doc_ids is None:
            doc_ids = ids[:start]
        elif not torch.equal(doc_ids, ids[:start]):
            raise RuntimeError("the document tokenises differently before two questions")
        suffixes.append(ids[start:])
        answers.append(torch.tensor(tok(fact.sentence(), add_special_tokens=False).input_ids + [end]))
    return Case(doc_ids[:n_sinks], doc_ids, suffixes, answers, doc.facts)


class Memory(torch.nn.Module):
    """K optimisable vectors on one injection path, initialised from K evenly spaced document tokens.
    unit_norm (embed path): each vector is put on the mean token-embedding norm before it is read, as
    every flashmem memory's latents are (LatentMemory.to_embedding_scale)."""

    def __init__(self, bb, case: Case, k: int, path: str, unit_norm: bool = False):
        super().__init__()
        self.path, self.k = path, k
        self.scale = bb.embedding_norm() if unit_norm else None
        picks = torch.linspace(len(case.sinks), len(case.doc_ids) - 1, k).round().long() if k else None
        if path == "embed":
            init = bb.embed(case.doc_ids[picks]).detach().clone() if k else torch.zeros(0, bb.hidden_size)
            self.vectors = torch.nn.Parameter(init)
        else:
            keys, values = document_kv(bb, case, picks)
            self.keys = torch.nn.ParameterList([torch.nn.Parameter(x) for x in keys])
            self.values = torch.nn.ParameterList([torch.nn.Parameter(x) for x in values])

    def n_values(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def embeddings(self) -> torch.Tensor:
        if self.scale is None:
            return self.vectors
        return self.vectors / self.vectors.norm(dim=-1, keepdim=True).clamp_min(1e-6) * self.scale


@torch.no_grad()
def document_kv(bb, case: Case, picks: torch.Tensor | None):
    """The real cache entries (keys rotated at their own positions) of the document tokens `picks`."""
    cache = bb.new_cache()
    n = len(case.doc_ids)
    bb.forward(bb.embed(case.doc_ids[None]), cache, torch.arange(n)[None], torch.ones(1, n, dtype=torch.long))
    out = [[], []]
    for layer in range(bb.n_layers):
        k, v = bb.cache_kv(cache, layer)
        out[0].append(k[:, :, picks].clone() if picks is not None else k[:, :, :0].clone())
        out[1].append(v[:, :, picks].clone() if picks is not None else v[:, :, :0].clone())
    return out


def memory_cache(bb, case: Case, memory: Memory, rows: int):
    """A cache holding the sinks and the memory slots, expanded to `rows` batch rows; (cache, mask, next position)."""
    cache = bb.new_cache()
    s = len(case.sinks)
    with torch.no_grad():
        bb.forward(bb.embed(case.sinks[None]), cache, torch.arange(s)[None], torch.ones(1, s, dtype=torch.long))
    start = len(case.doc_ids)  # the memory sits where the document ended
    if memory.k and memory.path == "embed":
        positions = (start + torch.arange(memory.k))[None]
        bb.forward(memory.embeddings()[None], cache, positions, torch.ones(1, s + memory.k, dtype=torch.long))
    elif memory.k:
        bb.extend_cache(cache, list(memory.keys), list(memory.values))
    bb.select_rows(cache, torch.zeros(rows, dtype=torch.long))
    return cache, torch.ones(rows, s + memory.k, dtype=torch.long), start + memory.k


def loss_of(bb, case: Case, memory: Memory, facts: list[int]) -> torch.Tensor:
    """Mean NLL of the answers of `facts` through the cut, their questions in one right-padded batch."""
    suffixes, answers = [case.suffixes[i] for i in facts], [case.answers[i] for i in facts]
    seqs = [torch.cat([q, a]) for q, a in zip(suffixes, answers)]
    width, rows = max(len(x) for x in seqs), len(seqs)
    ids = torch.zeros(rows, width, dtype=torch.long)
    real = torch.zeros(rows, width, dtype=torch.long)
    target = torch.full((rows, width), -100)
    for r, (seq, q, a) in enumerate(zip(seqs, suffixes, answers)):
        ids[r, :len(seq)], real[r, :len(seq)] = seq, 1
        target[r, len(q) - 1:len(seq) - 1] = a  # the token at t predicts t + 1
    cache, mask, start = memory_cache(bb, case, memory, rows)
    positions = (start + torch.arange(width))[None].expand(rows, width)
    out = bb.forward(bb.embed(ids), cache, positions, torch.cat([mask, real], 1))
    scored = target != -100  # the LM head only where an answer token is predicted (a third of the slots)
    return F.cross_entropy(bb.logits(out.hidden[scored]).float(), target[scored])


@torch.no_grad()
def recalled(bb, case: Case, memory: Memory, max_new: int = 32) -> list[str]:
    """Greedy answers, one question at a time through the cut."""
    texts = []
    stop = set(bb.stop_ids())
    for suffix in case.suffixes:
        cache, mask, start = memory_cache(bb, case, memory, 1)
        ids, new = suffix[None], []
        for step in range(max_new):
            n = ids.shape[1]
            mask = torch.cat([mask, torch.ones(1, n, dtype=torch.long)], 1)
            out = bb.forward(bb.embed(ids), cache, (start + torch.arange(n))[None], mask)
            start += n
            token = int(out.logits[0, -1].argmax())
            if token in stop:
                break
            new.append(token)
            ids = torch.tensor([[token]])
        texts.append(bb.tokenizer.decode(new))
    return texts


def score(bb, case: Case, memory: Memory) -> tuple[int, list[str]]:
    texts = recalled(bb, case, memory)
    return sum(is_correct(t, f.value, "exact") for t, f in zip(texts, case.facts)), texts


def run_point(bb, case: Case, k: int, path: str, args) -> dict:
    memory = Memory(bb, case, k, path, unit_norm=args.embed_norm)
    started, history, loss = time.time(), [], float("nan")
    right, texts = score(bb, case, memory)
    history.append({"step": 0, "recalled": right})
    if k:
        opt = torch.optim.Adam(memory.parameters(), lr=args.lr_embed if path == "embed" else args.lr_kv)
        order = torch.Generator().manual_seed(k)
        per_step = min(args.facts_per_step or len(case.facts), len(case.facts))
        for step in range(1, args.steps + 1):
            opt.zero_grad(set_to_none=True)
            facts = torch.randperm(len(case.facts), generator=order)[:per_step].tolist()
            value = loss_of(bb, case, memory, facts)
            value.backward()
            opt.step()
            loss = float(value.detach())
            if step % args.check_every == 0 or step == args.steps:
                right, texts = score(bb, case, memory)
                history.append({"step": step, "loss": round(loss, 4), "recalled": right})
                print(f"  {path} K={k} step {step}: loss {loss:.4f}, recalled {right}/{len(case.facts)}", flush=True)
                if right == len(case.facts) and loss < args.stop_loss:
                    break
    return {"recalled": right, "facts": len(case.facts), "final_loss": round(loss, 4) if k else None,
            "steps": history[-1]["step"], "values": memory.n_values(), "seconds": round(time.time() - started, 1),
            "history": history, "answers": texts}


def done_points(out: Path) -> set[tuple]:
    if not out.exists():
        return set()
    keys = set()
    for line in out.read_text().splitlines():
        if line.strip():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:  # a torn last line from an interrupted run: redone
                continue
            keys.add((r["setting"], r["doc"], r["path"], r["k"]))
    return keys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--setting", default="context=128,facts=4", help="recall parameters (seed 0, split train)")
    ap.add_argument("--docs", type=int, default=3, help="documents per point (train items 0..N-1)")
    ap.add_argument("--ks", default="0,1,2,4,8,16,32")
    ap.add_argument("--paths", default="embed,kv")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--check-every", type=int, default=50)
    ap.add_argument("--facts-per-step", type=int, default=0, help="questions per step, drawn at random (0: all)")
    ap.add_argument("--stop-loss", type=float, default=0.05, help="stop early once all facts are recalled below this loss")
    ap.add_argument("--lr-embed", type=float, default=1e-2)
    ap.add_argument("--lr-kv", type=float, default=1e-2)
    ap.add_argument("--n-sinks", type=int, default=4)
    ap.add_argument("--embed-norm", action="store_true", help="embed path: vectors on the token-embedding norm, as "
                    "flashmem's latents are (the point's path is then recorded as embed-norm)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    set_threads(args.threads)
    torch.manual_seed(0)
    bb = load_backbone(args.model, device="cpu", dtype="float32")
    spec = spec_string(parse_spec("recall:" + args.setting))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_points(out)
    for doc in range(args.docs):
        case = build_case(bb, spec, "train", doc, args.n_sinks)
        for path in args.paths.split(","):
            label = "embed-norm" if path == "embed" and args.embed_norm else path
            for k in (int(x) for x in args.ks.split(",")):
                if (spec, doc, label, k) in done or (k == 0 and path != args.paths.split(",")[0]):
                    continue
                print(f"{spec} doc {doc} {label} K={k} (document {len(case.doc_ids)} tokens)", flush=True)
                result = {"setting": spec, "doc": doc, "path": label, "k": k, "doc_tokens": len(case.doc_ids),
                          "model": args.model, "lr": args.lr_embed if path == "embed" else args.lr_kv,
                          "facts_per_step": args.facts_per_step or len(case.facts),
                          **run_point(bb, case, k, path, args)}
                with out.open("a") as f:
                    f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
