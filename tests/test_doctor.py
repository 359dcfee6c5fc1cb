"""`llmkit doctor`: the table of what is present, never the token itself."""

from __future__ import annotations

import json


def test_doctor_json_reports_hardware_and_tools(llmkit_cli):
    secret = "hf_SECRETtokenVALUE123"
    result = llmkit_cli("doctor", "--json", env={"HF_TOKEN": secret})
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    for key in (
        "python",
        "torch",
        "cpu",
        "bf16",
        "QLoRA (4-bit)",
        "bitsandbytes",
        "accelerate config",
        "HF token",
        "HF cache",
        "ollama binary",
        "ollama server",
        "llama-cpp-python",
        "free disk (llmkit home)",
    ):
        assert key in data, key
    assert data["HF token"] == "yes"
    assert data["ollama server"] == "not running"  # conftest points OLLAMA_HOST at a closed port
    assert data["QLoRA (4-bit)"] == "no"  # CPU-only CI
    assert secret not in result.stdout + result.stderr


def test_doctor_table_shows_running_server(llmkit_cli, ollama_double):
    result = llmkit_cli("doctor")
    assert result.returncode == 0, result.stderr
    assert "llmkit doctor" in result.stdout
    line = next(row for row in result.stdout.splitlines() if "ollama server" in row)
    assert ollama_double.version in line
    token = llmkit_cli("doctor", "--json", env={"HF_TOKEN": ""})
    assert json.loads(token.stdout)["HF token"] == "no"
