"""One table from `flashmem bench` JSON files (one per context), beside the paper's Table 3.

    python benchmarks/table3.py OUT/table3_*.json

Per context and method: tokens/s, median per-step latency [min, max], peak GPU memory (allocator peak,
weights included, as the paper reports it), and FlashMem's ratios against vanilla and MemGen.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

# FlashMem paper, Table 3 (64k context): per-step latency ms, decoding tokens/s, peak GPU memory GB.
PAPER = {"vanilla": (9.97, 25.67, 31.21), "memgen": (61.99, 4.13, 40.78), "flashmem": (12.28, 20.86, 31.44)}
ORDER = ("vanilla", "flashmem", "memgen", "transformers")


def rows(paths: list[str]) -> tuple[list[dict], list[dict], dict]:
    results, ratios, settings = [], [], {}
    for path in paths:
        report = json.loads(Path(path).read_text())
        results += report["results"]
        ratios += report["ratios"]
        settings = report["settings"]
    return results, ratios, settings


def gb(mb) -> str:
    return "-" if mb is None else f"{mb / 1024:.2f}"


def table(results: list[dict], ratios: list[dict]) -> str:
    lines = ["| context | method | tokens/s | ms/step median [min, max] | peak GB | above load GB |",
             "|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (r["context"], ORDER.index(r["method"]))):
        lat = r["step_latency_ms"]
        lines.append(f"| {r['context']} | {r['method']} | {r['tokens_per_s']:.2f} | {lat['median']:.2f} "
                     f"[{lat['min']:.2f}, {lat['max']:.2f}] | {gb(r['peak_mb'])} | {gb(r['peak_above_baseline_mb'])} |")
    lines += ["", "| context | FlashMem/vanilla tokens/s | FlashMem/MemGen step latency | FlashMem/vanilla peak memory "
              "| vanilla/transformers tokens/s |", "|---|---|---|---|---|"]
    by = {(r["pair"], r["context"]): r for r in ratios}
    for ctx in sorted({r["context"] for r in ratios}):
        v, m = by.get(("flashmem/vanilla", ctx)), by.get(("flashmem/memgen", ctx))
        peer = by.get(("vanilla/transformers", ctx))
        lines.append(f"| {ctx} | {v['tokens_per_s']:.3f} | {m['step_latency'] if m else float('nan'):.3f} | "
                     f"{v['peak'] if v['peak'] is not None else float('nan'):.3f} | "
                     f"{peer['tokens_per_s'] if peer else float('nan'):.3f} |")
    return "\n".join(lines)


def paper_table() -> str:
    v, f, m = PAPER["vanilla"], PAPER["flashmem"], PAPER["memgen"]
    return ("Paper, Table 3 (64k, one A100 per secondary sources): vanilla 9.97 ms / 25.67 tok/s / 31.21 GB; "
            "MemGen 61.99 ms / 4.13 tok/s / 40.78 GB; FlashMem 12.28 ms / 20.86 tok/s / 31.44 GB; ratios "
            f"FlashMem/vanilla tokens/s {f[1] / v[1]:.3f}, FlashMem/MemGen latency {f[0] / m[0]:.3f}, "
            f"FlashMem/vanilla memory {f[2] / v[2]:.3f}.")


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    results, ratios, settings = rows(paths)
    device = settings.get("device_name") or settings.get("device")
    print(f"{settings['model']} ({settings['dtype']}) on {device}, schedule paper, batch 1, "
          f"{settings['config']['new_tokens']} new tokens, {settings['config']['repeats']} repeats; "
          f"torch {settings['machine']['torch']}, transformers {settings['machine']['transformers']}.\n")
    print(table(results, ratios))
    print("\n" + paper_table())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
