import json
import subprocess
import sys


def _run(*args):
    return subprocess.run([sys.executable, "-m", "echo_lite.cli", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_the_working_subcommands():
    out = _run("--help")
    assert out.returncode == 0
    for cmd in ("demo", "info", "build-tokenizer"):
        assert cmd in out.stdout


def test_unknown_preset_is_refused():
    out = _run("demo", "--preset", "omni-70b")
    assert out.returncode != 0 and "invalid choice: 'omni-70b'" in out.stderr


def test_demo_runs_an_interleaved_ready_forward(tmp_path):
    out = _run("demo", "--preset", "tiny", "--json", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["logits_finite"]
    assert result["audio_placeholders"] == result["audio_tokens_full"] + result["audio_tokens_reinserted"]
    assert result["audio_tokens_reinserted"] == 25  # a 1 s span at 25 tokens/s
