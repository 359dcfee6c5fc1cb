"""The CLI skeleton: light startup, version, one-line errors, exit codes."""

from __future__ import annotations

import subprocess
import sys

from llmkit import __version__


def test_help_does_not_import_torch_or_transformers():
    code = (
        "import sys\n"
        "from llmkit.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'sentence_transformers') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "Usage" in out
    assert out.strip().endswith("HEAVY="), out


def test_version(llmkit_cli):
    result = llmkit_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"llmkit {__version__}"


def test_library_error_is_one_line_without_traceback(llmkit_cli):
    result = llmkit_cli("recipes", "show", "no-such-recipe")
    assert result.returncode == 1
    assert result.stderr.startswith("Error: recipe not found: no-such-recipe")
    assert "Traceback" not in result.stderr
    assert "hint:" in result.stderr


def test_debug_shows_traceback(llmkit_cli):
    result = llmkit_cli("--debug", "recipes", "show", "no-such-recipe")
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_usage_error_exits_2(llmkit_cli):
    result = llmkit_cli("recipes", "show")
    assert result.returncode == 2
    assert "Missing argument" in result.stderr
    result = llmkit_cli("no-such-command")
    assert result.returncode == 2


def test_python_dash_m_and_console_script_agree():
    import shutil

    exe = shutil.which("llmkit") or str(__import__("pathlib").Path(sys.executable).parent / "llmkit")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"llmkit {__version__}"
