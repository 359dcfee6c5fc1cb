"""Chat templates: the Go-template evaluator, family choice by rendering, and equality proofs."""

from __future__ import annotations

import pytest

from llmkit.errors import ExportError
from llmkit.export import templates
from llmkit.export.gotemplate import GoTemplateError, execute, ollama_values, parse, render

# Conversations beyond the probes used for choosing: the proof must hold on these too.
EXTRA = [
    [{"role": "user", "content": "Ünïcödé 🚀 and <b>tags</b>"}],
    [
        {"role": "system", "content": "Be brief.\nVery brief."},
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": "1"},
        {"role": "user", "content": "Two"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "Three?"},
    ],
    [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ],
]

PHI3_JINJA = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
GEMMA2_JINJA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
GEMMA3_JINJA = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = 'model' -%}{%- else -%}{%- set role = message['role'] -%}"
    "{%- endif -%}{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}"
)
MISTRAL_JINJA = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"
)
QWEN25_JINJA = (  # the no-tools branch of Qwen2.5's template
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}{%- for message in messages %}{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) "
    "or (message.role == 'assistant') %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.fixture(scope="module")
def tok(tiny_llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


def _choose(tok, jinja, eos="<|eot_id|>"):
    return templates.choose(tok, jinja, bos=tok.bos_token, add_bos=True, eos=eos)


def _proof(tok, chat, jinja):
    convs = templates.PROBES + EXTRA
    return templates.differences(chat.go, tok, jinja, convs, bos=tok.bos_token, add_bos=True)


# ----------------------------------------------------------------------------- Go evaluator


def test_go_trim_markers_and_text():
    assert render("A  {{- .System -}}  B{{ range .Messages }}{{ end }}", [], system="s") == "AsB"
    assert (
        render(
            "x {{- /* note */ -}} y{{ .Messages }}".replace(
                "{{ .Messages }}", "{{ range .Messages }}{{ end }}"
            ),
            [],
        )
        == "xy"
    )


def test_go_if_else_range_and_functions():
    tpl = (
        '{{ range $i, $m := .Messages }}{{ if eq $m.Role "user" "system" }}[{{ $i }}:{{ .Content }}]'
        '{{ else if ne .Role "tool" }}({{ .Content }}){{ else }}T{{ end }}{{ else }}empty{{ end }}'
        '{{ if and .System (gt (len .Messages) 1) }}+{{ $.System }}{{ end }}{{ or "" "fallback" }}'
    )
    msgs = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "A"},
    ]
    assert render(tpl, msgs) == "[0:S][1:U](A)+Sfallback"
    assert render(tpl, []) == "emptyfallback"
    assert (
        render(
            "{{ range .Messages }}{{ if eq (len $.Messages) 1 }}{{ index $.System }}{{ end }}{{ end }}",
            msgs[:1],
        )
        == "S"
    )


def test_go_errors_are_loud():
    for bad in (
        "{{ .Messages | len }}",
        "{{ range .Messages }}",
        "{{ with .Messages }}x{{ end }}",
        "{{ .Messages }}{{ end }}",
        "{{ range .Messages }}{{ .Nope }}{{ end }}",
        "{{ .Messages }}{{ printf }}",
    ):
        with pytest.raises(GoTemplateError):
            render(bad, [{"role": "user", "content": "x"}])
    with pytest.raises(GoTemplateError):
        execute(parse('{{ eq 1 "1" }}'), {})  # Go refuses to compare int with string


def test_ollama_values_collate_and_modelfile_system():
    v = ollama_values(
        [
            {"role": "user", "content": "a"},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": "c"},
        ],
        system="SYS",
    )
    assert v["System"] == "SYS"
    assert [(m["Role"], m["Content"]) for m in v["Messages"]] == [
        ("system", "SYS"),
        ("user", "a\n\nb"),
        ("assistant", "c"),
    ]
    # A request with its own system message keeps it; the Modelfile SYSTEM is not added.
    v = ollama_values([{"role": "system", "content": "mine"}, {"role": "user", "content": "x"}], system="SYS")
    assert v["System"] == "mine"


def test_ollama_reference_templates_render_as_documented():
    msgs = [{"role": "user", "content": "hi"}]
    assert render(templates.CHATML, msgs) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert render(templates.LLAMA3, msgs) == (
        "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


# ----------------------------------------------------------------------------- choosing by rendering


def test_tiny_models_templates_are_chosen_and_proven(tiny_llama_dir, tiny_qwen2_dir):
    from transformers import AutoTokenizer

    llama = AutoTokenizer.from_pretrained(tiny_llama_dir)
    chat = _choose(llama, llama.chat_template)
    assert chat.family == "llama3" and "<|eot_id|>" in chat.stops
    assert not _proof(llama, chat, llama.chat_template)

    qwen = AutoTokenizer.from_pretrained(tiny_qwen2_dir)
    chat = templates.choose(qwen, qwen.chat_template, bos=None, add_bos=False, eos=qwen.eos_token)
    assert chat.family == "chatml" and "You are a helpful assistant." in chat.go
    assert chat.stops[:2] == ["<|im_start|>", "<|im_end|>"]
    assert not templates.differences(
        chat.go, qwen, qwen.chat_template, templates.PROBES + EXTRA, bos=None, add_bos=False
    )
    # with a Modelfile SYSTEM, Ollama renders what HF renders with that system message
    conv = [{"role": "user", "content": "Hi"}]
    hf = qwen.apply_chat_template(
        [{"role": "system", "content": "Pirate."}, *conv], tokenize=False, add_generation_prompt=True
    )
    assert render(chat.go, conv, system="Pirate.") == hf


@pytest.mark.parametrize(
    ("jinja", "family"),
    [
        (PHI3_JINJA, "phi3"),
        (GEMMA2_JINJA, "gemma"),
        (GEMMA3_JINJA, "gemma"),
        (MISTRAL_JINJA, "mistral"),
        (QWEN25_JINJA, "chatml"),
    ],
)
def test_families_chosen_by_rendering(tok, jinja, family):
    chat = _choose(tok, jinja, eos=tok.eos_token)
    assert chat.family == family
    assert not _proof(tok, chat, jinja)


def test_unknown_template_is_a_clear_error(tok):
    odd = "{% for m in messages %}<<{{ m['role'] }}>> {{ m['content'] }}\n{% endfor %}<<assistant>>"
    with pytest.raises(ExportError) as e:
        _choose(tok, odd)
    assert "--template FILE" in e.value.hint and "<<user>> Hi there!" in e.value.message


def test_no_template_falls_back_to_alpaca(tok):
    chat = _choose(tok, None, eos="<|eot_id|>")
    assert chat.family == "alpaca" and chat.jinja == templates.ALPACA_JINJA
    assert not _proof(tok, chat, chat.jinja)


def test_template_file_proven_or_flagged(tok, tmp_path):
    good = tmp_path / "good.tmpl"
    good.write_text(templates.LLAMA3)
    chat = templates.from_file(
        good, tok, tok.chat_template, bos=tok.bos_token, add_bos=True, eos="<|eot_id|>"
    )
    assert chat.family == "custom" and chat.proven and "<|eot_id|>" in chat.stops
    bad = tmp_path / "bad.tmpl"
    bad.write_text("{{ range .Messages }}{{ .Content }}{{ end }}")
    chat = templates.from_file(bad, tok, tok.chat_template, bos=tok.bos_token, add_bos=True, eos="<|eot_id|>")
    assert not chat.proven and "could not prove" in chat.notes[0]
    with pytest.raises(ExportError):
        templates.from_file(tmp_path / "missing.tmpl", tok, None, bos=None, add_bos=False, eos=None)
