"""Training on the tiny Llama: the run dir, checkpoint/resume after SIGKILL, bad input, devices."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import _free_port

from llmkit import allocator, devices
from llmkit.errors import LlmkitError, RecipeError

STEPS, SAVE_EVERY = 24, 3
OVERRIDES = [
    f"train.max_steps={STEPS}",
    f"train.save_every={SAVE_EVERY}",
    "train.eval_every=6",
    "train.batch_size=2",
]


def _adapter(path):
    from safetensors.torch import load_file

    return load_file(path / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_llama_dir):
    """One uninterrupted tiny run through the library API (the reference for the resume test)."""
    import llmkit

    out = tmp_path_factory.mktemp("runs") / "tiny"
    return llmkit.train("tiny", overrides=[*OVERRIDES, f"train.output_dir={out}"])


def test_run_dir_layout(run_dir):
    names = {p.name for p in run_dir.iterdir()}
    assert {
        "recipe.yaml",
        "run.json",
        "adapter",
        "checkpoints",
        "metrics.jsonl",
        "tensorboard",
        "loss.png",
    } <= names
    assert not [n for n in names if n.startswith(".")]  # no temp leftovers
    info = json.loads((run_dir / "run.json").read_text())
    assert info["base_model"] == "tiny-llama" and info["steps"] == STEPS and info["precision"] == "fp32"
    assert info["tokens_seen"] > 0 and info["data"]["train_examples"] + info["data"]["eval_examples"] == 24
    assert set(info["versions"]) >= {"torch", "transformers", "peft", "accelerate"}
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, STEPS + 1))
    assert [r["step"] for r in rows if "eval_loss" in r] == [6, 12, 18, 24]
    assert rows[-1]["eval_loss"] == info["eval_loss"]
    assert [r["loss"] for r in rows if "loss" in r][-1] < [r["loss"] for r in rows if "loss" in r][0]
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((run_dir / "checkpoints").glob("step-*"))) == 2  # keep_checkpoints


def test_run_layout_is_the_contract(run_dir, tmp_path):
    """runs.RunLayout names every file the run wrote; run.json and metrics read back through it."""
    from llmkit.runs import RunLayout, last_checkpoint, read_info, read_metrics

    run = RunLayout(run_dir)
    assert {p.name for p in run_dir.iterdir()} == set(RunLayout.FILES) - {
        "encoder"
    }  # encoder/: embed train's
    parts = (run.recipe, run.info, run.adapter, run.checkpoints, run.metrics, run.tensorboard, run.loss_plot)
    assert all(p.exists() for p in parts) and run.has_run() and run.has_adapter()
    assert read_info(run_dir) == json.loads(run.info.read_text()) and read_info(tmp_path) == {}
    assert read_metrics(run_dir) == [json.loads(ln) for ln in run.metrics.read_text().splitlines()]
    kept = [run.checkpoint(STEPS - 2 * SAVE_EVERY), run.checkpoint(STEPS - SAVE_EVERY)]
    assert run.finished_checkpoints() == kept and last_checkpoint(run_dir) == kept[-1]
    assert kept[-1].name == f"step-{STEPS - SAVE_EVERY:06d}"
    assert sorted(p.name for p in run.checkpoints.iterdir()) == [p.name for p in kept]  # no staged RNG files
    assert sorted(p.name for p in kept[-1].iterdir()) == [
        "adapter_model.safetensors",
        "optimizer.pt",
        "rng-0.pt",
        "scheduler.pt",
        "state.json",
    ]


def test_adapter_loads_with_peft_and_runs(run_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.inference import load_for_inference
    from llmkit.recipe import load

    recipe = load(run_dir / "recipe.yaml")  # the resolved recipe loads from anywhere
    assert os.path.isabs(recipe.data.path) and recipe.train.output_dir == str(run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(info["base_path"], dtype=torch.float32)
    model = PeftModel.from_pretrained(base, run_dir / "adapter")
    state = _adapter(run_dir / "adapter")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in state.items())  # it trained
    tok = AutoTokenizer.from_pretrained(run_dir / "adapter")
    assert tok.chat_template and "<|start_header_id|>" in tok.chat_template
    model2, tok2 = load_for_inference(run_dir)
    ids = tok2("Hello", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, model2(ids).logits)


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(run_dir, tmp_path):
    """SIGKILL mid-run, then --resume: the final adapter equals the uninterrupted run's."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "llmkit", "train", "tiny", *OVERRIDES, f"train.output_dir={out}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (out / "checkpoints" / f"step-{2 * SAVE_EVERY:06d}" / "state.json").exists():
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    assert not (out / "adapter").exists()  # never a half-written adapter at the final path
    killed_at = max(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*"))
    assert 2 * SAVE_EVERY <= killed_at < STEPS

    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"from step {killed_at}" in resumed.stderr.replace("\n", " ")

    # the CLI trained on the faster allocator where the machine has one (llmkit.allocator), and the
    # result is the Python API's run on the process's own malloc: an allocator changes no figure
    library = allocator.find()
    expected = "system" if library is None else allocator.kind(library)
    assert json.loads((out / "run.json").read_text())["hardware"]["allocator"] == expected
    a, b = _adapter(run_dir / "adapter"), _adapter(out / "adapter")
    assert a.keys() == b.keys()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff <= 1e-6, diff
    steps = [
        json.loads(ln)["step"]
        for ln in (out / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(ln)
    ]
    assert steps == list(range(1, STEPS + 1))  # metrics past the checkpoint were replaced, not duplicated


def test_refuses_existing_run_and_overwrites_on_request(run_dir, tmp_path):
    import shutil

    import llmkit

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "notes.txt").write_text("mine")
    with pytest.raises(LlmkitError, match="already holds a training run") as err:
        llmkit.train("tiny", overrides=["train.max_steps=2", f"train.output_dir={copy}"])
    assert "--overwrite" in err.value.hint
    llmkit.train(
        "tiny",
        overrides=["train.max_steps=2", "train.save_every=0", f"train.output_dir={copy}"],
        overwrite=True,
    )
    assert json.loads((copy / "run.json").read_text())["steps"] == 2
    assert not (copy / "checkpoints").exists() and (copy / "notes.txt").read_text() == "mine"


def test_two_runs_in_one_process_may_use_different_precisions(tmp_path):
    """The Python API trains again in the same process (a notebook, a sweep): Accelerate's
    per-process state must not pin the first run's precision."""
    import llmkit

    short = ["train.max_steps=1", "train.eval_every=0", "train.save_every=0"]
    llmkit.train("tiny", [*short, f"train.output_dir={tmp_path / 'a'}", "train.precision=fp32"])
    run = llmkit.train("tiny", [*short, f"train.output_dir={tmp_path / 'b'}", "train.precision=bf16"])
    assert json.loads((run / "run.json").read_text())["precision"] == "bf16"


def test_resume_without_checkpoint(tmp_path):
    import llmkit

    with pytest.raises(LlmkitError, match="has no checkpoint to resume from"):
        llmkit.train("tiny", overrides=[f"train.output_dir={tmp_path / 'empty'}"], resume=True)


def test_failed_run_leaves_no_adapter(tmp_path, monkeypatch):
    """A failure while the adapter is being written leaves nothing at adapter/."""
    from transformers import PreTrainedTokenizerBase

    import llmkit

    def broken(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", broken)
    out = tmp_path / "fails"
    with pytest.raises(OSError, match="disk full"):
        llmkit.train("tiny", overrides=["train.max_steps=2", f"train.output_dir={out}"])
    assert not (out / "adapter").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".adapter")]


def test_recipe_errors_listed_at_once(llmkit_cli):
    r = llmkit_cli("train", "tiny", "train.lr=-1", "lora.r=0", "train.bogus=1")
    assert r.returncode == 1
    assert (
        "3 problems" in r.stderr
        and "train.lr" in r.stderr
        and "lora.r" in r.stderr
        and "train.bogus" in r.stderr
    )
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_missing_dataset_via_cli(llmkit_cli, tmp_path):
    r = llmkit_cli("train", "tiny", f"data.path={tmp_path}/missing.jsonl", f"train.output_dir={tmp_path}/o")
    assert r.returncode == 1 and "Error: dataset file not found" in r.stderr and "hint:" in r.stderr


def test_qlora_on_cpu_is_a_clear_error(tmp_path):
    import llmkit

    if devices.detect().device == "cuda":
        pytest.skip("this machine has CUDA")
    with pytest.raises(devices.HardwareError, match="QLoRA needs a CUDA GPU") as err:
        llmkit.train("tiny", overrides=["model.load_in_4bit=true", f"train.output_dir={tmp_path}/q"])
    assert "load_in_4bit=false" in err.value.hint


def test_devices_describe_and_precision():
    info = devices.describe()
    assert {"device", "name", "bf16", "train_precision", "qlora", "cpu_isa", "cpu_bf16"} <= set(info)
    hw = devices.Hardware("cpu", "x", 1, False, "fp32", False, "AVX2", "none")
    assert devices.choose_precision("auto", hw) == "fp32"
    amx = devices.Hardware("cpu", "x", 1, True, "bf16", False, "AVX512", "amx_bf16")
    assert devices.choose_precision("auto", amx) == "bf16"
    with pytest.raises(devices.HardwareError, match="fp16 training is not supported on CPU"):
        devices.choose_precision("fp16", hw)
    if info["device"] == "cpu":
        assert info["train_precision"] == ("bf16" if info["cpu_bf16"] != "none" else "fp32")


@pytest.mark.parametrize("name", ["tiny", "smollm2-135m-chat", "qwen2.5-0.5b-lora", "llama3.2-1b-qlora"])
def test_shipped_training_recipes_validate(name):
    from llmkit.recipe import find, load

    recipe = load(name)
    assert find(name).read_text().startswith("# ")
    assert recipe.resolve_path(recipe.data.path).is_file()
    with pytest.raises(RecipeError):
        load(name, ["train.precision=fp8"])


def _method_overrides(method: str, tmp_path) -> list[str]:
    """Tiny data for the preference and reward methods (the tiny recipe's own data is SFT)."""
    if method == "dpo":
        rows = [{"prompt": f"Q{i}?", "chosen": f"Ahoy! A{i}.", "rejected": f"A{i}."} for i in range(16)]
        extra = ["train.method=dpo"]
    elif method == "grpo":
        rows = [{"prompt": f"Say {i}."} for i in range(16)]
        extra = ["train.method=grpo", "grpo.num_generations=2", "grpo.max_completion_length=4",
                 "grpo.rewards=[{name: length, params: {target: 8}}]", "grpo.eval_prompts=2"]  # fmt: skip
    else:
        return []
    data = tmp_path / f"{method}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [f"data.path={data}", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sft", "dpo", "grpo"])
def test_accelerate_launch_two_cpu_processes(method, tmp_path, tiny_llama_dir):
    """`accelerate launch -m llmkit.training` with 2 CPU processes (DDP over gloo) gives a loadable
    adapter, for every method: the loop, not the method, talks to Accelerate."""
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",  # the torchrun launcher; on a machine without GPUs the processes use CPU + gloo
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "llmkit.training",
        "tiny",
        "train.max_steps=4",
        "train.save_every=2",
        f"train.output_dir={out}",
        *_method_overrides(method, tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads((out / "run.json").read_text())
    assert info["hardware"]["processes"] == 2 and info["steps"] == 4 and info["method"] == method
    assert sorted(p.name for p in (out / "checkpoints" / "step-000002").glob("rng-*")) == [
        "rng-0.pt",
        "rng-1.pt",
    ]
    from llmkit.inference import load_for_inference

    load_for_inference(out)


def test_dora_rslora_checkpointing_and_recipe_chat_template(tmp_path):
    """The LoRA switches reach PEFT, gradient checkpointing trains, and a recipe's chat template is used and saved."""
    import llmkit

    template = "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>{{ m['content'] }}<|eot_id|>{% endfor %}"
    out = llmkit.train(
        "tiny",
        overrides=[
            "lora.use_dora=true",
            "lora.use_rslora=true",
            "train.gradient_checkpointing=true",
            "train.max_steps=2",
            "train.save_every=0",
            f"model.chat_template={json.dumps(template)}",
            f"train.output_dir={tmp_path / 'dora'}",
        ],
    )
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["use_dora"] is True and config["use_rslora"] is True
    assert any("lora_magnitude_vector" in k for k in _adapter(out / "adapter"))
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out / "adapter").chat_template == template


def test_token_budget_splits_passes_without_changing_the_result(tmp_path, tiny_llama_dir):
    """train.max_batch_tokens runs a micro-batch in pieces: memory changes, the adapter does not."""
    import llmkit
    from llmkit import data as datalib
    from llmkit.recipe import load
    from llmkit.training import load_tokenizer

    common = ["train.max_steps=4", "train.batch_size=4", "lora.dropout=0", "train.eval_every=2"]
    recipe = load("tiny", common)
    examples = datalib.prepare(recipe, load_tokenizer(recipe)[0], seed=42).train
    rows = [[i] for i in range(4)]
    assert datalib.split_by_tokens(examples, rows, 0) == [rows]
    assert datalib.split_by_tokens(examples, rows, 1) == [[r] for r in rows]  # each row alone
    widest = max(len(examples[i]) for i in range(4))
    assert all(len(p) * widest <= 2 * widest for p in datalib.split_by_tokens(examples, rows, 2 * widest))

    runs = {
        budget: llmkit.train(
            "tiny",
            [*common, f"train.max_batch_tokens={budget}", f"train.output_dir={tmp_path / str(budget)}"],
        )
        for budget in (0, 1)
    }
    a, b = _adapter(runs[0] / "adapter"), _adapter(runs[1] / "adapter")
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff <= 1e-5, diff
    losses = [json.loads((r / "run.json").read_text())["eval_loss"] for r in runs.values()]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


@pytest.fixture
def hub_datasets(tmp_path):
    """A Hub double serving one dataset repo (alpaca rows in data/train.jsonl + data/test.jsonl)."""
    from hub_double import HubDouble

    rows = [
        {"instruction": f"Name the number after {i}.", "input": "", "output": f"{i + 1}."} for i in range(40)
    ]
    files = {
        "README.md": "# numbers\n",
        "data/train.jsonl": "".join(json.dumps(r) + "\n" for r in rows[:32]),
        "data/test.jsonl": "".join(json.dumps(r) + "\n" for r in rows[32:]),
    }
    with HubDouble() as hub:
        hub.add_repo("llmkit-test/numbers", files, repo_type="dataset")
        hub.env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")}
        yield hub


@pytest.mark.slow
def test_trains_on_a_hub_dataset_by_name(hub_datasets, llmkit_cli, tmp_path):
    """data.path = a Hub dataset id: loaded through `datasets` (here from the Hub double), split chosen."""
    out = tmp_path / "run"
    args = [
        "tiny",
        "data.path=llmkit-test/numbers",
        "data.format=auto",
        "data.split=test",
        "data.eval_fraction=0",
        "train.max_steps=2",
    ]
    result = llmkit_cli("train", *args, f"train.output_dir={out}", env=hub_datasets.env)
    assert result.returncode == 0, result.stderr
    info = json.loads((out / "run.json").read_text())
    assert info["data"]["train_examples"] == 8  # the 8 rows of the test split, not the 32 of train
    assert hub_datasets.seen("GET", "/datasets/llmkit-test/numbers/resolve/")  # fetched from the Hub

    missing = llmkit_cli("train", "tiny", "data.path=llmkit-test/nope", env=hub_datasets.env)
    assert missing.returncode == 1
    assert missing.stderr.startswith("Error: cannot load Hugging Face dataset 'llmkit-test/nope'")
    assert "Traceback" not in missing.stderr


def test_models_load_without_hub_kernels_unless_asked(tiny_llama_dir):
    """transformers 5 would swap layers for kernels downloaded from the Hub (remote code; offline
    on a GPU it fails the run at `model.train()`): once llmkit is imported, models load without
    them, and a user's own USE_HUB_KERNELS=YES is left as it is."""
    script = (
        "import os, llmkit; from transformers import AutoModelForCausalLM; "
        f"print(AutoModelForCausalLM.from_pretrained({str(tiny_llama_dir)!r}).use_kernels, "
        "os.environ['USE_HUB_KERNELS'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "USE_HUB_KERNELS"}
    default = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert default.returncode == 0, default.stderr
    assert default.stdout.split()[-2:] == ["False", "NO"]
    # the user's choice stands (not loaded here: with kernels on, loading may go to the Hub)
    asked = subprocess.run(
        [sys.executable, "-c", "import os, llmkit; print(os.environ['USE_HUB_KERNELS'])"],
        capture_output=True, text=True, env={**env, "USE_HUB_KERNELS": "YES"},
    )  # fmt: skip
    assert asked.returncode == 0 and asked.stdout.strip() == "YES", asked.stderr


@pytest.mark.gpu
@pytest.mark.parametrize(
    "model, method",
    [("tiny", "sft"), ("tiny", "dpo"), ("tiny", "orpo"), ("tiny", "grpo"), ("tiny-qwen3moe", "sft")],
)
def test_tiny_trains_on_cuda_in_its_best_precision(model, method, tmp_path):
    """On a CUDA machine every method trains on the GPU, in bf16 (or fp16), through the same loop,
    an MoE model's experts through transformers' own GPU kernels; the adapter is written and the
    run reports its FLOPs against the GPU's measured peak. (Passed on an NVIDIA H200, 2026-12-04.)"""
    import llmkit

    rows = [{"prompt": f"Q{i}?", "chosen": f"Ahoy! A{i}.", "rejected": f"A{i}."} for i in range(8)]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    extra = {
        "sft": [] if model == "tiny" else [f"model.name={model}"],
        "dpo": [f"data.path={data}", "train.method=dpo"],
        "orpo": [f"data.path={data}", "train.method=orpo"],
        "grpo": [
            f"data.path={data}", "train.method=grpo", "train.batch_size=2", "grpo.num_generations=4",
            "grpo.max_completion_length=8", "grpo.rewards=[{name: length, params: {target: 12}}]",
        ],
    }[method]  # fmt: skip
    run = llmkit.train(
        "tiny", [*extra, "train.max_steps=3", "train.precision=auto", f"train.output_dir={tmp_path / 'run'}"]
    )
    info = json.loads((run / "run.json").read_text())
    assert info["hardware"]["device"] == "cuda" and info["precision"] in ("bf16", "fp16")
    assert info["method"] == method and info["steps"] == 3
    assert (run / "adapter" / "adapter_model.safetensors").stat().st_size > 0
    if method != "grpo":  # GRPO's steps generate: no FLOPs-per-token figure
        # the peak is the GPU's, measured (an H200: 750-790 TFLOP/s in bf16), so a tiny model's
        # MFU rounds to 0
        assert info["flops_per_token"] > 0 and info["peak_flops"] > 1e13 and 0 <= info["mfu"] < 1, info
