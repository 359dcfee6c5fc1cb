"""Ollama operations through the real `ollama` client against the protocol double (tests/ollama_double.py).

The double is strict where the real server is (blob digests, create validation, NDJSON error
placement), so these tests fail the way a real server would fail a wrong request.
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

import httpx
import numpy as np
import ollama
import pytest
from conftest import REPO, _free_port, run_llmkit

from llmkit.errors import OllamaError
from llmkit.ollama import (
    create_model,
    embed,
    host_url,
    list_models,
    ps,
    pull,
    run,
    server_version,
    show,
    upload_blob,
)

DOUBLE = REPO / "tests" / "ollama_double.py"


def tiny_gguf(path: Path, file_type: int = 1, general_type: str = "model") -> Path:
    """A small, real GGUF file (one tensor) with the given general.file_type."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_type(general_type)
    writer.add_file_type(file_type)
    writer.add_embedding_length(8)
    writer.add_context_length(128)
    dtype = np.float32 if file_type == 0 else np.float16
    writer.add_tensor("token_embd.weight", np.arange(64, dtype=dtype).reshape(8, 8))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def f16_gguf(tmp_path) -> Path:
    return tiny_gguf(tmp_path / "model.gguf", file_type=1)


def _ollama_env(double=None, **extra) -> dict:
    env = {"OLLAMA_HOST": double.host if double else os.environ["OLLAMA_HOST"], **extra}
    if double:
        env["OLLAMA_MODELS"] = str(double.models_dir)
    return env


# ----------------------------------------------------------------------------- the double itself


def test_blob_upload_status_codes_match_the_server(ollama_double, f16_gguf):
    c = ollama.Client(host=ollama_double.host)
    digest = "sha256:" + hashlib.sha256(f16_gguf.read_bytes()).hexdigest()
    url = f"{ollama_double.url}/api/blobs/{digest}"
    assert httpx.head(url).status_code == 404
    assert httpx.post(url, content=f16_gguf.read_bytes()).status_code == 201
    assert httpx.post(url, content=f16_gguf.read_bytes()).status_code == 200  # already there
    assert httpx.head(url).status_code == 200
    assert c.create_blob(f16_gguf) == digest
    wrong = httpx.post(f"{ollama_double.url}/api/blobs/sha256:{'0' * 64}", content=b"abc")
    assert wrong.status_code == 400 and wrong.json()["error"].startswith(
        'digest mismatch, expected "sha256:000'
    )
    bad = httpx.post(f"{ollama_double.url}/api/blobs/md5:abc", content=b"abc")
    assert bad.status_code == 400 and bad.json() == {"error": "invalid digest format"}


def test_create_rejects_what_the_server_rejects(ollama_double, tmp_path, f16_gguf):
    c = ollama.Client(host=ollama_double.host)
    f16 = c.create_blob(f16_gguf)
    f32 = c.create_blob(tiny_gguf(tmp_path / "f32.gguf", file_type=0))
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    not_gguf = c.create_blob(text)
    cases = [
        (dict(files={"m.gguf": "sha256:" + "1" * 64}), 500, "no such file or directory"),
        (
            dict(files={"m.gguf": f32}, quantize="q4_K_M"),
            500,
            "quantization is only supported for F16, BF16 and F32",
        ),
        (dict(files={"m.gguf": f16}, quantize="q5_K_M"), 500, "unsupported quantization type Q5_K_M"),
        (dict(files={"m.gguf": not_gguf}), 400, "supplied file was not in GGUF format"),
        (dict(files={"notes.txt": not_gguf}), 400, "unknown type"),
        (dict(files={"/abs/m.gguf": f16}), 400, "file path must be relative"),
        (dict(files={"m.gguf": f16}, template="{{ if .System }}"), 400, "template error"),
        (dict(), 400, "neither 'from' or 'files' was specified"),
    ]
    for kwargs, status, message in cases:
        with pytest.raises(ollama.ResponseError) as err:
            c.create(model="m", **kwargs)
        assert err.value.status_code == status and message in err.value.error, kwargs
    # Streamed, an error after the first progress line arrives in-band (status -1).
    with pytest.raises(ollama.ResponseError) as err:
        list(c.create(model="m", files={"m.gguf": f32}, quantize="q8_0", stream=True))
    assert err.value.status_code == -1
    assert ollama_double.model_names() == []


def test_double_runs_as_a_process_after_a_delay(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, str(DOUBLE), "--port", str(port), "--models", str(tmp_path), "--delay", "0.5"]
    )
    try:
        deadline = time.monotonic() + 20
        version = None
        while version is None and time.monotonic() < deadline:
            try:
                version = httpx.get(f"http://127.0.0.1:{port}/api/version", timeout=1).json()["version"]
            except httpx.HTTPError:
                time.sleep(0.1)
        assert version
    finally:
        proc.terminate()
        proc.wait(10)


# ----------------------------------------------------------------------------- host and version


@pytest.mark.parametrize(
    "value, url",
    [
        ("", "http://127.0.0.1:11434"),
        ("1.2.3.4", "http://1.2.3.4:11434"),
        (":5678", "http://127.0.0.1:5678"),
        ("https://example.com", "https://example.com:443"),
        ("http://[::1]:9", "http://[::1]:9"),
        ("example.com/path", "http://example.com:11434/path"),
    ],
)
def test_host_url_follows_ollama_defaults(monkeypatch, value, url):
    monkeypatch.setenv("OLLAMA_HOST", value)
    assert host_url() == url


@pytest.mark.parametrize("value", ["127.0.0.1:99999", "http://x:abc", "ftp://host", "two words:1"])
def test_malformed_ollama_host_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv("OLLAMA_HOST", value)
    with pytest.raises(OllamaError, match="OLLAMA_HOST is malformed"):
        list_models()


def test_malformed_ollama_host_from_the_cli():
    r = run_llmkit("ollama", "list", env={"OLLAMA_HOST": "http://localhost:port"})
    assert r.returncode == 1
    assert "Error: OLLAMA_HOST is malformed: 'http://localhost:port'" in r.stderr
    assert "Traceback" not in r.stderr


def test_server_version(ollama_double, monkeypatch):
    assert server_version() == ollama_double.version
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{_free_port()}")
    assert server_version() is None


def test_server_down_says_how_to_start_it(monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{_free_port()}")
    for call in (list_models, lambda: pull("llama3.2"), lambda: run("m", "hi", write=lambda s: None)):
        with pytest.raises(OllamaError, match="is not reachable") as err:
            call()
        assert "llmkit ollama serve" in err.value.hint
    r = run_llmkit("ollama", "pull", "llama3.2")
    assert r.returncode == 1 and "is not reachable" in r.stderr and "llmkit ollama serve" in r.stderr


# ----------------------------------------------------------------------------- serve


def _fake_ollama(bin_dir: Path, body: str) -> Path:
    """A real `ollama` executable on PATH; `serve` starts the double as `ollama serve` would."""
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / "ollama"
    exe.write_text(f"#!/bin/sh\nif [ \"$1\" = serve ]; then\n{body}\nfi\necho 'ollama version is 0.12.6'\n")
    exe.chmod(0o755)
    return bin_dir


@pytest.mark.slow
def test_serve_starts_the_binary_and_waits_until_healthy(tmp_path):
    bin_dir = _fake_ollama(
        tmp_path / "bin",
        f'echo "gpu env: $CUDA_VISIBLE_DEVICES"\nexec "{sys.executable}" "{DOUBLE}" --delay 1.0',
    )
    port = _free_port()
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "OLLAMA_HOST": f"127.0.0.1:{port}",
        "OLLAMA_MODELS": str(tmp_path / "models"),
        "LLMKIT_HOME": str(tmp_path / "home"),
    }
    r = run_llmkit("ollama", "serve", "--cpu", "--json", env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    started = json.loads(r.stdout)
    try:
        assert started["status"] == "started" and started["version"] == "0.12.6"
        assert httpx.get(f"http://127.0.0.1:{port}/api/version").status_code == 200
        assert "gpu env: -1" in Path(started["log"]).read_text()  # --cpu hides the GPUs
        again = run_llmkit("ollama", "serve", env=env)
        assert again.returncode == 0 and "already running" in again.stdout
    finally:
        os.kill(started["pid"], signal.SIGTERM)


def test_serve_reports_a_binary_that_dies(tmp_path):
    bin_dir = _fake_ollama(tmp_path / "bin", 'echo "Error: listen tcp: address already in use" >&2\nexit 1')
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LLMKIT_HOME": str(tmp_path / "home")}
    r = run_llmkit("ollama", "serve", env=env, timeout=60)
    assert r.returncode == 1
    assert "exited with code 1" in r.stderr and "address already in use" in r.stderr


def test_serve_without_the_binary_gives_the_install_hint(tmp_path):
    r = run_llmkit("ollama", "serve", env={"PATH": str(tmp_path)}, timeout=60)
    assert r.returncode == 1
    assert "`ollama` program is not installed" in r.stderr
    assert "hint: install it with" in r.stderr


# ----------------------------------------------------------------------------- pull


def test_pull_streams_progress_per_layer(ollama_double):
    ollama_double.add_registry_model("llama3.2", size=300_000, chunk=50_000)
    result = pull("llama3.2")
    model_layer, template_layer = result["layers"]
    assert model_layer["total"] == model_layer["completed"] == 300_000
    assert model_layer["updates"] >= 6  # one bar, updated as the download went
    assert template_layer["completed"] == template_layer["total"]
    assert ollama_double.find("llama3.2") == "llama3.2:latest"
    statuses = [line.get("status") for line in ollama_double.streams[-1][1]]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"


def test_pull_cli(ollama_double):
    ollama_double.add_registry_model("qwen2.5:0.5b", size=100_000)
    r = run_llmkit("ollama", "pull", "qwen2.5:0.5b", env=_ollama_env(ollama_double))
    assert r.returncode == 0, r.stderr
    assert "Pulled qwen2.5:0.5b" in r.stdout
    assert "pulling manifest" in r.stderr and "verifying sha256 digest" in r.stderr


def test_error_inside_a_200_stream_is_one_line(ollama_double):
    ollama_double.add_registry_model(
        "flaky", size=200_000, chunk=50_000, fail_after=100_000, error="max retries exceeded: unexpected EOF"
    )
    r = run_llmkit("ollama", "pull", "flaky", env=_ollama_env(ollama_double))
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: pull flaky failed: max retries exceeded: unexpected EOF"]
    assert ollama_double.streams[-1][1][-1] == {"error": "max retries exceeded: unexpected EOF"}
    with pytest.raises(OllamaError, match="pull model manifest: file does not exist") as err:
        pull("no-such-model")
    assert "ollama.com/library" in err.value.hint


@pytest.mark.slow
def test_ctrl_c_during_pull_exits_130_and_the_pull_resumes(ollama_double):
    size = 2_000_000
    # ~10 s of download: wide enough that a loaded CI machine cannot finish it before the Ctrl-C
    ollama_double.add_registry_model("big", size=size, chunk=20_000, chunk_delay=0.1)
    env = {**os.environ, **_ollama_env(ollama_double)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmkit", "ollama", "pull", "big"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a terminal's Ctrl-C: background jobs (e.g. CI under nohup) inherit SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while not any(v >= 100_000 for v in ollama_double.partial.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "again to resume" in err
    time.sleep(0.3)  # the double notices the hang-up at its next write
    ((digest, done),) = ollama_double.partial.items()
    assert 0 < done < size and ollama_double.find("big") is None
    ollama_double.registry["big:latest"].chunk_delay = 0
    pull("big")
    first = next(line for line in ollama_double.streams[-1][1] if line.get("digest") == digest)
    assert first["completed"] >= done  # resumed, not restarted
    assert ollama_double.find("big") == "big:latest"


# ----------------------------------------------------------------------------- list, show, rm, ps


@pytest.mark.slow
def test_list_show_ps_rm(ollama_double, f16_gguf):
    ollama_double.add_model(
        "mine:v1",
        f16_gguf,
        template="{{ .Prompt }}",
        system="Be terse.",
        parameters={"stop": ["<|im_end|>", "<|endoftext|>"], "temperature": 0.2},
    )
    env = _ollama_env(ollama_double)
    listed = json.loads(run_llmkit("ollama", "list", "--json", env=env).stdout)
    assert [(m["name"], m["family"], m["quantization"]) for m in listed] == [("mine:v1", "llama", "F16")]
    shown = show("mine:v1")
    assert shown["parameters"] == {"stop": ["<|im_end|>", "<|endoftext|>"], "temperature": 0.2}
    assert shown["system"] == "Be terse." and shown["template"] == "{{ .Prompt }}"
    assert shown["context_length"] == 128 and shown["parameter_size"] == "64"
    text = run_llmkit("ollama", "show", "mine:v1", env=env)
    assert text.returncode == 0 and "Be terse." in text.stdout and "temperature = 0.2" in text.stdout
    assert ps() == []
    run("mine:v1", "hello", write=lambda s: None)
    assert [m["name"] for m in ps()] == ["mine:v1"]
    r = run_llmkit("ollama", "rm", "mine:v1", env=env)
    assert r.returncode == 0 and "Deleted mine:v1" in r.stdout
    assert list_models() == []


@pytest.mark.slow
def test_unknown_model_gives_the_server_message_and_the_list_hint(ollama_double):
    for args in (["show", "ghost"], ["rm", "ghost"], ["run", "ghost", "hi"]):
        r = run_llmkit("ollama", *args, env=_ollama_env(ollama_double))
        assert r.returncode == 1
        assert "model 'ghost' not found" in r.stderr, args
        assert "llmkit ollama list" in r.stderr


# ----------------------------------------------------------------------------- run


def test_run_one_shot_streams_and_sends_options_as_a_plain_dict(ollama_double, f16_gguf):
    ollama_double.add_model("m", f16_gguf)
    r = run_llmkit(
        "ollama",
        "run",
        "m",
        "Why is the sky blue?",
        "--system",
        "Be brief.",
        "--temperature",
        "0",
        "--num-ctx",
        "2048",
        "-o",
        "min_p=0.05",
        "-o",
        'stop=["\\n"]',
        env=_ollama_env(ollama_double),
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "You said: Why is the sky blue?\n"
    body = ollama_double.requests[-1][2]
    assert body["stream"] is True
    assert body["options"] == {"temperature": 0.0, "num_ctx": 2048, "min_p": 0.05, "stop": ["\n"]}
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Why is the sky blue?"},
    ]
    bad = run_llmkit("ollama", "run", "m", "x", "-o", "num_ctx=big", env=_ollama_env(ollama_double))
    assert bad.returncode == 1 and 'option "num_ctx" must be of type integer' in bad.stderr


def test_interactive_run_keeps_history(ollama_double, f16_gguf):
    ollama_double.add_model("m", f16_gguf)
    ollama_double.responder = lambda model, messages, options: (
        f"answer {sum(m['role'] == 'user' for m in messages)}"
    )
    lines = iter(["first question", "/system You are a pirate.", "second question", "/bye", "never sent"])
    written: list[str] = []
    run("m", write=written.append, read=lambda prompt: next(lines))
    assert "".join(written) == "answer 1\nanswer 2\n"
    chats = [body for method, path, body in ollama_double.requests if path == "/api/chat"]
    assert len(chats) == 2
    assert chats[1]["messages"] == [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "answer 1"},
        {"role": "user", "content": "second question"},
    ]
    r = run_llmkit("ollama", "run", "m", input="hello\n", env=_ollama_env(ollama_double))  # EOF ends the chat
    assert r.returncode == 0 and "answer 1" in r.stdout


def test_interactive_run_has_the_chat_commands(ollama_double, f16_gguf, capsys):
    """The same loop as `llmkit chat`: /clear (or /reset) keeps the system prompt, /help, /quit."""
    ollama_double.add_model("m", f16_gguf)
    ollama_double.responder = lambda model, messages, options: f"answer {len(messages)}"
    lines = iter(["one", "/clear", "two", "/help", "/reset", "three", "/quit", "never sent"])
    run("m", system="Be brief.", write=lambda s: None, read=lambda prompt: next(lines))
    chats = [body["messages"] for method, path, body in ollama_double.requests if path == "/api/chat"]
    system = {"role": "system", "content": "Be brief."}
    assert chats == [[system, {"role": "user", "content": w}] for w in ("one", "two", "three")]
    assert "/system TEXT" in capsys.readouterr().err


def test_empty_prompt_is_refused_before_any_request(ollama_double):
    r = run_llmkit("ollama", "run", "m", "  ", env=_ollama_env(ollama_double))
    assert r.returncode == 2 and r.stderr.startswith("Error: the prompt is empty") and "hint:" in r.stderr
    assert not [p for _, p, _ in ollama_double.requests if p == "/api/chat"]


# ----------------------------------------------------------------------------- create, embed


def test_create_model_uploads_once_and_creates(ollama_double, f16_gguf):
    create_model(
        "custom",
        f16_gguf,
        template="{{ .Prompt }}",
        system="Be kind.",
        parameters={"stop": ["<|im_end|>"], "min_p": 0.05},
        quantize="q4_K_M",
    )
    m = ollama_double.model("custom")
    assert m["template"] == "{{ .Prompt }}" and m["system"] == "Be kind."
    assert m["parameters"] == {"stop": ["<|im_end|>"], "min_p": 0.05}
    assert m["config"]["file_type"] == "Q4_K_M"
    assert ollama_double.blob_path(m["model_digest"]).read_bytes() == f16_gguf.read_bytes()
    posts = [r for r in ollama_double.requests if r[0] == "POST" and r[1].startswith("/api/blobs/")]
    create_model("custom2", f16_gguf)  # same weights: HEAD says the server has them, no second upload
    assert [r for r in ollama_double.requests if r[0] == "POST" and r[1].startswith("/api/blobs/")] == posts
    assert ollama_double.find("custom2") == "custom2:latest"


def test_create_model_with_an_adapter(ollama_double, tmp_path, f16_gguf):
    adapter = tiny_gguf(tmp_path / "adapter.gguf", general_type="adapter")
    create_model("with-lora", f16_gguf, adapter=adapter, progress=False)
    assert len(ollama_double.model("with-lora")["adapters"]) == 1


def test_create_model_errors(ollama_double, tmp_path, monkeypatch):
    f32 = tiny_gguf(tmp_path / "f32.gguf", file_type=0)
    with pytest.raises(OllamaError, match="create bad failed: quantization is only supported for F16"):
        create_model("bad", f32, quantize="q4_K_M")
    with pytest.raises(OllamaError, match="does not exist"):
        upload_blob(tmp_path / "missing.gguf")
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{_free_port()}")
    with pytest.raises(OllamaError, match="not reachable"):
        create_model("x", f32)


def test_embed_batches_into_a_float32_matrix(ollama_double, f16_gguf):
    ollama_double.add_model("embedder", f16_gguf)
    texts = ["the cat sat", "the cat sat down", "stock markets fell", "a", "b"]
    vectors = embed("embedder", texts, batch_size=2)
    assert vectors.dtype == np.float32 and vectors.shape == (5, 8)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert len([r for r in ollama_double.requests if r[1] == "/api/embed"]) == 3
    assert embed("embedder", []).shape == (0, 0)
    with pytest.raises(OllamaError, match="model 'nope' not found"):
        embed("nope", ["x"])
