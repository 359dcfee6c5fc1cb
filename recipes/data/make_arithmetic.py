"""Write arithmetic.jsonl (GRPO training prompts) and arithmetic-eval.jsonl (held out).

Small word problems and sums with one or two operations; every operand and every answer is a
whole number from 0 to 20, so a 135M model can learn the answer format and some of the sums.
Each row is {"prompt": ..., "answer": "<number>"}; the answer is computed here, never typed.
The eval rows come from a different seed and share no prompt with the training rows.

Run from anywhere: python recipes/data/make_arithmetic.py  (output is the same every time)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUFFIX = " Put the final number inside <answer></answer>."
MAX = 20

NAMES = [
    "Tom",
    "Ana",
    "Ravi",
    "Mia",
    "Leo",
    "Sara",
    "Kofi",
    "Yuki",
    "Omar",
    "Lena",
    "Ben",
    "Zoe",
    "Ivan",
    "Nia",
]
ITEMS = [
    "apples",
    "pencils",
    "marbles",
    "stickers",
    "cookies",
    "books",
    "shells",
    "coins",
    "cards",
    "balloons",
]


def _problem(rng: random.Random) -> tuple[str, int] | None:
    """One (question, answer), or None when the drawn numbers leave the 0..MAX range."""
    name, friend = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    # a >= 2 so a first count never reads "1 apples"
    a, b, c = rng.randint(2, MAX), rng.randint(1, MAX), rng.randint(1, MAX)
    kind = rng.randrange(12)
    if kind == 0:
        q, ans = f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?", a + b
    elif kind == 1:
        q, ans = (
            f"{name} has {a} {item} and gives {b} to {friend}. How many {item} does {name} have left?",
            a - b,
        )
    elif kind == 2:
        q, ans = (
            f"There are {a} {item} in a box. {name} puts in {b} more. How many {item} are in the box?",
            a + b,
        )
    elif kind == 3:
        q, ans = (
            f"A shelf holds {a} {item}. {name} takes {b} of them away. How many {item} are left on the shelf?",
            a - b,
        )
    elif kind == 4:
        a, b = rng.randint(2, 5), rng.randint(2, 5)
        q, ans = f"{name} has {a} bags with {b} {item} in each bag. How many {item} are there in all?", a * b
    elif kind == 5:
        each, n = rng.randint(1, 5), rng.randint(2, 4)
        q = f"{name} shares {each * n} {item} equally among {n} friends. How many {item} does each friend get?"
        ans = each
    elif kind == 6:
        q, ans = (
            f"{name} has {a} {item}, finds {b} more and then loses {c}. How many {item} does {name} have now?",
            a + b - c,
        )
    elif kind == 7:
        q = f"{name} has {a} {item}, {friend} has {b} and their teacher has {c}. How many {item} do they have together?"
        ans = a + b + c
    elif kind == 8:
        a, b = rng.randint(2, 4), rng.randint(2, 4)
        q = f"{name} buys {a} packs of {b} {item} and already had {c}. How many {item} does {name} have now?"
        ans = a * b + c
    elif kind == 9:
        q, ans = f"What is {a} + {b}?", a + b
    elif kind == 10:
        q, ans = f"What is {a} - {b}?", a - b
    else:
        q, ans = f"What is {a} + {b} - {c}?", a + b - c
    return (q + SUFFIX, ans) if 0 <= ans <= MAX else None


def generate(seed: int, n: int, exclude: set[str] = frozenset()) -> list[dict]:
    rng = random.Random(seed)
    rows: list[dict] = []
    seen = set(exclude)
    while len(rows) < n:
        got = _problem(rng)
        if got is None or got[0] in seen:
            continue
        seen.add(got[0])
        rows.append({"prompt": got[0], "answer": str(got[1])})
    return rows


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    train = generate(seed=20260101, n=300)
    held_out = generate(seed=20260202, n=50, exclude={r["prompt"] for r in train})
    write(HERE / "arithmetic.jsonl", train)
    write(HERE / "arithmetic-eval.jsonl", held_out)


if __name__ == "__main__":
    main()
