"""The rows every data source turns into: an `Example` per problem, and a `DataReport` of what loading
read and what it dropped."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Example:
    """One problem. ``answer`` is the training target text, ``final`` the scoring answer."""

    question: str
    answer: str
    final: str
    kind: str  # "number", "math" or "exact" (flashmem.data.answers)
    source: str
    line: int  # 1-based line in the source file (row index + 1 for hub data)
    rationale: str = ""  # GSM8K: the solution as the data set gives it (calculator annotations kept)
    gist: str = ""  # recall streams: what a memory of the document must carry (training.objectives, gist)


@dataclass
class DataReport:
    """What loading read and what it dropped; print :meth:`summary` whenever ``skipped``."""

    path: str
    rows: int = 0
    kept: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def summary(self, max_listed: int = 5) -> str:
        text = f"{self.path}: {self.rows} rows, {self.kept} kept, {len(self.skipped)} skipped"
        if self.skipped:
            listed = "; ".join(f"line {ln}: {why}" for ln, why in self.skipped[:max_listed])
            more = len(self.skipped) - max_listed
            text += f" ({listed}{f'; and {more} more' if more > 0 else ''})"
        return text
