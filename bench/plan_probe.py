"""`llmkit plan --probe` against the run it predicts: probe time / real-run time, side by side.

    python bench/plan_probe.py [--recipe tiny] [--rounds 6] [--threads 1]

Each round runs the probe (`plan(..., probe=True)`: a child `python -m llmkit.training`, 11 steps,
the first left out) and then a real `llmkit train` of the same recipe with the same 11 steps,
back to back, so both see the same machine. They train the same batches (tests/test_plan.py
proves it), so their step times should agree. On a shared machine a step is sometimes delayed
by a neighbour, never sped up, so each side's time is the sum over steps of that step's fastest
duration across rounds ("least disturbed"); the whole-run medians are printed too.

One intra-op thread by default: on a shared 2-core machine two OpenMP threads wait at every op
for a core a neighbour holds, which makes single tiny-model runs vary 50x.
Writes bench/results/plan_probe.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "plan_probe.json"
STEPS = ["train.eval_every=0", "train.save_every=0", "data.eval_fraction=0", "train.max_steps=11"]


def least_disturbed(runs: list[dict]) -> float:
    return sum(map(min, zip(*(r["step_seconds"] for r in runs), strict=True)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="tiny")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for probe and run")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch loads; children inherit it

    from llmkit.devices import cpu_name
    from llmkit.plan import plan, probe_rate

    print(
        f"CPU: {cpu_name()}; recipe {args.recipe}; {args.rounds} rounds; {args.threads} thread(s)", flush=True
    )
    probes, reals = [], []
    with tempfile.TemporaryDirectory(prefix="llmkit-bench-probe-") as tmp:
        for k in range(args.rounds):
            overrides = [*STEPS, f"train.output_dir={Path(tmp) / f'p{k}'}"]
            probes.append(plan(args.recipe, overrides, probe=True).probe)
            out = Path(tmp) / f"r{k}"
            r = subprocess.run(
                [sys.executable, "-m", "llmkit", "train", args.recipe, *STEPS, f"train.output_dir={out}"],
                capture_output=True,
                text=True,
                env={**os.environ, "LLMKIT_QUIET": "1"},
            )
            if r.returncode != 0:
                sys.exit(f"llmkit train failed: {r.stderr.strip().splitlines()[-1:]}")
            rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
            reals.append(probe_rate(rows))
            print(
                f"round {k + 1}: probe {probes[-1]['seconds_per_step'] * 1e3:.2f} ms/step, "
                f"run {reals[-1]['seconds_per_step'] * 1e3:.2f} ms/step",
                flush=True,
            )
    probe_s, real_s = least_disturbed(probes), least_disturbed(reals)
    medians = {
        name: statistics.median(r["seconds_per_step"] for r in runs)
        for name, runs in (("probe", probes), ("run", reals))
    }
    result = {
        "cpu": cpu_name(),
        "recipe": args.recipe,
        "rounds": args.rounds,
        "threads": args.threads,
        "steps_timed": probes[0]["steps"],
        "least_disturbed_s": {"probe": round(probe_s, 5), "run": round(real_s, 5)},
        "ratio_probe_over_run": round(probe_s / real_s, 3),
        "median_s_per_step": {k: round(v, 5) for k, v in medians.items()},
        "median_ratio_probe_over_run": round(medians["probe"] / medians["run"], 3),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"probe / run: {result['ratio_probe_over_run']:.3f} (least-disturbed sums "
        f"{probe_s * 1e3:.1f} / {real_s * 1e3:.1f} ms over {result['steps_timed']} steps); "
        f"medians {result['median_ratio_probe_over_run']:.3f}\nwrote {RESULTS.relative_to(ROOT)}"
    )


if __name__ == "__main__":
    main()
