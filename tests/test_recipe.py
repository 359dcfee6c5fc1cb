"""Recipes: every shipped one validates; bad ones are reported precisely and all at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmkit.errors import RecipeError
from llmkit.recipe import RECIPES_DIR, load, shipped_recipes

SHIPPED = sorted(RECIPES_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_recipe_validates(path: Path):
    recipe = load(path)
    assert recipe.model.name
    data = recipe.resolve_path(recipe.data.path)
    if data.suffix:  # a local file (not an HF dataset name) must ship with the recipe
        assert data.is_file(), f"{path.name}: {data} missing"
    first = path.read_text().splitlines()[0]
    assert first.startswith("# "), f"{path.name} must open with a comment saying what it does"


def test_shipped_recipes_are_listed():
    names = {r.name for r in shipped_recipes()}
    assert {"tiny", "smollm2-135m-chat"} <= names


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


def test_a_wheel_install_ships_the_recipes(tmp_path):
    """Installed from a wheel (no checkout around), the shipped recipes and their data are there."""
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
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = (
        "import llmkit, llmkit.recipe as r; "
        f"assert llmkit.__file__.startswith({str(site)!r}), llmkit.__file__; "
        "print(r.load('tiny').data.path, r.load('tiny').resolve_path(r.load('tiny').data.path).is_file())"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["data/chat-tiny.jsonl", "True"]
    listed = subprocess.run(
        [sys.executable, "-m", "llmkit", "recipes", "list"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert listed.returncode == 0 and "smollm2-135m-chat" in listed.stdout, listed.stderr
