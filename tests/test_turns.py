"""llmkit.turns: the one answer to "which tokens end a turn" (and "does it add BOS") that chat,
export's --verify, the Modelfile's stops, the GGUF's eot and GRPO sampling all use."""

from __future__ import annotations

import pytest

from llmkit.turns import adds_bos, end_of_turn

GEMMA = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
ALPACA = (
    "{% for m in messages %}{% if m['role'] == 'user' %}"
    "{{ '### Instruction:\\n' + m['content'] + '\\n\\n### Response:\\n' }}"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token + '\\n\\n' }}{% endif %}{% endfor %}"
)
PLAIN_TEXT = (  # turns closed by text only, no special token at all
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ 'User: ' + m['content'] + '\\nAssistant:' }}"
    "{% else %}{{ ' ' + m['content'] + '\\n' }}{% endif %}{% endfor %}"
)


@pytest.fixture(scope="module")
def llama_tok(tiny_llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


@pytest.fixture(scope="module")
def qwen_tok(tiny_qwen2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_qwen2_dir)


@pytest.fixture(scope="module")
def gemma_tok(tiny_llama_dir):
    """Gemma's turn tokens as real special tokens, EOS another token (a base Gemma given a
    chat template by its recipe)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tok.chat_template = GEMMA
    return tok


def test_chatml_ends_at_im_end_then_the_next_turn(qwen_tok):
    ends = end_of_turn(qwen_tok)
    assert ends.turn_token == "<|im_end|>" and ends.tokens == ("<|im_end|>", "<|im_start|>")
    assert list(ends.ids) == qwen_tok.convert_tokens_to_ids(["<|im_end|>", "<|im_start|>"])
    assert ends.texts == () and not ends.completion


def test_llama3_ends_at_eot_id_never_at_bos(llama_tok):
    ends = end_of_turn(llama_tok)
    assert ends.tokens[0] == "<|eot_id|>" == ends.turn_token
    assert "<|begin_of_text|>" not in ends.tokens and "<|start_header_id|>" in ends.tokens
    assert ends.turn_id == llama_tok.convert_tokens_to_ids("<|eot_id|>")


def test_gemma_end_of_turn_is_not_eos_and_both_end_a_turn(gemma_tok):
    ends = end_of_turn(gemma_tok, {"eos_token_id": [gemma_tok.eos_token_id]})
    assert gemma_tok.eos_token != "<end_of_turn>"
    assert ends.turn_token == "<end_of_turn>" and ends.turn_id == gemma_tok.convert_tokens_to_ids(
        "<end_of_turn>"
    )
    assert ends.tokens == ("<end_of_turn>", "<start_of_turn>", gemma_tok.eos_token)
    assert ends.strings == list(ends.tokens)


def test_generation_config_eos_ids_end_a_turn_in_every_form(gemma_tok, tiny_llama_dir):
    from transformers import GenerationConfig

    extra = gemma_tok.convert_tokens_to_ids("<|end_of_text|>")
    for config in ({"eos_token_id": extra}, GenerationConfig(eos_token_id=[extra, gemma_tok.eos_token_id])):
        ends = end_of_turn(gemma_tok, config)
        assert ends.ids[-1] == extra and ends.tokens[-1] == "<|end_of_text|>"
    # a model directory: its generation_config.json (the tokenizer's own directory by default)
    assert end_of_turn(gemma_tok, tiny_llama_dir).ids == end_of_turn(gemma_tok).ids


def test_template_given_overrides_the_tokenizers(llama_tok):
    ends = end_of_turn(llama_tok, chat_template=ALPACA)  # turns end with EOS, then "### Instruction:"
    assert ends.ids == (llama_tok.eos_token_id,) and ends.texts == ("### Instruction:",)
    assert ends.strings == [llama_tok.eos_token, "### Instruction:"]


def test_turns_closed_by_plain_text_stop_at_the_next_user_line(qwen_tok):
    ends = end_of_turn(qwen_tok, chat_template=PLAIN_TEXT)
    assert ends.texts == ("User:",) and ends.turn_token is None and ends.ids == (qwen_tok.eos_token_id,)


def test_no_template_is_a_completion_model_ended_by_eos(qwen_tok):
    import copy

    tok = copy.deepcopy(qwen_tok)
    tok.chat_template = None
    ends = end_of_turn(tok)
    assert ends.completion and ends.turn_token is None and ends.turn_id is None
    assert ends.tokens == (tok.eos_token,) and ends.texts == ()


def test_a_template_that_rejects_the_probe_still_ends_at_eos(qwen_tok):
    rejects = "{{ raise_exception('no assistant turns here') }}"
    ends = end_of_turn(qwen_tok, chat_template=rejects)
    assert ends.ids == (qwen_tok.eos_token_id,) and not ends.completion


def test_adds_bos(llama_tok, qwen_tok):
    assert adds_bos(llama_tok) and not adds_bos(qwen_tok)


def test_every_export_path_stops_where_chat_does(gemma_tok, llama_tok, qwen_tok, tiny_llama_dir):
    """The Modelfile's stops and the GGUF's eot are this module's answer, not a list of their own."""
    from llmkit.exporter import templates
    from llmkit.exporter.vocab import _special_ids

    for tok in (gemma_tok, llama_tok, qwen_tok):
        jinja = tok.chat_template
        kw = {"bos": tok.bos_token, "add_bos": adds_bos(tok), "eos": tok.eos_token}
        ends = end_of_turn(tok, chat_template=jinja)
        assert templates.choose(tok, jinja, **kw).stops == ends.strings
        assert templates.native(tok, jinja, bos=tok.bos_token, eos=tok.eos_token).stops == ends.strings
        assert _special_ids(tok, tiny_llama_dir, jinja)["eot"] == ends.turn_id


def test_turns_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, llmkit.turns; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
