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


def test_demo_runs_the_whole_pipeline_small(tmp_path):
    """The main job end to end at toy sizes: every stage runs and the ablation table is written."""
    out = _run("demo", "--preset", "tiny", "--run-dir", str(tmp_path / "demo"), "--n-items", "40",
               "--sft-epochs", "0.2", "--grpo-steps", "1", "--eval-items", "4")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert [r["name"] for r in rows] == ["base one-pass CoT", "SFT tags_only", "SFT interleaved",
                                         "SFT+GRPO interleaved (Echo)", "GRPO without SFT",
                                         "GRPO without segment reward", "final random_segment", "final oracle_segment"]
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["seconds_per_answer"] > 0
    assert "SFT+GRPO interleaved (Echo)" in out.stdout  # the printed table
