"""Benchmark: real chat templates served by Ollama — llmkit's derived Go template vs Ollama's own choice.

Templates are read at benchmark time, never committed: llama.cpp's `models/templates/*.jinja`
from the llama-cpp-python sdist (pip download), and Ollama's built-in Go templates with their
`index.json` from a checkout of github:ollama/ollama (--ollama-repo: a git dir, read with
`git show`). Each template is put on a tiny tokenizer (tiny-llama's, with the special tokens the
template names added), and three conversations (user; user-assistant-user; system-user) are
rendered by transformers (the truth) and by real Go (tests/gorender) executing:
  - llmkit's Go path: the template `llmkit export` derives and proves (export-time evaluator),
  - Ollama's own choice: the built-in template nearest by edit distance (< 100), else `{{ .Prompt }}`.
A conversation the HF template itself rejects is not counted.

    .venv/bin/python bench/templates.py [--ollama-repo /work/.mirror/ollama+ollama/repo]
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
LLAMA_CPP_PYTHON = "0.3.36"
CONVS = {
    "user": [{"role": "user", "content": "What is the capital of France?"}],
    "multi": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Name a colour.\nJust one."},
    ],
    "system": [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Where is the treasure?"},
    ],
}


def llama_cpp_templates(work: Path) -> dict[str, str]:
    sdist = work / "sdist"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
        + [f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(sdist)],
        check=True,
    )
    tar = next(sdist.glob("llama_cpp_python-*.tar.gz"))
    out = {}
    with tarfile.open(tar) as tf:
        for m in tf.getmembers():
            if "/vendor/llama.cpp/models/templates/" in m.name and m.name.endswith(".jinja"):
                out[Path(m.name).stem] = tf.extractfile(m).read().decode()
    return out


def ollama_builtins(repo: Path | None) -> list[dict] | None:
    if repo is None or not repo.exists():
        return None

    def show(path):
        return subprocess.run(
            ["git", "--git-dir", str(repo), "show", f"HEAD:{path}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    index = json.loads(show("template/index.json"))
    for entry in index:
        entry["go"] = show(f"template/{entry['name']}.gotmpl").replace("\r\n", "\n")
    return index


def levenshtein(a: str, b: str, cap: int = 100) -> int:
    """Edit distance, cut off at `cap` (Ollama only uses distances below 100)."""
    if abs(len(a) - len(b)) >= cap:
        return cap
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
        if min(cur) >= cap:
            return cap
        prev = cur
    return min(prev[-1], cap)


def tokenizer_for(base, jinja: str):
    tok = copy.deepcopy(base)
    names = set(re.findall(r"<\|[^|<>\s]{1,40}\|>|<[a-z_]{2,30}>|<｜[^｜]{1,40}｜>", jinja))
    names -= {tok.bos_token, tok.eos_token}
    if names:
        tok.add_special_tokens({"additional_special_tokens": sorted(names)})
    tok.chat_template = jinja
    return tok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ollama-repo", type=Path, default=Path("/work/.mirror/ollama+ollama/repo"))
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/templates.json")
    args = ap.parse_args()

    import go_template
    from transformers import AutoTokenizer

    from llmkit.errors import ExportError
    from llmkit.exporter import templates
    from llmkit.tiny import tiny_model_dir

    go = go_template.build()
    base = AutoTokenizer.from_pretrained(tiny_model_dir("tiny-llama"))
    with tempfile.TemporaryDirectory() as tmp:
        jinjas = llama_cpp_templates(Path(tmp))
    builtins = ollama_builtins(args.ollama_repo)
    rows, t0 = [], time.time()
    for name, jinja in sorted(jinjas.items()):
        tok = tokenizer_for(base, jinja)
        bos, eos = tok.bos_token, tok.eos_token
        add_bos = tok("A").input_ids[0] == tok.bos_token_id
        want = {}
        for key, conv in CONVS.items():
            hf = templates.hf_render(tok, jinja, conv)
            want[key] = None if hf is None else templates.expected_go_output(hf, bos, add_bos)
        row = {"template": name, "llmkit": {}, "ollama": {}}
        try:  # exactly what export does: derive, prove with the export-time evaluator
            chat = templates.derive(tok, jinja, bos=bos, add_bos=add_bos, eos=eos)
            row["stops"] = chat.stops
        except ExportError as exc:
            chat, row["refused"] = None, exc.message[:300]
        if chat is not None:
            jobs = [{"template": chat.go, "messages": c, "system": ""} for c in CONVS.values()]
            got = dict(zip(CONVS, go.render_many(jobs), strict=True))
        for key in CONVS:
            if want[key] is None:
                row["llmkit"][key] = "n/a"
            elif chat is None:
                row["llmkit"][key] = "refused"
            else:
                row["llmkit"][key] = "exact" if got[key] == want[key] else "wrong"
        if builtins is not None:
            best = min(builtins, key=lambda e: levenshtein(jinja, e["template"]))
            dist = levenshtein(jinja, best["template"])
            chosen = best["go"] if dist < 100 else "{{ .Prompt }}"
            row["ollama_choice"] = best["name"] if dist < 100 else None
            jobs = [{"template": chosen, "messages": c, "system": ""} for c in CONVS.values()]
            ogot = dict(zip(CONVS, go.render_many(jobs), strict=True))
            for key in CONVS:
                if want[key] is None:
                    row["ollama"][key] = "n/a"
                else:
                    row["ollama"][key] = "exact" if ogot[key] == want[key] else "wrong"
        rows.append(row)
        print(
            f"{name:55s} llmkit {row['llmkit']}  ollama {row.get('ollama_choice')} {row['ollama']}",
            flush=True,
        )

    def tally(side):
        out = {"exact": 0, "refused": 0, "wrong": 0}
        for r in rows:
            for v in r[side].values():
                if v != "n/a":
                    out[v] += 1
        return out

    mine, theirs = tally("llmkit"), tally("ollama") if builtins is not None else None
    total = sum(mine.values())
    import platform

    result = {
        "templates": len(rows),
        "conversations": total,
        "llmkit_go": mine,
        "ollama_own_choice": theirs,
        "seconds": round(time.time() - t0, 1),
        "cpu": platform.processor() or platform.machine(),
        "source": f"llama-cpp-python=={LLAMA_CPP_PYTHON} models/templates; ollama template/ at "
        + (
            subprocess.run(
                ["git", "--git-dir", str(args.ollama_repo), "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
            ).stdout.strip()
            if builtins
            else "n/a"
        ),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    tmp.rename(args.out)
    print(f"\nllmkit Go path: {mine} of {total} conversations the HF templates render")
    if theirs:
        print(f"Ollama's own choice: {theirs}")
    print(
        f"ratio: llmkit exact {mine['exact'] / total:.1%}, wrong {mine['wrong']}"
        + (
            f"; Ollama's choice exact {theirs['exact'] / total:.1%}, wrong {theirs['wrong']}"
            if theirs
            else ""
        )
    )


if __name__ == "__main__":
    main()
