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
               "--sft-epochs", "0.2", "--grpo-steps", "1", "--eval-items", "4",
               "--self-improve-questions", "0")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((tmp_path / "demo" / "results.json").read_text())
    # toy sizes: the SFT model writes no well-formed answer yet, so no second round (tests/test_self_improve.py)
    assert [r["name"] for r in rows] == ["base one-pass CoT", "SFT tags_only", "SFT interleaved",
                                         "SFT interleaved, consensus 8", "SFT+GRPO interleaved (Echo)",
                                         "SFT+GRPO, consensus 8", "GRPO without SFT",
                                         "GRPO without segment reward", "final random_segment", "final oracle_segment"]
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["seconds_per_answer"] > 0
        assert r["samples"] == (8 if "consensus" in r["name"] else 1)
    consensus = json.loads((tmp_path / "demo" / "eval" / "sft_interleaved_consensus8.json").read_text())
    assert (consensus["samples"], consensus["temperature"]) == (8, 0.7)  # sampled at the preset's eval temperature
    assert consensus["model"] == str(tmp_path / "demo" / "sft" / "final") and not (tmp_path / "demo" / "sft_self").exists()
    assert "SFT+GRPO interleaved (Echo)" in out.stdout  # the printed table
    assert "shipped run" not in out.stdout  # toy sizes: no comparison with the shipped table

    # Resumed, every stage is reused, but an evaluation cached under other measures is redone
    stale = tmp_path / "demo" / "eval" / "sft_interleaved.json"
    kept = tmp_path / "demo" / "eval" / "sft_tags_only.json"
    cached = json.loads(stale.read_text())
    stale.write_text(json.dumps({**cached, "metrics_version": 1, "accuracy": 9.0}))
    kept.write_text(json.dumps({**json.loads(kept.read_text()), "seconds_per_answer": 123.0}))
    again = _run("demo", "--preset", "tiny", "--run-dir", str(tmp_path / "demo"), "--n-items", "40",
                 "--sft-epochs", "0.2", "--grpo-steps", "1", "--eval-items", "4",
                 "--self-improve-questions", "0")
    assert again.returncode == 0, again.stderr[-3000:]
    redone = {r["name"]: r for r in json.loads((tmp_path / "demo" / "results.json").read_text())}
    assert redone["SFT interleaved"]["accuracy"] == rows[2]["accuracy"]  # re-evaluated, not the stale 9.0
    assert redone["SFT tags_only"]["seconds_per_answer"] == 123.0  # current measures: reused
    assert "sft:" not in again.stdout + again.stderr and "grpo (" not in again.stdout + again.stderr


def test_sft_flags_override_the_preset_only_when_given():
    from echo_lite.cli import build_parser, sft_preset

    def spec(*flags):
        return sft_preset(build_parser().parse_args(["sft", *flags, "--data", "d", "--out", "o"])).sft

    tiny = spec("--preset", "tiny")  # the tiny preset trains all weights, cited clips inserted
    assert (tiny.use_lora, tiny.insert_cited_clips) == (False, True)
    assert spec("--preset", "tiny", "--lora", "--no-insert-clips").use_lora is True
    assert spec("--preset", "tiny", "--no-insert-clips").insert_cited_clips is False
    big = spec("--preset", "omni-3b")
    assert (big.use_lora, big.insert_cited_clips) == (True, False)
    assert spec("--preset", "omni-3b", "--full", "--insert-clips").use_lora is False
    assert spec("--preset", "omni-3b", "--insert-clips").insert_cited_clips is True
    assert (tiny.group_by_length, big.group_by_length) == (True, False)
    assert spec("--preset", "tiny", "--no-group-by-length").group_by_length is False
    assert spec("--preset", "omni-3b", "--group-by-length").group_by_length is True


def test_eval_answers_by_consensus_when_asked(small_synth, tmp_path):
    out = _run("eval", "--preset", "tiny", "--data", str(small_synth), "--limit", "2", "--samples", "3",
               "--out", str(tmp_path / "ev"))
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / "ev" / "synthetic_interleaved_consensus3.json").read_text())
    assert (metrics["samples"], metrics["temperature"], metrics["n"]) == (3, 0.7, 2)  # the preset's eval temperature
    greedy = _run("eval", "--preset", "tiny", "--data", str(small_synth), "--limit", "2", "--samples", "3",
                  "--temperature", "0", "--out", str(tmp_path / "ev"))
    assert greedy.returncode == 2 and "greedy samples are all the same answer" in greedy.stderr
    mmau = _run("eval", "--preset", "tiny", "--bench", "mmau", "--data", str(tmp_path), "--samples", "3",
                "--out", str(tmp_path / "ev"))
    assert mmau.returncode == 2 and "synthetic benchmark only" in mmau.stderr
