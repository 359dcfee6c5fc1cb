"""`llmkit pull` end to end: the real CLI in a subprocess, huggingface_hub inside it, and the Hub
double (tests/hub_double.py) behind HF_ENDPOINT, serving repos built from the tiny real models.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import _free_port
from hub_double import HubDouble

from llmkit.files import human_size

REPO = "llmkit-test/tiny-llama"
PICKLE_ONLY = "llmkit-test/pickle-only"
GATED = "llmkit-test/gated"
WIDE = "llmkit-test/wide-llama"  # its weights pass 10 MiB, huggingface_hub's write chunk
ALICE, BOB = "hf_alice_0123456789secret", "hf_bob_0123456789secret"  # alice may read the gated repo
MODEL_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _pickle_weights(model_dir: Path) -> bytes:
    """Real pickle weights (what `pytorch_model.bin` holds), from the model's safetensors."""
    import io

    import torch
    from safetensors.torch import load_file

    buf = io.BytesIO()
    torch.save(load_file(model_dir / "model.safetensors"), buf)
    return buf.getvalue()


def _wide_model(base: Path, dest: Path) -> Path:
    """tiny-llama with a wide MLP: a real 13 MB checkpoint, so a download can stop mid-file."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base)
    config.intermediate_size = 8192
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(dest)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(base / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def hub(tiny_llama_dir, tiny_qwen2_dir, tmp_path_factory):
    files = {p.name: p for p in tiny_llama_dir.iterdir() if p.is_file() and p.name != "llmkit-source.json"}
    pickle = _pickle_weights(tiny_llama_dir)
    extras = {
        "README.md": "# tiny-llama\n",
        ".gitattributes": "*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n",
        "pytorch_model.bin": pickle,
        # Meta's layout: a second copy of the weights under original/, which a pull must not fetch.
        "original/params.json": '{"dim": 64, "n_layers": 2}',
        "original/consolidated.00.pth": pickle,
    }
    v1_config = {**json.loads((tiny_llama_dir / "config.json").read_text()), "max_position_embeddings": 256}
    double = HubDouble()
    double.add_repo(REPO, {**files, **extras})
    double.add_repo(REPO, {**files, "config.json": json.dumps(v1_config)}, revision="v1")
    no_safetensors = {k: v for k, v in files.items() if k != "model.safetensors"}
    double.add_repo(PICKLE_ONLY, {**no_safetensors, "pytorch_model.bin": pickle})
    double.add_repo(GATED, tiny_qwen2_dir, gated="manual")
    double.add_repo(WIDE, _wide_model(tiny_llama_dir, tmp_path_factory.mktemp("wide")))
    double.add_user(ALICE, "alice", access=(GATED,))
    double.add_user(BOB, "bob")
    with double:
        yield double


@pytest.fixture
def pull(hub, llmkit_cli, tmp_path):
    """Run `llmkit <args>` against the double with a fresh HF cache; `pull.cache` is that cache."""
    hub.requests.clear()
    cache = tmp_path / "hf"

    def run(*args, env=None, command="pull"):
        return llmkit_cli(command, *args, env={"HF_ENDPOINT": hub.url, "HF_HOME": str(cache), **(env or {})})

    run.cache = cache
    run.env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(cache)}
    return run


def _error_lines(result) -> list[str]:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith(("Error:", "  hint:"))]


def _file_requests(hub, path: str) -> list:
    return [r for r in hub.requests if r.path.endswith(f"/{path}") and "/resolve/" in r.path]


def test_pull_fetches_safe_files_that_load(pull, hub, tiny_llama_dir):
    result = pull(REPO)
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    commit = hub.repos[REPO].refs["main"]
    assert path == pull.cache / "hub" / "models--llmkit-test--tiny-llama" / "snapshots" / commit
    assert {p.name for p in path.iterdir()} == MODEL_FILES  # no .bin, README, .gitattributes, original/
    for name in MODEL_FILES:
        assert _sha256(path / name) == _sha256(tiny_llama_dir / name), name
    assert not _file_requests(hub, "pytorch_model.bin") and not hub.seen(contains="/original/")
    cdn = hub.seen("GET", server="cdn")
    assert len(cdn) == 1 and cdn[0].status == 200  # the LFS weights came from the CDN

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.no_grad():
        assert model(ids).logits.shape[-1] == model.config.vocab_size

    listed = pull("--json", command="models")
    assert listed.returncode == 0, listed.stderr
    row = next(m for m in json.loads(listed.stdout) if m["name"] == f"{REPO}@main")
    assert row["size"] == sum((path / n).stat().st_size for n in MODEL_FILES) and row["source"] == "hf cache"
    table = pull(command="models")
    assert f"{REPO}@main" in table.stdout and human_size(row["size"]) in table.stdout


@pytest.mark.slow
def test_revision_as_suffix_option_or_commit(pull, hub):
    commit = hub.repos[REPO].refs["v1"]
    for args in ([f"{REPO}@v1"], [REPO, "--revision", "v1"], [f"{REPO}@{commit}"]):
        result = pull(*args)
        assert result.returncode == 0, result.stderr
        path = Path(result.stdout.strip())
        assert path.name == commit
        assert json.loads((path / "config.json").read_text())["max_position_embeddings"] == 256
    assert hub.seen("GET", contains=f"/api/models/{REPO}/revision/v1")

    errors = _error_lines(pull(f"{REPO}@nope"))
    assert errors[0] == f"Error: revision 'nope' not found in {REPO}" and len(errors) == 2

    from llmkit.errors import SourceError
    from llmkit.sources import resolve

    with pytest.raises(SourceError, match="two revisions"):
        resolve(f"{REPO}@v1", revision="main")


def test_patterns_pickle_include_exclude(pull, hub):
    result = pull(
        REPO,
        "--allow-pickle",
        "--include",
        "*.md",
        "--include",
        "original/params.json",
        "--exclude",
        "generation_config.json",
    )
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    got = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    expected = MODEL_FILES - {"generation_config.json"} | {
        "pytorch_model.bin",
        "README.md",
        "original/params.json",
    }
    assert got == expected  # never the second copy of the weights in original/
    assert _sha256(path / "pytorch_model.bin") == hub.file(REPO, "pytorch_model.bin").sha256
    assert not hub.seen(contains="consolidated") and not _file_requests(hub, "generation_config.json")


@pytest.mark.slow
def test_pickle_only_repo_needs_allow_pickle(pull, hub):
    errors = _error_lines(pull(PICKLE_ONLY))
    assert errors[0] == f"Error: {PICKLE_ONLY} only has pickle weights (.bin), which can run code when loaded"
    assert "--allow-pickle" in errors[1]
    assert not hub.seen(contains="/resolve/")  # refused before anything was downloaded

    result = pull(PICKLE_ONLY, "--allow-pickle")
    assert result.returncode == 0, result.stderr
    assert (Path(result.stdout.strip()) / "pytorch_model.bin").is_file()


@pytest.mark.parametrize("token", [None, BOB])  # 401 (anonymous) and 404 (signed in) from the Hub
def test_unknown_model_is_one_line_with_a_hint(pull, hub, token):
    result = pull("llmkit-test/no-such-model", env={"HF_TOKEN": token} if token else None)
    errors = _error_lines(result)
    assert errors == [
        "Error: model 'llmkit-test/no-such-model' not found on the Hub",
        "  hint: check the spelling (org/name); private repos need HF_TOKEN or --token",
    ]
    assert [r.status for r in hub.seen(contains="no-such-model")] == [404 if token else 401]
    if token:
        assert token not in result.stdout + result.stderr


@pytest.mark.slow
def test_gated_repo_needs_a_token_that_is_never_shown(pull, hub):
    outputs = []

    def attempt(*args, env=None):
        result = pull(*args, env=env)
        outputs.append(result.stdout + result.stderr)
        return result

    errors = _error_lines(attempt(GATED))
    assert errors[0] == f"Error: {GATED} is gated: access needs an accepted license and a token"
    assert "set HF_TOKEN" in errors[1]
    assert {r.status for r in hub.seen(contains="/resolve/")} == {401}

    # A token without access, from HF_TOKEN, then from --token with tracebacks on (--debug).
    for args, env in (((), {"HF_TOKEN": BOB}), (("--token", BOB), {"LLMKIT_DEBUG": "1"})):
        hub.requests.clear()
        result = attempt(GATED, *args, env=env)
        assert result.returncode == 1
        if not args:
            errors = _error_lines(result)
            assert errors[0].endswith("(the token given has no access)") and "set HF_TOKEN" in errors[1]
        assert {r.status for r in hub.seen(contains="/resolve/")} == {403}
        # every request carries the token, except the reachability probe of the Hub's root
        assert {r.headers.get("authorization") for r in hub.requests if r.path != "/"} == {f"Bearer {BOB}"}
        probes = [r for r in hub.requests if r.path == "/"]
        assert probes and not any("authorization" in r.headers for r in probes)

    errors = _error_lines(attempt(GATED, env={"HF_TOKEN": "hf_revoked_0123456789secret"}))
    assert errors[0] == f"Error: the Hub rejected the token for {GATED} (invalid or expired)"
    assert "HF_TOKEN" in errors[1]

    hub.requests.clear()
    result = attempt(GATED, env={"HF_TOKEN": ALICE})
    assert result.returncode == 0, result.stderr
    assert (Path(result.stdout.strip()) / "model.safetensors").is_file()
    assert all(
        r.headers.get("authorization") == f"Bearer {ALICE}" for r in hub.seen(server="hub") if r.path != "/"
    )
    cdn = hub.seen(server="cdn")
    assert cdn and all("authorization" not in r.headers for r in cdn)  # the token never leaves the Hub

    for output in outputs:
        for secret in (ALICE, BOB, "hf_revoked_0123456789secret", "0123456789secret"):
            assert secret not in output


@pytest.mark.slow
def test_offline_uses_the_cache_or_says_it_is_missing(pull, hub):
    offline = {"HF_HUB_OFFLINE": "1"}
    missing = pull(REPO, env=offline)
    errors = _error_lines(missing)
    assert (
        errors[0]
        == f"Error: {REPO} is not in the local cache and the Hub cannot be reached (HF_HUB_OFFLINE is set)"
    )
    assert "Using the cached copy" not in missing.stderr  # said only when the cached copy is used
    assert not hub.requests

    online = pull(REPO)
    assert online.returncode == 0, online.stderr
    hub.requests.clear()
    result = pull(f"{REPO}@main", env=offline)
    assert result.returncode == 0, result.stderr
    assert result.stdout == online.stdout and "Using the cached copy" in result.stderr
    assert not hub.requests
    missing = pull(f"{REPO}@v1", env=offline)
    assert "not in the local cache" in _error_lines(missing)[0]
    assert "Using the cached copy" not in missing.stderr


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill", "ctrl-c"])
@pytest.mark.slow
def test_interrupted_download_resumes_with_a_range_request(pull, hub, sig):
    weights = hub.file(WIDE, "model.safetensors")
    assert len(weights.data) > 11 * 2**20
    hub.sent.pop(weights.sha256, None)  # the throttle counts bytes sent since this point
    hub.throttle(WIDE, "model.safetensors", after=10 * 2**20 + 2**19, rate=32 * 1024)
    blobs = pull.cache / "hub" / "models--llmkit-test--wide-llama" / "blobs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmkit", "pull", WIDE],
        env=pull.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        # only the weights' partial: small files' partials come and go (renamed) under our feet
        while not any(p.stat().st_size >= 10 * 2**20 for p in blobs.glob(f"{weights.sha256}.*.incomplete")):
            assert proc.poll() is None and time.monotonic() < deadline, "the download never got 10 MiB in"
            time.sleep(0.05)
    finally:
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=30)
        hub.unthrottle()
    if sig == signal.SIGINT:  # Ctrl-C: stops at once, says so, exit code 130
        assert proc.returncode == 130 and stderr.decode().strip().endswith("Interrupted.")

    # Killed mid-file: the partial blob is aside, nothing sits at a final path.
    snapshot = blobs.parent / "snapshots" / hub.repos[WIDE].refs["main"]
    assert not (blobs / weights.sha256).exists() and not (snapshot / "model.safetensors").exists()
    partial = next(blobs.glob(f"{weights.sha256}.*.incomplete"))
    offset = partial.stat().st_size
    assert 0 < offset < len(weights.data)
    errors = _error_lines(pull(WIDE, env={"HF_HUB_OFFLINE": "1"}))
    assert errors[0].startswith(f"Error: the cached copy of {WIDE} is incomplete")
    # A small file cut off at the same moment (it happens on a loaded machine): its partial
    # (named by the git sha1) must not outlive the resumed pull either.
    (blobs / f"{hub.file(WIDE, 'config.json').oid}.0badc0de.incomplete").write_bytes(b'{"mod')

    hub.requests.clear()
    result = pull(WIDE)
    assert result.returncode == 0, result.stderr
    assert "Resuming model.safetensors" in result.stderr
    ranged = [r for r in hub.seen("GET", server="cdn") if r.headers.get("range")]
    assert [(r.headers["range"], r.status) for r in ranged] == [(f"bytes={offset}-", 206)]
    assert "authorization" not in ranged[0].headers
    assert _sha256(Path(result.stdout.strip()) / "model.safetensors") == weights.sha256
    assert not list(blobs.glob("*.incomplete"))


def test_double_speaks_the_hub_protocol(hub, tmp_path):
    """What huggingface_hub itself sees: model info, LFS metadata, renamed repos, missing entries."""
    from huggingface_hub import HfApi, errors, get_hf_file_metadata, hf_hub_download, hf_hub_url

    api = HfApi(endpoint=hub.url)
    info = api.model_info(REPO, files_metadata=True)
    assert info.sha == hub.repos[REPO].refs["main"] and info.gated is False
    weights = next(s for s in info.siblings if s.rfilename == "model.safetensors")
    assert weights.lfs.sha256 == hub.file(REPO, "model.safetensors").sha256
    assert api.model_info(GATED).gated == "manual"  # the card is public, the files are not

    meta = get_hf_file_metadata(hf_hub_url(REPO, "model.safetensors", endpoint=hub.url), token=False)
    assert (
        meta.etag == weights.lfs.sha256
        and meta.size == weights.size
        and meta.location.startswith(hub.cdn_url)
    )
    meta = get_hf_file_metadata(hf_hub_url(REPO, "config.json", endpoint=hub.url), token=False)
    assert meta.etag == hub.file(REPO, "config.json").oid and meta.commit_hash == info.sha

    hub.rename("llmkit-test/old-name", REPO)
    path = hf_hub_download("llmkit-test/old-name", "config.json", cache_dir=tmp_path, endpoint=hub.url)
    assert Path(path).read_bytes() == hub.file(REPO, "config.json").data
    with pytest.raises(errors.RemoteEntryNotFoundError):
        hf_hub_download(REPO, "missing.txt", cache_dir=tmp_path, endpoint=hub.url)
    with pytest.raises(errors.RevisionNotFoundError):
        api.list_repo_files(REPO, revision="nope")


@pytest.mark.slow
def test_unreachable_hub_falls_back_to_the_cached_copy(pull, hub):
    online = pull(REPO)
    assert online.returncode == 0, online.stderr
    dead = f"http://127.0.0.1:{_free_port()}"
    result = pull(REPO, env={"HF_ENDPOINT": dead})
    assert result.returncode == 0, result.stderr
    assert result.stdout == online.stdout
    assert "the Hub is unreachable" in result.stderr and "using the cached copy" in result.stderr
    missing = pull("llmkit-test/never-pulled", env={"HF_ENDPOINT": dead})
    assert missing.returncode == 1 and "is not in the local cache" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.slow
def test_a_reference_that_is_a_path_never_goes_to_the_hub(hub, llmkit_cli, tmp_path):
    """`runs/NAME` and `org/name` with a local `org/` look like Hub ids; a missing local path must
    be reported as missing, without one request to the Hub."""
    (tmp_path / "runs" / "tiny-run").mkdir(parents=True)
    (tmp_path / "llmkit-test").mkdir()  # a local folder named like the Hub org
    hub.requests.clear()
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")}
    for ref, message in (
        ("runs/tiny-rn", "no such directory: runs/tiny-rn"),
        ("./runs/tiny-rn", "no such directory: runs/tiny-rn"),
        (REPO, f"no such directory: {REPO}"),
    ):
        errors = _error_lines(llmkit_cli("pull", ref, env=env, cwd=tmp_path))
        assert errors[0] == f"Error: {message}"
    assert not hub.requests
    (tmp_path / "llmkit-test").rmdir()  # without the folder, the same id is the Hub's again
    result = llmkit_cli("pull", REPO, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
