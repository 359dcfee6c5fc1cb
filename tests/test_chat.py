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


def test_system_prompt_on_a_template_that_rejects_it_is_a_clear_error(tiny_llama_dir, tmp_path, llmkit_cli):
    """Gemma 2-style templates raise on a system turn: --system says so; /system is refused politely."""
    import shutil

    model = tmp_path / "nosys"
    shutil.copytree(tiny_llama_dir, model)
    (model / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    )
    result = llmkit_cli("chat", str(model), "hi", "--system", "Be terse.", "--max-new-tokens", "4")
    assert result.returncode == 1 and "rejects system messages" in result.stderr
    assert "Traceback" not in result.stderr
    result = llmkit_cli("chat", str(model), "--max-new-tokens", "4", input="/system Be terse.\nhello\n/bye\n")
    assert result.returncode == 0, result.stderr
    assert "rejects system messages" in result.stderr


@pytest.mark.slow
def test_smollm2_knows_the_capital_of_france(llmkit_cli, smollm2_dir):
    result = llmkit_cli(
        "chat", "smollm2-135m-instruct", "What is the capital of France?", "--max-new-tokens", "24"
    )
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
