"""Image embedding throughput on CPU: llmkit's chosen path vs plain torch eager, same model.

    python bench/image_embed.py [--n 160] [--rounds 5]

The model is the embedded EfficientNet-Lite0 (1280-d pooled features). The baseline is plain
torch eager inference of the same module: `net.extract_features(x).mean((2, 3))` under
`torch.inference_mode()`, with the same batch (16), the same thread count (llmkit's), the same
photos and the same preprocessing (read_image: EXIF, resize 224, centre crop; (x − 127) / 128).
llmkit's path is `load_encoder("efficientnet-lite0")` (backend auto: measured on this CPU, held
to cosine ≥ 0.9999 per photo against torch fp32); every available path is timed as well.

Two measures, each in alternating rounds (the order flips every round so neither side always
runs first on a busy machine): "model" is decoded pixels → vectors, "end to end" is JPEG files →
vectors (decoding included, identical code on both sides). Rates are the best round; "paired"
is the median over rounds of path / baseline in the same round (the machine's drift cancels).
The photos are foolbox's 20 ImageNet JPEGs repeated to --n. Writes
bench/results/image_embed.json with the CPU named from /proc/cpuinfo.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "image_embed.json"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=160)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    import torch

    from llmkit.devices import cpu_kernel_flags, cpu_name
    from llmkit.embedding.base import threads
    from llmkit.embedding.encoders import load_encoder
    from llmkit.embedding.image_fast import calibration_photos, candidates
    from llmkit.embedding.images import BATCH, load_lite0, read_image, to_tensor
    from llmkit.embedding.vectors import cosine_rows

    photos = calibration_photos()
    files = [photos[i % len(photos)] for i in range(args.n)]
    pixels = np.stack([read_image(p) for p in files])
    n_threads = threads()

    net = load_lite0()
    torch.set_num_threads(n_threads)

    def torch_eager(px: np.ndarray) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for i in range(0, len(px), BATCH):
                out.append(net.extract_features(to_tensor(px[i : i + BATCH])).mean((2, 3)).numpy())
        return np.concatenate(out)

    def torch_files(paths) -> np.ndarray:
        return torch_eager(np.stack([read_image(p) for p in paths]))

    chosen = load_encoder("efficientnet-lite0", normalize=False)
    encoders = {"chosen": chosen}
    for backend in candidates():
        if backend != "torch":
            encoders[backend] = load_encoder("efficientnet-lite0", backend, "fp32", normalize=False)

    ref = torch_eager(pixels)  # also the warm-up of the baseline
    cos = {}
    for name, enc in encoders.items():
        cos[name] = float(cosine_rows(enc.encode_pixels(pixels), ref).min())  # and their warm-up

    sides = {"torch_eager": (torch_eager, torch_files)} | {
        name: (enc.encode_pixels, enc.encode) for name, enc in encoders.items()
    }
    rates = {measure: {name: [] for name in sides} for measure in ("model", "end_to_end")}
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            model_fn, files_fn = sides[name]
            t0 = time.perf_counter()
            model_fn(pixels)
            rates["model"][name].append(len(pixels) / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            files_fn([str(p) for p in files])
            rates["end_to_end"][name].append(len(files) / (time.perf_counter() - t0))

    def summary(measure: str) -> dict:
        base = rates[measure]["torch_eager"]
        out = {}
        for name, rs in rates[measure].items():
            out[name] = {
                "images_per_s": round(max(rs), 2),
                "rounds_images_per_s": [round(x, 2) for x in rs],
                "paired_ratio_vs_torch": round(
                    statistics.median(a / b for a, b in zip(rs, base, strict=True)), 3
                ),
            }
        return out

    versions = {}
    for dist in ("torch", "onnxruntime", "openvino"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    result = {
        "cpu": cpu_name(),
        "machine": platform.machine(),
        "cpu_flags": cpu_kernel_flags(),
        "cpus": os.cpu_count(),
        "threads": n_threads,
        "shared_machine": "yes: other jobs ran on these cores; read the paired ratios",
        "versions": versions,
        "encoder": "efficientnet-lite0 (1280-d pooled features)",
        "images": len(pixels),
        "batch": BATCH,
        "rounds": args.rounds,
        "chosen_path": chosen.choice["path"] if chosen.choice else f"{chosen.backend}/{chosen.precision}",
        "chosen_measured": chosen.choice.get("measured") if chosen.choice else None,
        "cos_min_vs_torch": {k: round(v, 7) for k, v in cos.items()},
        "model": summary("model"),
        "end_to_end": summary("end_to_end"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"{result['cpu']} ({result['machine']}), {n_threads} threads, {len(pixels)} images, batch {BATCH}")
    print(f"chosen path: {result['chosen_path']}")
    for measure in ("model", "end_to_end"):
        for name, row in result[measure].items():
            c = f"  cos min {cos[name]:.7f}" if name in cos else ""
            print(
                f"{measure:10s} {name:12s} {row['images_per_s']:8.1f} img/s  paired {row['paired_ratio_vs_torch']}x{c}"
            )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
