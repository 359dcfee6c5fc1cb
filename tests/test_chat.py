"""`llmkit chat`: one-shot and interactive generation with the model's chat template."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_one_shot_with_tiny_model(llmkit_cli):
    result = llmkit_cli("chat", "tiny-qwen2", "Hello", "--max-new-tokens", "5")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
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


@pytest.mark.slow
def test_model_without_chat_template_runs_as_a_completion_model(tiny_llama_dir, tmp_path, llmkit_cli):
    """No chat template (and none from a recipe): the prompt is continued as plain text until EOS,
    with a line saying so, the way export's TEMPLATE {{ .Prompt }} serves it in Ollama."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    plain = tmp_path / "plain"
    shutil.copytree(tiny_llama_dir, plain)
    (plain / "chat_template.jinja").unlink()
    result = llmkit_cli("chat", str(plain), "The capital of France is", "--max-new-tokens", "6")
    assert result.returncode == 0, result.stderr
    assert "has no chat template: running it as a completion model" in result.stderr
    tok = AutoTokenizer.from_pretrained(plain)
    model = AutoModelForCausalLM.from_pretrained(plain).eval()
    ids = tok("The capital of France is", return_tensors="pt")  # BOS as the tokenizer adds it
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=6, do_sample=False, eos_token_id=tok.eos_token_id)
    want = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert result.stdout.strip() == want.strip() and want.strip()
    result = llmkit_cli("chat", str(plain), "hi", "--system", "Be terse.")
    assert result.returncode == 1 and "has no chat template, so it has no system prompt" in result.stderr


GEMMA_TURNS = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
QUESTION = "What is the capital of France?"


def _greedy(model, tok, ids, stop_ids, n=16):
    import torch

    with torch.no_grad():
        out = model.generate(
            **ids,
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=stop_ids,
            pad_token_id=0,
            top_p=None,
            top_k=None,
        )
    return out[0, ids["input_ids"].shape[1] :].tolist()


@pytest.fixture(scope="module")
def gemma_style_run(tiny_llama_dir, tmp_path_factory):
    """A run like `llmkit train gemma3-270m-chat`: a base model with Gemma's turn tokens and no
    chat template, given one by the recipe that ends turns with <end_of_turn> (not its EOS).

    The base is the tiny Llama with <start_of_turn>/<end_of_turn> added; its output row for
    <end_of_turn> is set to a multiple of the row of a token it says a few tokens into its
    answer, so it really emits <end_of_turn> after some text, and more text after that when
    nothing stops it. Returns (run dir, the answer up to <end_of_turn>, the answer unstopped)."""
    from conftest import run_llmkit
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("gemma-style")
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tok.chat_template = None
    end = tok.convert_tokens_to_ids("<end_of_turn>")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    assert end < model.lm_head.weight.shape[0]  # the padded embedding rows hold the new tokens
    chat = [{"role": "user", "content": QUESTION}]
    ids = tok.apply_chat_template(
        chat, chat_template=GEMMA_TURNS, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    said = _greedy(model, tok, ids, [tok.eos_token_id])
    weight = model.lm_head.weight.data
    original = weight.clone()
    for k in (3, 4, 5):
        weight[end] = 1.5 * original[said[k]]
        new = _greedy(model, tok, ids, [tok.eos_token_id])
        if end in new[2:-4]:  # some text before <end_of_turn>, and some after it
            break
        weight.copy_(original)
    else:
        pytest.fail("could not make the tiny model emit <end_of_turn> mid-answer")
    base = root / "base"
    model.save_pretrained(base)
    tok.save_pretrained(base)
    (root / "turns.jinja").write_text(GEMMA_TURNS)
    run = root / "run"
    trained = run_llmkit(
        "train",
        "tiny",
        f"model.name={base}",
        f"model.chat_template={root / 'turns.jinja'}",
        "train.max_steps=1",
        "train.lr=1e-9",  # the adapter is trained for real but leaves the answer as it is
        "train.eval_every=0",
        "train.save_every=0",
        f"train.output_dir={run}",
    )
    assert trained.returncode == 0, trained.stderr
    from llmkit.inference import load_for_inference

    model, tok = load_for_inference(run)
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    unstopped = _greedy(model, tok, ids, [tok.eos_token_id])
    assert end in unstopped
    before = tok.decode(unstopped[: unstopped.index(end)], skip_special_tokens=True)
    return run, before.strip(), tok.decode(unstopped, skip_special_tokens=True).strip()


@pytest.mark.slow
def test_chat_stops_at_the_templates_end_of_turn_not_only_eos(gemma_style_run, llmkit_cli):
    """The reported bug: chat ignored <end_of_turn> (it stopped at EOS only) and ran on."""
    run, before, unstopped = gemma_style_run
    assert before and len(unstopped) > len(before)  # without the fix chat printed all of `unstopped`
    result = llmkit_cli("chat", str(run), QUESTION, "--max-new-tokens", "16")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == before


@pytest.mark.slow
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


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args, message",
    [
        (["tiny-llama", ""], "the prompt is empty"),
        (["tiny-llama", "  \n\t"], "the prompt is empty"),
        (["tiny-llama", "hi", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0"),
        (["tiny-llama", "hi", "--temperature", "-1"], "--temperature must be 0 or more"),
    ],
)
def test_bad_arguments_exit_2_before_the_model_loads(capsys, monkeypatch, args, message):
    """One line + hint, exit 2, and no model is loaded (no generation is spent on bad input)."""
    from conftest import run_cli_inprocess

    import llmkit.inference

    def never(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(llmkit.inference, "load_for_inference", never)
    code, out, err = run_cli_inprocess(capsys, "chat", *args)
    assert code == 2 and out == ""
    assert err.startswith(f"Error: {message}") and "  hint: " in err and len(err.splitlines()) == 2


@pytest.mark.slow
def test_run_dir_without_a_finished_adapter_says_so(tmp_path, llmkit_cli):
    """A run that failed or is still training: not "a broken model dir", but what to do."""
    from llmkit.recipe import dump, load
    from llmkit.runs import RunLayout

    run = RunLayout(tmp_path / "unfinished")
    run.path.mkdir()
    run.recipe.write_text(dump(load("tiny", [f"train.output_dir={run.path}"])))
    for _ in range(2):  # no adapter/ at all, then an adapter/ still being written (no config yet)
        result = llmkit_cli("chat", str(run.path), "hi")
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert f"Error: {run.path} has no finished adapter" in result.stderr
        assert f"llmkit train {run.recipe} --resume" in result.stderr
        run.adapter.mkdir(exist_ok=True)


# ----------------------------------------------------------------------------- the shared chat loop


def _loop(lines, *, accepts_system=True, system=None):
    """Drive chat_loop with scripted input and a reply that records what it was sent."""
    from llmkit.chat_loop import chat_loop

    sent: list[list[dict]] = []

    def reply(messages):
        sent.append([dict(m) for m in messages])
        return f"answer {len(sent)}"

    it = iter(lines)

    def read(prompt):
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None

    written: list[str] = []
    chat_loop(reply, name="m", system=system, accepts_system=accepts_system, read=read, write=written.append)
    return sent, "".join(written)


def test_chat_loop_commands(capsys):
    sent, written = _loop(
        ["hi", "/help", "/system Be terse.", "again", "/clear", "third", "/system", "fourth"]
        + ["/reset", "/nope", "fifth", "/quit", "never read"]
    )
    user = lambda n: {"role": "user", "content": n}  # noqa: E731
    bot = lambda n: {"role": "assistant", "content": f"answer {n}"}  # noqa: E731
    terse = {"role": "system", "content": "Be terse."}
    assert sent == [
        [user("hi")],
        [terse, user("hi"), bot(1), user("again")],  # /system keeps the conversation
        [terse, user("third")],  # /clear keeps the system prompt
        [user("third"), bot(3), user("fourth")],  # /system alone removes it
        [user("fifth")],  # /reset is /clear; an unknown command is not sent to the model
    ]
    assert written == ""  # /quit ends without the newline Ctrl-D gets
    err = capsys.readouterr().err
    assert err.count("/system TEXT") == 2 and "Unknown command /nope." in err  # /help and after /nope
    for quit_command in ("/bye", "/exit"):
        assert _loop(["hi", quit_command, "never read"])[0] == [[user("hi")]]
    assert _loop(["hi"]) == ([[user("hi")]], "\n")  # Ctrl-D


def test_chat_loop_refuses_system_where_the_template_does(capsys):
    sent, _ = _loop(["/system Be terse.", "hi", "/bye"], accepts_system=False)
    assert sent == [[{"role": "user", "content": "hi"}]]
    assert "rejects system messages" in capsys.readouterr().err


@pytest.mark.slow
def test_interactive_chat_uses_the_shared_commands(llmkit_cli):
    result = llmkit_cli(
        "chat", "tiny-llama", "--max-new-tokens", "2", input="hello\n/help\n/reset\n/clear\n/exit\nnever\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(">>> ") == 5 and "/clear" in result.stderr and "/help" in result.stderr


# ----------------------------------------------------------------------------- quiet output


@pytest.mark.slow
def test_train_and_chat_show_our_output_only(tmp_path):
    """No third-party bars or warnings between our lines (they come back with LLMKIT_DEBUG=1)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}  # as users have it
    env["LLMKIT_HOME"] = str(tmp_path / "home")  # a fresh home: the tiny model is built (written) here

    def llmkit(*args, **extra):
        cmd = [sys.executable, "-m", "llmkit", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**env, **extra})

    run = tmp_path / "run"
    trained = llmkit("train", "tiny", "train.max_steps=2", f"train.output_dir={run}")
    chatted = llmkit("chat", str(run), "hello", "--max-new-tokens", "3")
    for result in (trained, chatted):
        assert result.returncode == 0, result.stderr
        for noise in ("Loading weights", "Writing model shards", "it/s]", "Warning", "warnings.warn"):
            assert noise not in result.stderr, result.stderr
    assert "Training tiny-llama" in trained.stderr and "Done: adapter" in trained.stderr
    debug = llmkit("chat", str(run), "hello", "--max-new-tokens", "3", LLMKIT_DEBUG="1")
    assert debug.returncode == 0 and "Loading weights" in debug.stderr  # the check above can fail
