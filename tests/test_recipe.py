"""Recipes of both kinds (training, embedding): one loader, one error format, one path rule.

Every shipped recipe validates, ships its inputs (also from an installed wheel), and runs:
each training recipe shrunk to the tiny model of its family, the embedding recipe as shipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmkit.errors import LlmkitError, RecipeError
from llmkit.recipe import RECIPES_DIR, find, load, load_any, shipped_recipes

SHIPPED = shipped_recipes()
TRAIN = [r for r in SHIPPED if r.kind == "train"]


@pytest.mark.parametrize("shipped", SHIPPED, ids=[f"{r.kind}-{r.name}" for r in SHIPPED])
def test_every_shipped_recipe_validates(shipped):
    recipe = load_any(shipped.path)
    assert recipe.kind == shipped.kind
    assert recipe.source == shipped.path.resolve()
    if shipped.kind == "train":
        assert recipe.model.name
    for key, path in recipe.inputs().items():  # a local input must ship with the recipe
        assert path.is_file(), f"{shipped.path.name}: {key} {path} missing"
    first = shipped.path.read_text().splitlines()[0]
    assert first.startswith("# "), f"{shipped.path.name} must open with a comment saying what it does"


def test_shipped_recipes_of_both_kinds_resolve_by_name():
    tiny = load_any("tiny")
    assert (
        tiny.kind == "train" and tiny.inputs()["data.path"] == RECIPES_DIR.resolve() / "data/chat-tiny.jsonl"
    )
    for name in ("topics", "topics.yaml", "embed/topics", "embed/topics.yml"):
        assert find(name) == RECIPES_DIR / "embed" / "topics.yaml", name
        assert load_any(name).kind == "embed"
    from llmkit.embedding.recipe import load as load_embed

    topics = load_embed("topics", ["cluster.k=4", "encoder.precision=fp32"])  # overrides, as for training
    assert topics.cluster.k == 4 and topics.encoder.precision == "fp32"
    assert set(topics.inputs()) == {"embed.input", "classify.data"}
    with pytest.raises(RecipeError, match="recipe not found: topix") as err:
        find("topix")
    assert err.value.hint == "did you mean 'topics'?"


def test_a_recipe_of_the_other_kind_is_refused_with_the_command_that_runs_it():
    from llmkit.embedding.recipe import load as load_embed

    with pytest.raises(RecipeError, match="is an embedding recipe, not a training recipe") as err:
        load("topics")
    assert "llmkit embed" in err.value.hint
    with pytest.raises(RecipeError, match="is a training recipe, not an embedding recipe"):
        load_embed("tiny")


def test_shipped_recipes_are_listed():
    names = {r.name for r in shipped_recipes()}
    assert {"tiny", "smollm2-135m-chat", "topics"} <= names
    assert {(r.name, r.kind) for r in shipped_recipes("embed")} == {
        ("topics", "embed"),
        ("minilm-support", "embed-train"),
    }
    assert {r.kind for r in TRAIN} == {"train"} and "topics" not in {r.name for r in TRAIN}


def test_data_sample_by_is_a_data_option():
    assert load("tiny").data.sample_by == "line"
    assert load("tiny", ["data.sample_by=paragraph"]).data.sample_by == "paragraph"
    with pytest.raises(
        RecipeError, match="data.sample_by: Input should be 'line', 'paragraph' or 'document'"
    ):
        load("tiny", ["data.sample_by=page"])


def test_overrides_are_parsed_as_yaml():
    recipe = load("tiny", ["train.lr=5e-5", "lora.target_modules=[q_proj,v_proj]", "data.packing=false"])
    assert recipe.train.lr == 5e-5
    assert recipe.lora.target_modules == ["q_proj", "v_proj"]
    assert recipe.data.packing is False


def test_all_errors_reported_at_once_with_nearest_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "model:\n  name: tiny-llama\n  revison: main\n"
        "data:\n  path: x.jsonl\n  max_length: lots\n"
        "trian:\n  lr: 1\n"
    )
    with pytest.raises(RecipeError) as err:
        load(bad)
    text = str(err.value)
    assert "3 problems" in text
    assert "model.revison: unknown key (did you mean 'model.revision'?)" in text
    assert "data.max_length: Input should be a valid integer" in text and "'lots'" in text
    assert "trian: unknown key (did you mean 'train'?)" in text


def test_wrong_type_names_path_expected_and_got():
    with pytest.raises(RecipeError) as err:
        load("tiny", ["train.batch_size=many", "train.scheduler=wavy"])
    text = str(err.value)
    assert "train.batch_size: Input should be a valid integer" in text and "'many'" in text
    assert "train.scheduler: Input should be 'cosine', 'linear' or 'constant'" in text


def test_malformed_yaml_gives_file_line_col(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("model:\n  name: tiny-llama\ndata: [unclosed\n")
    with pytest.raises(RecipeError) as err:
        load(bad)
    assert str(err.value).startswith(f"{bad}:4:1: invalid YAML")


def test_embed_recipe_errors_read_like_training_ones(tmp_path):
    """The same renderer: all problems at once, the nearest key for a typo, one line per union."""
    from llmkit.embedding.recipe import load as load_embed

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nencoder: {backend: gpu, normalise: true}\nembed: {input: a.txt}\n"
        "clasify: {data: a.csv, output: c}\ncluster: {k: many}\n"
    )
    with pytest.raises(RecipeError) as err:
        load_embed(bad)
    text = err.value.message
    assert text.startswith(f"{bad}: 5 problems:")
    assert "encoder.normalise: unknown key (did you mean 'encoder.normalize'?)" in text
    assert "clasify: unknown key (did you mean 'classify'?)" in text
    assert (
        "encoder.backend: Input should be 'auto', 'torch', 'cuda', 'mps', 'onnx', 'openvino' or 'ollama' (got 'gpu')"
        in text
    )
    assert "embed.output: required key is missing" in text
    assert "cluster.k: Input should be a valid integer or 'auto' (got 'many')" in text
    assert "recipes show topics" in err.value.hint
    with pytest.raises(
        RecipeError, match=r"classify.ouput: unknown key \(did you mean 'classify.output'\?\)"
    ):
        load_embed("topics", ["classify.ouput=x"])  # inside an optional section too
    with pytest.raises(
        RecipeError, match="lora.target_modules: Input should be a valid list or 'all-linear'"
    ):
        load("tiny", ["lora.target_modules=3"])


def test_missing_required_section():
    with pytest.raises(RecipeError, match="data: required key is missing"):
        load({"model": {"name": "tiny-llama"}})


def test_bad_override_syntax():
    with pytest.raises(RecipeError, match="bad override 'train.lr'"):
        load("tiny", ["train.lr"])


def test_cli_validate_show_copy(llmkit_cli, tmp_path):
    assert llmkit_cli("recipes", "validate", "tiny", "smollm2-135m-chat").returncode == 0
    shown = llmkit_cli("recipes", "show", "tiny", "train.lr=0.5")
    assert shown.returncode == 0 and "lr: 0.5" in shown.stdout
    copied = llmkit_cli("recipes", "copy", "tiny", str(tmp_path))
    assert (
        copied.returncode == 0
        and (tmp_path / "tiny.yaml").read_text() == (RECIPES_DIR / "tiny.yaml").read_text()
    )
    again = llmkit_cli("recipes", "copy", "tiny", str(tmp_path))
    assert again.returncode == 1 and "already exists" in again.stderr
    bad = tmp_path / "typo.yaml"
    bad.write_text("model: {name: x}\ndata: {path: y, pakcing: true}\n")
    res = llmkit_cli("recipes", "validate", str(bad))
    assert res.returncode == 1
    assert "data.pakcing: unknown key (did you mean 'data.packing'?)" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_cli_lists_shows_validates_and_copies_both_kinds(llmkit_cli, tmp_path):
    listed = llmkit_cli("recipes", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    kinds = {r["name"]: r["kind"] for r in json.loads(listed.stdout)}
    assert kinds["tiny"] == "train" and kinds["topics"] == "embed"
    valid = llmkit_cli("recipes", "validate", "tiny", "topics")
    assert valid.returncode == 0 and valid.stdout.split("\n")[:2] == [
        "ok: tiny (train)",
        "ok: topics (embed)",
    ]
    shown = llmkit_cli("recipes", "show", "topics", "cluster.k=4")
    assert shown.returncode == 0 and "  k: 4" in shown.stdout and "commit_every: 4096" in shown.stdout
    copied = llmkit_cli("recipes", "copy", "topics", str(tmp_path))
    assert copied.returncode == 0
    assert (tmp_path / "topics.yaml").read_bytes() == (RECIPES_DIR / "embed/topics.yaml").read_bytes()
    (tmp_path / "topics.yaml").write_text(
        (tmp_path / "topics.yaml").read_text().replace("commit_every", "x") + "embed_: 1\n"
    )
    bad = llmkit_cli("recipes", "validate", str(tmp_path / "topics.yaml"))
    assert bad.returncode == 1 and "embed_: unknown key (did you mean 'embed'?)" in bad.stderr
    assert "Traceback" not in bad.stderr


# ----------------------------------------------------------------------------- the path rule


def _recipe_in(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def test_training_paths_inputs_from_the_recipe_folder_outputs_from_the_cwd(tmp_path, monkeypatch):
    here = tmp_path / "project" / "recipes"
    (here / "data").mkdir(parents=True)
    (here / "data/chat.jsonl").write_text("{}\n")
    (here / "tmpl.go").write_text("{{ .Prompt }}")
    path = _recipe_in(
        here,
        "r.yaml",
        "model: {name: tiny-llama}\ndata: {path: data/chat.jsonl, eval_path: data/chat.jsonl}\n"
        "train: {output_dir: runs/r}\nexport: {template: tmpl.go}\n",
    )
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    recipe = load(path)
    assert recipe.inputs() == {
        "data.path": here / "data/chat.jsonl",
        "data.eval_path": here / "data/chat.jsonl",
        "export.template": here / "tmpl.go",
    }
    assert recipe.resolve_path(recipe.data.path) == here / "data/chat.jsonl"  # the name training uses
    assert recipe.resolve_output(recipe.train.output_dir) == cwd / "runs/r"
    assert recipe.resolve_output("/abs/out") == Path("/abs/out")
    # an override naming a file in the current directory is taken from there
    (cwd / "mine.jsonl").write_text("{}\n")
    assert load(path, ["data.path=mine.jsonl"]).inputs()["data.path"] == Path("mine.jsonl")
    # a Hub dataset or a Hub model is not a local input
    hub = load(path, ["data.path=tatsu-lab/alpaca", "model.name=Qwen/Qwen2.5-0.5B-Instruct"])
    assert "data.path" not in hub.inputs() and "model.name" not in hub.inputs()


def test_embed_paths_inputs_from_the_recipe_folder_outputs_from_the_cwd(tmp_path, monkeypatch):
    from llmkit.embedding.recipe import load as load_embed

    here = tmp_path / "project" / "recipes" / "embed"
    path = _recipe_in(
        here,
        "e.yaml",
        "name: e\nembed: {input: ../data/texts.txt, output: runs/e/v.parquet}\n"
        "classify: {data: ../data/labelled.csv, output: runs/e/clf}\n",
    )
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    recipe = load_embed(path)
    assert recipe.inputs() == {
        "embed.input": here / "../data/texts.txt",
        "classify.data": here / "../data/labelled.csv",
    }
    assert recipe.resolve_output(recipe.embed.output) == cwd / "runs/e/v.parquet"
    assert recipe.resolve_output(recipe.classify.output, tmp_path) == tmp_path / "runs/e/clf"
    hf = load_embed(path, ["embed.input=hf:ag_news"])
    assert str(hf.input_path(hf.embed.input)) == "hf:ag_news" and "embed.input" not in hf.inputs()
    shipped = load_embed("topics")
    assert {k: p.resolve() for k, p in shipped.inputs().items()} == {
        "embed.input": RECIPES_DIR.resolve() / "data/embed-unlabelled.txt",
        "classify.data": RECIPES_DIR.resolve() / "data/embed-labelled.csv",
    }
    assert shipped.resolve_output(shipped.embed.output) == cwd / "runs/embed/questions.parquet"


# ----------------------------------------------------------------------------- every shipped recipe runs

# A shipped training recipe's model family → the tiny model of that family (llmkit.tiny).
TINY_OF_FAMILY = {
    "gemma3": "tiny-gemma3",
    "gemma-3": "tiny-gemma3",
    "qwen": "tiny-qwen2",
    "llama": "tiny-llama",
}
TINY_OF_FAMILY["smollm2"] = "tiny-llama"  # SmolLM2 is a Llama


def _tiny_of(model: str) -> str:
    from llmkit.tiny import TINY

    for family, tiny in TINY_OF_FAMILY.items():
        if family in model.lower():
            assert tiny in TINY
            return tiny
    pytest.fail(f"no tiny model for {model}: add its family to TINY_OF_FAMILY")


def _four_bit_possible() -> bool:
    from llmkit import devices

    try:
        devices.check_4bit(devices.detect())
    except LlmkitError:
        return False
    return True


@pytest.mark.parametrize("shipped", TRAIN, ids=[r.name for r in TRAIN])
@pytest.mark.slow
def test_every_shipped_training_recipe_trains_shrunk(shipped, tmp_path, monkeypatch):
    """The recipe as shipped (data, LoRA, template, packing, checkpointing…) on the tiny model
    of its family for 2 steps: a recipe that no longer trains fails here, not in a user's hands."""
    from llmkit.training import train

    recipe = load(shipped.path)
    overrides = [
        f"model.name={_tiny_of(recipe.model.name)}",
        "train.max_steps=2",
        "train.eval_every=0",
        "train.save_every=0",
        "data.eval_fraction=0",
        f"train.output_dir={tmp_path / 'run'}",
    ]
    if recipe.model.load_in_4bit and not _four_bit_possible():
        overrides.append("model.load_in_4bit=false")  # QLoRA needs CUDA + bitsandbytes
    monkeypatch.chdir(tmp_path)  # inputs still come from the recipe's folder
    run_dir = train(shipped.path, overrides)
    assert run_dir == tmp_path / "run"
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]


@pytest.mark.slow  # ~90 s on 2 shared cores: the auto backend measures this CPU first
def test_the_shipped_embedding_recipe_runs(tmp_path, monkeypatch):
    """`llmkit embed topics.yaml` from a folder outside the checkout: inputs from the recipe's
    folder, every output under the current directory."""
    from llmkit.embedding.recipe import run

    monkeypatch.chdir(tmp_path)
    summary = run(Path("topics.yaml"))
    out = tmp_path / "runs/embed"
    assert summary["embed"]["rows"] == 40
    assert summary["classify"]["output"] == str(out / "topic-classifier")
    assert summary["classify"]["accuracy"] >= 0.9
    assert (out / "questions.parquet").is_file() and (
        out / "topic-classifier/classifier.safetensors"
    ).is_file()
    assert summary["cluster"]["k"] >= 2 and (out / "questions-clusters.png").is_file()
    assert not list(RECIPES_DIR.rglob("runs"))  # nothing written inside the recipes folder


def test_a_wheel_install_ships_the_recipes(tmp_path):
    """Installed from a wheel (no checkout around), every shipped recipe of both kinds is there,
    loads by name, finds its input files inside the package, and writes under the cwd."""
    import zipfile

    root = Path(__file__).resolve().parent.parent
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(root),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    wheel = next(tmp_path.glob("llmkit-*.whl"))
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    cwd = tmp_path / "work"
    cwd.mkdir()
    assert not cwd.resolve().is_relative_to(root)
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = f"""
import json, llmkit, llmkit.recipe as r
assert llmkit.__file__.startswith({str(site)!r}), llmkit.__file__
tiny = r.load("tiny")
print(tiny.data.path, tiny.resolve_path(tiny.data.path).is_file())
rows = []
for s in r.shipped_recipes():
    recipe = r.load_any(s.name)  # by its shipped name
    outputs = [recipe.train.output_dir] if s.kind in ("train", "embed-train") else [recipe.embed.output]
    rows.append(dict(
        name=s.name, kind=s.kind, loaded_as=recipe.kind, path=str(s.path),
        inputs={{k: [str(p.resolve()), p.is_file()] for k, p in recipe.inputs().items()}},
        outputs=[str(recipe.resolve_output(o)) for o in outputs],
    ))
print(json.dumps(rows))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env)
    assert run.returncode == 0, run.stderr
    first, rows = run.stdout.splitlines()
    assert first.split() == ["data/chat-tiny.jsonl", "True"]
    rows = json.loads(rows)
    # the same recipes as the checkout ships, of both kinds
    assert sorted((r["kind"], r["name"]) for r in rows) == sorted((r.kind, r.name) for r in SHIPPED)
    assert {r["kind"] for r in rows} == {"train", "embed", "embed-train"}
    package = str((site / "llmkit").resolve())
    for row in rows:
        where = f"{row['kind']} {row['name']}"
        assert row["loaded_as"] == row["kind"] and row["path"].startswith(str(site)), where
        expected = load_any(next(s.path for s in SHIPPED if s.name == row["name"] and s.kind == row["kind"]))
        assert set(row["inputs"]) == set(expected.inputs()), where  # the wheel's copy sees the same inputs
        for key, (path, present) in row["inputs"].items():
            assert present and path.startswith(package), f"{where}: {key} {path}"
        for out in row["outputs"]:
            assert out.startswith(str(cwd)), f"{where}: output {out} is not under the cwd"
    listed = subprocess.run(
        [sys.executable, "-m", "llmkit", "recipes", "list", "--json"],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
    )
    assert listed.returncode == 0, listed.stderr
    assert {(r["name"], r["kind"]) for r in json.loads(listed.stdout)} >= {
        ("smollm2-135m-chat", "train"),
        ("topics", "embed"),
    }
