"""The exported runners: the sentence-transformers model exported once with torch.onnx (cached
under LLMKIT_HOME by weights hash), run by ONNX Runtime (fp32, or int8 by per-channel dynamic
quantization) or compiled by OpenVINO (fp32 or bf16), with length-sorted token-budget batches.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from llmkit.embedding.base import Encoder, _st_config
from llmkit.embedding.base import threads as _default_threads
from llmkit.embedding.vectors import unit_rows
from llmkit.errors import EncoderError, InvalidArgument

EXPORT_VERSION = "1"  # bump when the exported graph changes, so cached conversions are rebuilt


class OnnxEncoder(Encoder):
    """ONNX Runtime over a cached export; tokenizes, sorts by length, batches by token budget."""

    backend_name = "onnx"
    precisions = ("fp32", "int8")

    def _load(self, path: Path, precision: str, threads: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        onnx_path = onnx_model(path, precision)
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.session.get_inputs()}

    def _infer(self, feeds: dict) -> np.ndarray:
        return self.session.run(["sentence_embedding"], feeds)[0]

    def __init__(
        self,
        model_id: str,
        path: Path,
        precision: str = "fp32",
        normalize: bool = True,
        threads: int | None = None,
        batch_tokens: int = 1024,
        chunk: bool = False,
    ):
        from tokenizers import Tokenizer

        if precision not in self.precisions:
            raise InvalidArgument(
                f"--precision {precision} is not available with --backend {self.backend_name}",
                f"use {' or '.join(self.precisions)} (or --backend auto)",
            )
        cfg = _st_config(path)
        self._load(path, precision, threads or _default_threads())
        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        tok.no_padding()  # tokenizer.json may hard-code padding/truncation (128); we match ST (256)
        tok.no_truncation()
        self.tok = tok
        self.pad_id = cfg["pad_id"]
        self.pooling = cfg["pooling"]
        super().__init__(model_id, cfg["dim"], self.backend_name, precision, cfg["max_tokens"], chunk)
        self.normalize = normalize
        # padded tokens per inference call: smaller batches keep activations in cache. On a Zen 4
        # EPYC (2 cores, 1,500 mixed sentences, three sweeps of bench/embed_batch_tokens.py) the
        # fp32 paths ran 2-20 % faster at 1024 than at 4096; bf16 tied
        self.batch_tokens = batch_tokens

    def _encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        if not texts:
            return out
        encs = self.tok.encode_batch(list(texts))
        ids = [e.ids for e in encs]
        limit = self.max_tokens
        long = [i for i, x in enumerate(ids) if len(x) > limit]
        self.truncated += len(long)
        for i in long:  # keep [CLS] … [SEP]: cut the body, keep the final special token
            ids[i] = ids[i][: limit - 1] + ids[i][-1:]
        order = np.argsort([len(x) for x in ids], kind="stable")
        start = 0
        while start < len(order):
            # grow the batch while (rows × longest row) stays within the token budget
            end, longest = start, 0
            while end < len(order):
                n = len(ids[order[end]])
                if (end - start + 1) * max(longest, n) > self.batch_tokens and end > start:
                    break
                longest = max(longest, n)
                end += 1
            rows = order[start:end]
            out[rows] = self._run([ids[i] for i in rows], longest)
            start = end
        if self.normalize:
            unit_rows(out, out=out)
        return out

    def _run(self, batch: list[list[int]], width: int) -> np.ndarray:
        input_ids = np.full((len(batch), width), self.pad_id, np.int64)
        mask = np.zeros((len(batch), width), np.int64)
        for r, row in enumerate(batch):
            input_ids[r, : len(row)] = row
            mask[r, : len(row)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        return self._infer(feeds)


class OpenVinoEncoder(OnnxEncoder):
    """OpenVINO over the same ONNX export (optional extra `llmkit[openvino]`).

    fp32 asks for f32 inference explicitly: on AMX/AVX512-BF16 CPUs OpenVINO would otherwise
    compute in bf16 by default. bf16 is its own path, measured like the others."""

    backend_name = "openvino"
    precisions = ("fp32", "bf16")

    def _load(self, path: Path, precision: str, threads: int) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise EncoderError(
                "--backend openvino needs the openvino package", "pip install 'llmkit[openvino]'"
            ) from exc
        core = ov.Core()
        model = core.read_model(str(onnx_model(path, "fp32")))
        self.input_names = {name for p in model.inputs for name in p.get_names()}
        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
        }
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()

    def _infer(self, feeds: dict) -> np.ndarray:
        result = self.request.infer(feeds)
        return np.asarray(result[self.compiled.output("sentence_embedding")], np.float32).copy()


def onnx_model(path: Path, precision: str) -> Path:
    """Export (once) and quantize (once) a model; cached under LLMKIT_HOME by weights hash."""
    from llmkit.files import home, sha256_file
    from llmkit.ui import info

    weights = path / "model.safetensors"
    if not weights.exists():
        raise EncoderError(
            f"{path} has no model.safetensors", "the ONNX backend exports safetensors weights only"
        )
    cache = home() / "embed" / f"onnx-{sha256_file(weights)[:16]}-v{EXPORT_VERSION}"
    cache.mkdir(parents=True, exist_ok=True)
    fp32, target = cache / "model-fp32.onnx", cache / f"model-{precision}.onnx"
    if not fp32.exists():
        info(f"Exporting {path} to ONNX once (cached in {cache})")
        _atomic(fp32, lambda tmp: _export(path, tmp))
    if not target.exists() and precision == "int8":
        info("Quantizing to int8 (per-channel, dynamic; once)")
        _atomic(target, lambda tmp: _quantize(fp32, tmp))
    return target


def _quantize(src: Path, dest: Path) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # ONNX Runtime logs "Please consider to run pre-processing before quantization" through the
    # root logger on every call; its pre-processing (shape inference) is advice for static
    # quantization and changes nothing in this dynamic, per-channel one
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(str(src), str(dest), per_channel=True, weight_type=QuantType.QInt8)
    finally:
        logging.disable(previous)


def _atomic(final: Path, write) -> None:
    """Concurrent or killed runs never see half a file (the temp name keeps .onnx for onnxruntime)."""
    from llmkit.files import atomic_path

    with atomic_path(final) as tmp:
        write(tmp)


def _export(path: Path, dest: Path) -> None:
    """torch.onnx export of transformer + pooling (normalization stays in numpy)."""
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    pooling = _st_config(path)["pooling"]
    model = AutoModel.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager").eval()
    takes_types = "token_type_ids" in model.forward.__code__.co_varnames

    class Pooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kw = {"token_type_ids": token_type_ids} if takes_types else {}
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state
            if pooling == "cls":
                return hidden[:, 0]
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            if pooling == "max":
                return (hidden + (1 - m) * -1e9).max(dim=1).values
            return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)

    ids = torch.ones((2, 8), dtype=torch.long)
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if takes_types else [])
    args = (ids, ids, torch.zeros_like(ids)) if takes_types else (ids, ids)
    axes = {n: {0: "batch", 1: "seq"} for n in names} | {"sentence_embedding": {0: "batch"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shapes the dynamic axes already cover
        torch.onnx.export(
            Pooled(),
            args,
            str(dest),
            input_names=names,
            output_names=["sentence_embedding"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
            do_constant_folding=True,
        )
