"""`llmkit chat`: one-shot and interactive generation with the model's chat template."""

from __future__ import annotations

import pytest


def test_one_shot_with_tiny_model(llmkit_cli):
    result = llmkit_cli("chat", "tiny-qwen2", "Hello", "--max-new-tokens", "5")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_interactive_keeps_going_until_bye(llmkit_cli):
    result = llmkit_cli(
        "chat",
        "tiny-llama",
        "--max-new-tokens",
        "3",
        input="hello\n/system Be terse.\nagain\n/bye\nnever read\n",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(">>> ") == 4  # hello, /system, again, /bye; "never read" is not read


def test_model_without_chat_template_is_a_clear_error(tiny_llama_dir, tmp_path, llmkit_cli):
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(tiny_llama_dir, plain)
    (plain / "chat_template.jinja").unlink()
    result = llmkit_cli("chat", str(plain), "hi")
    assert result.returncode == 1
    assert "has no chat template" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_smollm2_knows_the_capital_of_france(llmkit_cli, smollm2_dir):
    result = llmkit_cli(
        "chat", "smollm2-135m-instruct", "What is the capital of France?", "--max-new-tokens", "24"
    )
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
