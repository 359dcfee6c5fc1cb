"""`--probe`: 10 real training steps in a child process, timed."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llmkit.errors import PlanError
from llmkit.recipe import Recipe, load
from llmkit.runs import read_info, read_metrics


def run_probe(recipe: Recipe, overrides, layout, steps: int = 10) -> dict:
    """Train `steps` real steps in a child process; tokens/s from its per-step metrics.

    The first step (kernel warm-up, allocator growth) is left out of the rate. The child is the
    same `python -m llmkit.training` a run uses, so its peak RSS is also the run's."""
    from llmkit.recipe import dump

    with tempfile.TemporaryDirectory(prefix="llmkit-probe-") as tmp:
        probe_recipe = Path(tmp) / "recipe.yaml"
        data = load(recipe).model_dump(mode="json")
        # relative data paths resolve against the recipe's own file
        for section, key in (("data", "path"), ("data", "eval_path"), ("model", "chat_template")):
            v = data[section][key]
            if v and len(v) < 256 and "\n" not in v and recipe.resolve_path(v).exists():
                data[section][key] = str(recipe.resolve_path(v).resolve())
        data["train"].update(
            max_steps=min(steps + 1, max(2, layout["steps"])),
            output_dir=str(Path(tmp) / "run"),
            eval_every=0,
            save_every=0,
            log_every=1,
        )
        data["data"]["eval_fraction"] = data["data"]["eval_fraction"] if data["data"]["eval_path"] else 0.0
        probe_recipe.write_text(dump(load(data)))
        env = {**os.environ, "LLMKIT_QUIET": "1", "TRANSFORMERS_VERBOSITY": "error"}
        start = time.perf_counter()
        with open(Path(tmp) / "stderr.txt", "w+") as errf:
            hwm = Path(tmp) / "peak_rss"
            proc = subprocess.Popen(
                [sys.executable, "-c", _PROBE_MAIN, str(hwm), str(probe_recipe)],
                stdout=subprocess.DEVNULL,
                stderr=errf,
                env=env,
            )
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            errf.seek(0)
            err = errf.read()
        if proc.returncode != 0:
            last = (err.strip().splitlines() or ["no output"])[-1]
            raise PlanError(
                f"--probe: the training run failed: {last}", "run `llmkit train` to see the full error"
            )
        rows, run = read_metrics(Path(tmp) / "run"), read_info(Path(tmp) / "run")
    return probe_rate(rows) | {
        "wall_s": round(time.perf_counter() - start, 1),
        "precision": run["precision"],
        # the child's own high-water mark: ru_maxrss would include this process's (Linux keeps
        # the parent's across fork + exec), which is wrong whenever the caller is large
        "peak_rss": int(hwm.read_text())
        if hwm.is_file()
        else usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024),
    }


# The probe's training process: `python -m llmkit.training RECIPE`, then its peak RSS (VmHWM) to a file.
_PROBE_MAIN = """
import contextlib, re, runpy, sys
out = sys.argv[1]
sys.argv = ["llmkit.training", *sys.argv[2:]]
try:
    runpy.run_module("llmkit.training", run_name="__main__")
finally:
    with contextlib.suppress(OSError, AttributeError):  # no /proc (macOS): the parent uses ru_maxrss
        status = open("/proc/self/status").read()
        open(out, "w").write(str(int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) * 1024))
"""


def probe_rate(rows: list[dict]) -> dict:
    """tokens/s, seconds per step, tokens and loss of each logged step, the first (warm-up) one left out."""
    steps = [r for r in rows if "tokens_per_s" in r]
    tokens = [b["tokens"] - a["tokens"] for a, b in zip([{"tokens": 0}, *steps], steps, strict=False)]
    secs = [n / r["tokens_per_s"] for n, r in zip(tokens, steps, strict=True)]
    use = slice(1, None) if len(steps) > 1 else slice(None)
    n, s = sum(tokens[use]), sum(secs[use])
    return {
        "steps": len(secs[use]),
        "tokens_per_s": n / s,
        "seconds_per_step": s / len(secs[use]),
        "step_seconds": [round(x, 5) for x in secs[use]],  # per step, to see (or filter) disturbed ones
        "step_tokens": tokens[use],  # what was timed: the run's own batches
        "losses": [r["loss"] for r in steps[use]],
    }
