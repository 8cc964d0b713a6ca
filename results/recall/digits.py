"""How much of the value a recall run's answers carry, beyond exact match: per run, the answers holding a
4-digit number, how many of its digits sit in the right place (chance: 0.4 of 4), and how often the first digit
is right (chance: 1 in 9, values run 1000-9999). Reads the runs' per-question records.

    python3 results/recall/digits.py results/recall/eval/cut_c512/*.records.jsonl
"""
import json
import re
import sys


def digits(path: str) -> str:
    rows = [json.loads(line) for line in open(path)][1:]  # the first line is the records header
    rows = [r for r in rows if r.get("prediction") is not None]
    if not rows:
        return f"| {path} | no generated answers (an --nll-only run) | | | | |"
    numbers = [(re.findall(r"\d{4}", r["prediction"]), r["final"]) for r in rows]
    numbers = [(found[0], final) for found, final in numbers if found]
    placed = sum(a == b for got, final in numbers for a, b in zip(got, final))
    first = sum(got[0] == final[0] for got, final in numbers)
    exact = sum(bool(r["correct"]) for r in rows)
    return (f"| {path} | {len(rows)} | {exact} | {len(numbers)} | {placed / max(len(numbers), 1):.2f} | "
            f"{first} ({first / max(len(numbers), 1):.0%}) |")


if __name__ == "__main__":
    print("| run | items | exact | answers with a 4-digit number | digits in place per such answer | first digit right |")
    print("|---|---|---|---|---|---|")
    for path in sys.argv[1:]:
        print(digits(path))
