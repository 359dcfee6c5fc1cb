"""Write one-word.jsonl and one-word-eval.jsonl: short questions whose answer is one word.

Ours, under the repository's licence. A small instruct model knows these answers but says them
in a sentence ("The capital of Italy is Rome."); the GRPO recipe smollm2-135m-grpo rewards
answering with the word alone, and exact_answer checks it. Deterministic: run it again and the
files come out the same. Every fifth item of each list is held out for evaluation.

    python recipes/data/make_one_word.py
"""

from __future__ import annotations

import json
from pathlib import Path

CAPITALS = [
    ("France", "Paris"),
    ("Italy", "Rome"),
    ("Japan", "Tokyo"),
    ("Germany", "Berlin"),
    ("Spain", "Madrid"),
    ("Russia", "Moscow"),
    ("Egypt", "Cairo"),
    ("Greece", "Athens"),
    ("Portugal", "Lisbon"),
    ("Ireland", "Dublin"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Austria", "Vienna"),
    ("Poland", "Warsaw"),
    ("Hungary", "Budapest"),
    ("Kenya", "Nairobi"),
    ("China", "Beijing"),
    ("Thailand", "Bangkok"),
    ("Peru", "Lima"),
    ("Cuba", "Havana"),
    ("Denmark", "Copenhagen"),
    ("Finland", "Helsinki"),
    ("Belgium", "Brussels"),
    ("Canada", "Ottawa"),
    ("Australia", "Canberra"),
    ("Argentina", "Buenos Aires"),
    ("Chile", "Santiago"),
    ("Iran", "Tehran"),
    ("Iraq", "Baghdad"),
    ("Turkey", "Ankara"),
    ("India", "Delhi"),
    ("Vietnam", "Hanoi"),
    ("Czechia", "Prague"),
    ("Romania", "Bucharest"),
    ("Ukraine", "Kyiv"),
    ("Scotland", "Edinburgh"),
    ("England", "London"),
    ("Wales", "Cardiff"),
    ("Iceland", "Reykjavik"),
    ("Nigeria", "Abuja"),
]
OPPOSITES = [
    ("hot", "cold"),
    ("up", "down"),
    ("big", "small"),
    ("fast", "slow"),
    ("day", "night"),
    ("open", "closed"),
    ("happy", "sad"),
    ("light", "dark"),
    ("wet", "dry"),
    ("early", "late"),
    ("full", "empty"),
    ("hard", "soft"),
    ("old", "new"),
    ("rich", "poor"),
    ("strong", "weak"),
    ("left", "right"),
    ("win", "lose"),
    ("push", "pull"),
    ("thick", "thin"),
    ("high", "low"),
    ("in", "out"),
    ("yes", "no"),
    ("love", "hate"),
    ("true", "false"),
    ("start", "finish"),
    ("buy", "sell"),
    ("loud", "quiet"),
    ("near", "far"),
    ("first", "last"),
    ("alive", "dead"),
]
COLOURS = [
    ("grass", "green"),
    ("the sky on a clear day", "blue"),
    ("snow", "white"),
    ("coal", "black"),
    ("a ripe banana", "yellow"),
    ("a ripe tomato", "red"),
    ("an orange", "orange"),
    ("milk", "white"),
    ("a lemon", "yellow"),
    ("blood", "red"),
    ("a crow", "black"),
    ("a polar bear", "white"),
    ("a carrot", "orange"),
    ("a lime", "green"),
    ("the sea", "blue"),
    ("a flamingo", "pink"),
    ("chocolate", "brown"),
    ("a frog", "green"),
    ("a strawberry", "red"),
    ("an aubergine", "purple"),
]
SUFFIX = " Answer with one word."


def items() -> list[tuple[str, str]]:
    out = []
    for i, (country, city) in enumerate(CAPITALS):
        if " " not in city:  # one word only
            out.append((i, f"What is the capital of {country}?{SUFFIX}", city))
    out += [(i, f"What is the opposite of {w}?{SUFFIX}", a) for i, (w, a) in enumerate(OPPOSITES)]
    out += [(i, f"What colour is {t}?{SUFFIX}", a) for i, (t, a) in enumerate(COLOURS)]
    return out


def main() -> None:
    here = Path(__file__).resolve().parent
    train, held = [], []
    for i, prompt, answer in items():
        (held if i % 5 == 4 else train).append({"prompt": prompt, "answer": answer})
    for name, rows in (("one-word.jsonl", train), ("one-word-eval.jsonl", held)):
        (here / name).write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
        )
        print(f"{name}: {len(rows)} rows")


if __name__ == "__main__":
    main()
