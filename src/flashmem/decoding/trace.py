"""A generation trace as JSON (per step: token, entropy, threshold, consolidation) and as a plot."""
from __future__ import annotations

import json
from pathlib import Path

from ..files import atomic_write_text
from .generation import RowTrace


def trace_record(trace: RowTrace, tokenizer=None, prompt: str | None = None, answer: str | None = None) -> dict:
    fired = set(trace.consolidations)
    steps = []
    for i, token in enumerate(trace.tokens):
        step = {"step": i, "token_id": token, "entropy": trace.entropy[i] if i < len(trace.entropy) else None,
                "consolidated_after": i in fired}
        if tokenizer is not None:
            step["token"] = tokenizer.decode([token])
        steps.append(step)
    return {
        "prompt": prompt,
        "answer": answer,
        "threshold": trace.threshold,
        "prompt_memory": trace.prompt_memory,
        "consolidations": trace.consolidations,
        "steps": steps,
    }


def write_trace(path: str | Path, records: list[dict]) -> None:
    atomic_write_text(Path(path), json.dumps({"traces": records}, indent=2) + "\n")


def plot_trace(path: str | Path, trace: RowTrace, title: str = "Cognitive Monitor") -> None:
    """Entropy per generated step, the threshold, and a mark where memory was made."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.plot(range(len(trace.entropy)), trace.entropy, lw=1.2, label="attention entropy (sinks removed)")
    if trace.threshold is not None and trace.threshold != float("inf"):
        ax.axhline(trace.threshold, color="tab:red", ls="--", lw=1, label=f"threshold {trace.threshold:.3f}")
    for i, step in enumerate(trace.consolidations):
        ax.axvline(step, color="tab:green", alpha=0.6, lw=2, label="consolidation" if i == 0 else None)
    ax.set_xlabel("generated token")
    ax.set_ylabel("entropy (nats)")
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
