"""A generated long-context key-value recall set: ``--data recall[:key=value,...]``.

Each item is a document of bland filler prose with ``facts`` key-value facts spread through it
("The access code of the blue locker is 4821."), followed by a question about exactly one of them
(the needle). Answering needs the context: the value is a random 4-digit number that appears
nowhere else. Everything is generated from code, seeded; nothing is read from disk and no
tokenizer is needed.

Spec strings: ``recall`` (all defaults) or ``recall:context=2048,facts=16,needle=0.5,seed=0``;
:func:`spec_string` writes the canonical form, with every parameter, that result files record.

Item ``i`` of a split comes from its own random stream, derived from (seed, split, i), so it is the
same whatever ``limit`` is, and the splits are disjoint: two items from different streams would
have to agree on every one of the hundreds of draws that make a document. Within an item the
facts and the needle are drawn before the filler, so item ``i`` asks the same question with the same
answer at every ``context`` (runs at different lengths are paired).
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Iterator

from ..errors import FlashmemError
from .examples import DataReport, Example

NAME = "recall"
KIND = "exact"  # scored by flashmem.data.answers: the first number of the output must be the value
SPLIT_SIZES = {"train": 4000, "validation": 500, "test": 1000}
NEEDLE_WORDS = {"start": 0.0, "middle": 0.5, "end": 1.0}
CONTEXT_RANGE = (128, 32768)

# Characters per token with the SmolLM2-135M tokenizer (GPT-2-style BPE, one token per digit),
# measured on this module's text: filler prose 4.75 (403k characters of paragraphs, 84.9k tokens);
# fact sentences 3.20 (1,600 facts, 14.3 tokens each: the 4 digits are 4 tokens). A document is
# sized in tokens with these, so the generator needs no tokenizer. Check: the question text of
# 200 validation items (25 each at context/facts 512/8, 512/16, 1024/8, 1024/16, 2048/16, 2048/32,
# 4096/16, 4096/32) has a mean token count within 1% of `context` per setting and every item
# within 5%; the chat template adds 30 tokens more.
FILLER_CHARS_PER_TOKEN = 4.75
FACT_CHARS_PER_TOKEN = 3.20

# A document reserves at least this many tokens per fact, so facts stay a minority of the text.
TOKENS_PER_FACT = 32

# ---- key-value facts -----------------------------------------------------------------------------
# Keys are (colour, object) pairs, distinct within a document; the attribute is a third, random
# word, so distractors share colours, objects and attributes with the needle.
COLOURS = ("red", "blue", "green", "yellow", "orange", "purple", "white", "black", "grey", "brown",
           "pink", "silver")
OBJECTS = ("locker", "safe", "cabinet", "suitcase", "bicycle", "van", "crate", "drawer", "gate",
           "trunk", "mailbox", "tent", "boat", "scooter", "backpack", "toolbox", "folder", "wagon",
           "kiosk", "shed")
ATTRIBUTES = ("access code", "serial number", "room number", "account number", "ticket number",
              "order number")
MAX_FACTS = len(COLOURS) * len(OBJECTS)

# ---- filler prose --------------------------------------------------------------------------------
# Word lists for bland, varied sentences. They hold no digits, no number words, no colours and
# none of the key objects or attributes, so no filler sentence can be mistaken for a fact.
_PEOPLE = ("the gardener", "a visitor", "the old librarian", "the committee", "our neighbour",
           "the baker", "a group of students", "the night porter", "the ferry captain",
           "the museum guide", "a young painter", "the shopkeeper", "the teacher", "a retired sailor",
           "the postman", "my cousin", "the mayor", "a tired traveller", "the choir", "the farmer")
_ACTIONS = ("walked slowly along", "spent the afternoon near", "wrote a short letter about",
            "talked for a while about", "took a photograph of", "paid a quiet visit to",
            "looked for a bench near", "read a book beside", "sketched", "complained about the noise near",
            "waited patiently by", "had a picnic close to", "asked for directions to",
            "told a long story about", "cleaned the path beside", "searched for a lost glove near")
_PLACES = ("the river", "the market square", "the library garden", "the harbour wall", "the old bridge",
           "the village hall", "the orchard", "the train station", "the bakery", "the park",
           "the church tower", "the narrow lane", "the lake", "the theatre", "the town museum",
           "the hill path", "the fish market", "the school yard", "the quiet beach", "the post office")
_TIMES = ("in the morning", "after lunch", "on a rainy day", "late in the evening", "at the start of spring",
          "during the long summer", "before sunrise", "on a windy afternoon", "at the end of the week",
          "in the early autumn", "on a cold winter night", "around midday")
_QUALITIES = ("calm", "busy", "peaceful", "crowded", "lovely", "damp", "bright", "sleepy", "cheerful",
              "ordinary", "pleasant", "gloomy")
_THINGS = ("fresh bread", "wet leaves", "sea salt", "cut grass", "wood smoke", "coffee", "rain",
           "flowers", "old paper", "warm soup")
_REMARKS = ("Nobody seemed to be in a hurry.", "The weather was mild and the streets were quiet.",
            "It was the kind of day that people forget quickly.", "A few birds sang somewhere nearby.",
            "Most of the shops had already closed.", "The conversation drifted to other topics.",
            "Everyone agreed that it had been a pleasant change.", "Soon the light began to fade.",
            "There was little else to report.", "People said it reminded them of older times.")
_TEMPLATES = (
    "{Time}, {person} {action} {place}.",
    "{Person} {action} {place} {time}.",
    "It was {quality} {time}, and {person} {action} {place}.",
    "{Person} said that {place} looked {quality} {time}.",
    "Later, {person} and {person2} {action} {place}.",
    "There was a faint smell of {thing} near {place}.",
    "{Person} thought that {place} seemed unusually {quality}.",
    "{Time}, the area around {place} felt {quality}.",
    "{remark}",
    "{Person} {action} {place}, and then went home. {remark}",
)


@dataclass(frozen=True)
class RecallSpec:
    """The generator's parameters; a spec string is parsed into one by :func:`parse_spec`."""

    context: int = 2048  # approximate prompt length in tokens (document + question, no chat template)
    facts: int = 16  # key-value facts in the document: the needle and facts - 1 distractors
    needle: str | float = "any"  # where the needle sits: any (uniform), start, middle, end, or 0..1
    seed: int = 0  # with split and item index, fixes every random draw

    def __post_init__(self) -> None:
        lo, hi = CONTEXT_RANGE
        if not _is_int(self.context) or not lo <= self.context <= hi:
            raise FlashmemError(f"recall: context must be an integer in {lo}..{hi}, got {self.context!r}")
        if not _is_int(self.facts) or self.facts < 1:
            raise FlashmemError(f"recall: facts must be an integer >= 1, got {self.facts!r}")
        most = min(MAX_FACTS, self.context // TOKENS_PER_FACT)
        if self.facts > most:
            raise FlashmemError(f"recall: facts={self.facts} does not fit context={self.context}: "
                                f"at most {most} (one per {TOKENS_PER_FACT} tokens, {MAX_FACTS} keys)")
        if not _is_int(self.seed):
            raise FlashmemError(f"recall: seed must be an integer, got {self.seed!r}")
        object.__setattr__(self, "needle", _check_needle(self.needle))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_needle(value) -> str | float:
    """A needle word, or a float fraction in 0..1 (ints 0 and 1 become floats)."""
    if isinstance(value, str) and (value == "any" or value in NEEDLE_WORDS):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
        return float(value)
    raise FlashmemError(f"recall: needle must be any, {', '.join(NEEDLE_WORDS)} or a fraction in 0..1, "
                        f"got {value!r}")


# ---- spec strings --------------------------------------------------------------------------------
def is_recall_spec(text: str) -> bool:
    """Whether a --data value names this generator (``recall`` or ``recall:...``)."""
    key = text.strip().lower()
    return key == NAME or key.startswith(NAME + ":")


def parse_spec(text: str) -> RecallSpec:
    """``recall`` or ``recall:context=2048,facts=16,needle=0.5,seed=0`` -> RecallSpec."""
    if not is_recall_spec(text):
        raise FlashmemError(f"not a recall spec: {text!r} (expected recall or recall:key=value,...)")
    _, _, body = text.strip().lower().partition(":")
    values: dict[str, object] = {}
    for part in filter(None, (p.strip() for p in body.split(","))):
        key, eq, raw = (s.strip() for s in part.partition("="))
        if not eq or not raw:
            raise FlashmemError(f"recall: expected key=value, got {part!r} in {text!r}")
        if key not in _FIELD_PARSERS:
            raise FlashmemError(f"recall: unknown key {key!r} in {text!r}; keys: {', '.join(_FIELD_PARSERS)}")
        if key in values:
            raise FlashmemError(f"recall: {key} given twice in {text!r}")
        values[key] = _FIELD_PARSERS[key](key, raw)
    return RecallSpec(**values)


def _parse_int(key: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise FlashmemError(f"recall: {key} must be an integer, got {raw!r}") from None


def _parse_needle(key: str, raw: str) -> str | float:
    if raw == "any" or raw in NEEDLE_WORDS:
        return raw
    try:
        return float(raw)
    except ValueError:
        raise FlashmemError(f"recall: needle must be any, {', '.join(NEEDLE_WORDS)} or a fraction in 0..1, "
                            f"got {raw!r}") from None


_FIELD_PARSERS = {"context": _parse_int, "facts": _parse_int, "needle": _parse_needle, "seed": _parse_int}


def spec_string(spec: RecallSpec) -> str:
    """The canonical spec string, every parameter spelled out: what result files record."""
    needle = spec.needle if isinstance(spec.needle, str) else repr(spec.needle)
    return f"{NAME}:context={spec.context},facts={spec.facts},needle={needle},seed={spec.seed}"


# ---- one item ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fact:
    attribute: str
    colour: str
    obj: str
    value: str

    def sentence(self) -> str:
        return f"The {self.attribute} of the {self.colour} {self.obj} is {self.value}."

    def question(self) -> str:
        return f"What is the {self.attribute} of the {self.colour} {self.obj}?"


def item_rng(seed: int, split: str, index: int) -> random.Random:
    """The random stream of one item: a hash of (seed, split, index), independent of every other."""
    digest = hashlib.sha256(f"{NAME}/{seed}/{split}/{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


def draw_facts(rng: random.Random, n: int) -> list[Fact]:
    """n facts with distinct (colour, object) keys and distinct 4-digit values (no leading 0)."""
    keys = rng.sample(range(MAX_FACTS), n)
    values = rng.sample(range(1000, 10000), n)
    return [Fact(rng.choice(ATTRIBUTES), COLOURS[k // len(OBJECTS)], OBJECTS[k % len(OBJECTS)], str(v))
            for k, v in zip(keys, values)]


def filler_sentence(rng: random.Random) -> str:
    people = rng.sample(_PEOPLE, 2)
    time = rng.choice(_TIMES)
    text = rng.choice(_TEMPLATES).format(
        person=people[0], Person=_capital(people[0]), person2=people[1], time=time, Time=_capital(time),
        action=rng.choice(_ACTIONS), place=rng.choice(_PLACES), quality=rng.choice(_QUALITIES),
        thing=rng.choice(_THINGS), remark=rng.choice(_REMARKS))
    return text


def _capital(text: str) -> str:
    return text[0].upper() + text[1:]


def filler(rng: random.Random, chars: int) -> list[str]:
    """Filler sentences whose text (with separating spaces) is as close to ``chars`` as they get."""
    sentences, total = [], 0
    while True:
        sentence = filler_sentence(rng)
        if total + (len(sentence) + 1) / 2 > chars:  # adding it would overshoot more than stopping
            return sentences
        sentences.append(sentence)
        total += len(sentence) + 1


def filler_chars(context: int, facts: list[Fact], question: str) -> int:
    """Characters of filler that bring the whole text to about ``context`` tokens."""
    dense_chars = len(question) + sum(len(f.sentence()) + 1 for f in facts)
    filler_tokens = context - dense_chars / FACT_CHARS_PER_TOKEN
    return max(0, round(filler_tokens * FILLER_CHARS_PER_TOKEN))


def needle_fraction(spec: RecallSpec, rng: random.Random) -> float:
    """Where the needle goes, as a fraction of the document (drawn per item for ``any``)."""
    if spec.needle == "any":
        return rng.random()
    return NEEDLE_WORDS[spec.needle] if isinstance(spec.needle, str) else spec.needle


def place_facts(sentences: list[str], facts: list[Fact], fraction: float, rng: random.Random) -> list[str]:
    """Insert the needle (facts[0]) at ``fraction`` of the filler and the distractors at random gaps."""
    gaps = len(sentences) + 1  # gap g sits before filler sentence g; the last gap is the end
    at: dict[int, list[str]] = {}
    at.setdefault(round(fraction * (gaps - 1)), []).append(facts[0].sentence())
    for fact in facts[1:]:
        at.setdefault(rng.randrange(gaps), []).append(fact.sentence())
    out: list[str] = []
    for g in range(gaps):
        here = at.get(g, [])
        rng.shuffle(here)
        # The needle stays on its side of the gap: at the start it comes first, at the end last.
        if facts[0].sentence() in here and fraction in (0.0, 1.0):
            here.remove(facts[0].sentence())
            here.insert(0 if fraction == 0.0 else len(here), facts[0].sentence())
        out.extend(here)
        if g < len(sentences):
            out.append(sentences[g])
    return out


def paragraphs(sentences: list[str], rng: random.Random) -> str:
    """Sentences joined into paragraphs of 3 to 6 sentences, so the document reads like notes."""
    parts, i = [], 0
    while i < len(sentences):
        n = rng.randint(3, 6)
        parts.append(" ".join(sentences[i: i + n]))
        i += n
    return "\n\n".join(parts)


@dataclass(frozen=True)
class Document:
    """One item's document and every fact in it (facts[0] is the needle its question asks about)."""

    text: str
    facts: list[Fact]


def question_suffix(fact: Fact) -> str:
    """The question that follows a document, as every item asks it."""
    return f"\n\nQuestion: {fact.question()} Answer with the number only."


def make_document(spec: RecallSpec, split: str, index: int) -> Document:
    """Item ``index``'s document with all its facts, so one document can serve a question per fact."""
    _check_split(split, index)
    return _document(spec, item_rng(spec.seed, split, index))


def _document(spec: RecallSpec, rng: random.Random) -> Document:
    facts = draw_facts(rng, spec.facts)  # facts[0] is the needle; drawn first so they do not
    fraction = needle_fraction(spec, rng)  # depend on context (items are paired across lengths)
    sentences = place_facts(filler(rng, filler_chars(spec.context, facts, question_suffix(facts[0]))), facts,
                            fraction, rng)
    return Document(paragraphs(sentences, rng), facts)


def make_item(spec: RecallSpec, split: str, index: int) -> Example:
    """Item ``index`` (0-based) of ``split``: document + question, the needle sentence as target."""
    doc = make_document(spec, split, index)
    needle = doc.facts[0]
    return Example(doc.text + question_suffix(needle), needle.sentence(), needle.value, KIND, spec_string(spec),
                   index + 1)


def _check_split(split: str, index: int) -> None:
    if split not in SPLIT_SIZES:
        raise FlashmemError(f"recall has no split {split!r}; it has {', '.join(SPLIT_SIZES)}")
    if not 0 <= index < SPLIT_SIZES[split]:
        raise FlashmemError(f"recall {split} has items 0..{SPLIT_SIZES[split] - 1}, got {index}")


# ---- the gist of a document ---------------------------------------------------------------------
GIST_FORMS = ("pairs", "facts")


def check_gist_form(form: str) -> None:
    if form not in GIST_FORMS:
        raise FlashmemError(f"recall: the gist form must be one of {', '.join(GIST_FORMS)}, got {form!r}")


def gist_text(doc: Document, form: str = "pairs") -> str:
    """What a query-agnostic memory of the document must carry, every fact in document order: ``pairs``
    ("blue locker 4821; red safe 1234", the compact form) or ``facts`` (the fact sentences themselves).
    At one fact the pair read back through the cut answers every question (results/eviction/oracle_tokens.py)."""
    check_gist_form(form)
    ordered = sorted(doc.facts, key=lambda f: doc.text.index(f.sentence()))
    if form == "facts":
        return " ".join(f.sentence() for f in ordered)
    return "; ".join(f"{f.colour} {f.obj} {f.value}" for f in ordered)


# ---- a stream of new documents for training --------------------------------------------------------
STREAM = "stream"  # the random streams' split name: none of its documents is a train/validation/test item
STREAM_ITEMS = 10**9  # as good as endless: a training run reads a few thousand


class RecallStream:
    """Training examples that never repeat a document: item i asks about fact i % q of document i // q,
    document j drawn from its own random stream (seed, "stream", j). q = questions_per_document > 1
    lets one document serve several consecutive examples (a batch of q asks about one document). gist: a
    GIST_FORMS name, to give every example its document's gist (the --gist-weight target)."""

    def __init__(self, spec: RecallSpec, questions_per_document: int = 1, documents: int | None = None,
                 gist: str | None = None):
        if not 1 <= questions_per_document <= spec.facts:
            raise FlashmemError(f"recall: questions per document must be in 1..{spec.facts} (the facts), "
                                f"got {questions_per_document}")
        if documents is not None and not 1 <= documents <= SPLIT_SIZES["train"]:
            raise FlashmemError(f"recall: a fit check cycles over 1..{SPLIT_SIZES['train']} train documents, "
                                f"got {documents}")
        if gist is not None:
            check_gist_form(gist)
        self.spec, self.q, self.documents, self.gist = spec, questions_per_document, documents, gist
        self._last: tuple[int, Document] | None = None

    @property
    def label(self) -> str:
        """What the examples are, for logs and records."""
        where = STREAM if self.documents is None else f"train documents 1..{self.documents}, repeated"
        return f"{spec_string(self.spec)} ({where})"

    def __len__(self) -> int:
        return STREAM_ITEMS

    def document(self, j: int) -> Document:
        """Document j: a new one from its own stream, or (a fit check) train document j mod N, the
        document of train item j mod N, so `--split train --limit N` evaluates on exactly these."""
        if self._last is None or self._last[0] != j:
            self._last = (j, _document(self.spec, item_rng(self.spec.seed, STREAM, j)) if self.documents is None
                          else make_document(self.spec, "train", j % self.documents))
        return self._last[1]

    def __getitem__(self, i: int) -> Example:
        if not 0 <= i < STREAM_ITEMS:
            raise FlashmemError(f"recall stream has items 0..{STREAM_ITEMS - 1}, got {i}")
        doc = self.document(i // self.q)
        fact = doc.facts[i % self.q]
        gist = gist_text(doc, self.gist) if self.gist else ""
        return Example(doc.text + question_suffix(fact), fact.sentence(), fact.value, KIND, self.label, i + 1,
                       gist=gist)


# ---- a split -------------------------------------------------------------------------------------
def iter_items(spec: RecallSpec, split: str, limit: int | None = None) -> Iterator[Example]:
    """The first ``limit`` items of a split (all when None), generated one at a time."""
    _check_split(split, 0)
    n = SPLIT_SIZES[split] if limit is None else min(limit, SPLIT_SIZES[split])
    return (make_item(spec, split, i) for i in range(n))


def load_recall(text: str, split: str, limit: int | None = None) -> tuple[list[Example], DataReport]:
    """load_examples' hook: the items of a spec string and a report whose path is the canonical spec."""
    spec = parse_spec(text)
    examples = list(iter_items(spec, split, limit))
    return examples, DataReport(spec_string(spec), rows=len(examples), kept=len(examples))


_WORD_RE = re.compile(r"[a-z]+")


def filler_vocabulary() -> set[str]:
    """Every word the filler can use (tests check it shares none with the keys)."""
    lists = (_PEOPLE, _ACTIONS, _PLACES, _TIMES, _QUALITIES, _THINGS, _REMARKS, _TEMPLATES)
    return {w for items in lists for text in items for w in _WORD_RE.findall(text.lower())}
