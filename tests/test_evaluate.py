"""`llmkit eval`: the reward of the trained model, of its GGUF in llama.cpp, and of the Ollama model
(the double answering with llama.cpp on the GGUF it was given, prompts rendered by real Go)."""

from __future__ import annotations

import json

import pytest

from llmkit.errors import InvalidArgument

RECIPE = """\
model: {{name: smollm2-135m-instruct}}
data: {{path: {data}, max_length: 128}}
lora: {{r: 4, alpha: 8, dropout: 0.0}}
train: {{method: grpo, max_steps: 1, batch_size: 1, eval_every: 0, save_every: 0, output_dir: {out}}}
grpo:
  num_generations: 2
  max_completion_length: 16
  eval_prompts: 0
  rewards:
    - {{name: exact_answer, params: {{pattern: '^\\W*([A-Za-z]+)\\W*$'}}}}
    - {{name: length, weight: 0.5, params: {{target: 1, unit: words, width: 9}}}}
export: {{gguf: f16, ollama: one-word-test}}
"""


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory):
    """A one-step GRPO run of SmolLM2 on the shipped one-word prompts, exported to F16 with --verify
    (once for the module: the served-reward check is part of it)."""
    import llmkit
    from llmkit.recipe import RECIPES_DIR

    tmp = tmp_path_factory.mktemp("eval")
    recipe = tmp / "grpo.yaml"
    data = RECIPES_DIR / "data" / "one-word-eval.jsonl"
    recipe.write_text(RECIPE.format(data=data, out=tmp / "run"))
    run = llmkit.train(str(recipe))
    result = llmkit.export(run, gguf="f16", verify=True)
    return run, recipe, result


@pytest.mark.slow
def test_trained_gguf_and_ollama_model_score_the_same(exported_run, ollama_double):
    from llmkit.evaluate import evaluate, served_template
    from llmkit.exporter.generation import llama_generate
    from llmkit.ollama.models import create_model

    run, recipe, _ = exported_run
    import llama_cpp

    llm = llama_cpp.Llama(str(run / "model.gguf"), n_ctx=512, verbose=False)
    go, stops = served_template(run)

    def served(model, messages, options):  # the real server: render, then llama.cpp, greedy
        prompt = ollama_double.render_prompt(model, messages)
        ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        new, _ = llama_generate(llm, ids, stops, max_tokens=options["num_predict"])
        return llm.detokenize(new).decode()

    ollama_double.responder = served
    create_model("one-word-test", run / "model.gguf", template=go, parameters={"stop": stops}, progress=False)
    report = evaluate(run, recipe, backends=("transformers", "llama.cpp", "ollama"), limit=6)
    hf, cpp, ol = report.scores
    assert len(hf.answers) == 6 and all(isinstance(a, str) for a in hf.answers)
    assert hf.answers == cpp.answers == ol.answers
    assert hf.mean == cpp.mean == ol.mean and report.passed and not report.differences()


@pytest.mark.slow
def test_a_stop_that_cuts_answers_is_named(exported_run, tmp_path):
    import shutil

    from llmkit.evaluate import evaluate

    run, recipe, _ = exported_run
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    modelfile = broken / "Modelfile"
    modelfile.write_text(
        modelfile.read_text() + 'PARAMETER stop " "\n'
    )  # cuts every answer at its first word
    report = evaluate(broken, recipe, backends=("transformers", "llama.cpp"), limit=6)
    hf, cpp = report.scores
    assert all(" " not in a for a in cpp.answers) and hf.answers != cpp.answers
    assert not report.passed and any("stops early" in d for d in report.differences())


def test_eval_refuses_a_recipe_without_rewards_and_an_unknown_backend():
    from llmkit.evaluate import evaluate

    with pytest.raises(InvalidArgument, match="has no grpo section"):
        evaluate("tiny-llama", "tiny")
    with pytest.raises(InvalidArgument, match="unknown backend 'vllm'"):
        evaluate("tiny-llama", "smollm2-135m-grpo", backends=("vllm",))


@pytest.mark.slow
def test_eval_cli_prints_json(exported_run, llmkit_cli):
    run, recipe, _ = exported_run
    out = llmkit_cli("eval", str(run), "--rewards", str(recipe), "--limit", "3", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["prompts"] == 3 and set(report["backends"]) == {"transformers"}
    assert set(report["backends"]["transformers"]) == {"total", "exact_answer", "length"}


@pytest.mark.slow
def test_export_verify_of_a_grpo_run_checks_the_served_reward(exported_run):
    run, _, result = exported_run
    rewards = result.verify["rewards"]
    assert rewards["passed"] and set(rewards["backends"]) == {"transformers", "llama.cpp"}
    assert rewards["backends"]["transformers"]["total"] == rewards["backends"]["llama.cpp"]["total"]
    assert json.loads((run / "verify.json").read_text())["rewards"]["prompts"] > 0
