import filecmp
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from echo_lite.audio import load_audio
from echo_lite.config import SAMPLE_RATE, get_preset
from echo_lite.data.formats import MANIFEST, SPLITS, item_audio, load_hf_split, read_manifest
from echo_lite.data.synth import SynthError, plan_seeds, synthesize
from echo_lite.data.world import render_scene, sample_scene
from echo_lite.segments import parse_segments, segment_iou

N = 160


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "data"
    stats = synthesize(out, "tiny", n=N, seed=3, progress=False)
    return out, stats


def test_every_split_is_filled_and_counted(run):
    out, stats = run
    on_disk = {s: read_manifest(out / s / MANIFEST) for s in SPLITS}
    assert all(len(on_disk[s]) > 0 for s in SPLITS)
    assert {s: len(on_disk[s]) for s in SPLITS} == {s: stats["items"][s] for s in SPLITS}
    assert json.loads((out / "stats.json").read_text()) == stats
    assert sum(stats["items"][s] for s in (*SPLITS, "dropped", "declined")) == N
    assert len(stats["qtypes_drafted"]) >= 8
    assert stats["clips_over_10s"] > 0 and stats["clip_seconds"]["max"] > 20
    assert sum(stats["clip_seconds_histogram"].values()) == sum(stats["scenes"].values())
    for s in SPLITS:
        assert dict(sorted((k, v) for k, v in stats["qtypes"][s].items())) == dict(
            sorted(__import__("collections").Counter(it.qtype for it in on_disk[s]).items()))
    assert all(it.response == "" or it.response.startswith("<think>") for s in SPLITS for it in on_disk[s])
    assert all(it.response for it in on_disk["sft"])


def test_eval_uses_held_out_seeds(run):
    out, _ = run
    seeds = {s: {it.seed for it in read_manifest(out / s / MANIFEST)} for s in SPLITS}
    assert seeds["eval"].isdisjoint(seeds["sft"] | seeds["rl"])
    train, held = plan_seeds(N, 3, get_preset("tiny").data)
    assert seeds["eval"] <= set(held) and (seeds["sft"] | seeds["rl"]) <= set(train)
    scenes = {s: {it.scene_id for it in read_manifest(out / s / MANIFEST)} for s in SPLITS}
    assert scenes["eval"].isdisjoint(scenes["sft"] | scenes["rl"])


def test_every_cited_span_matches_the_metadata(run):
    """Re-check each <seg> of every written response against the item's own event list."""
    out, _ = run
    n_checked = 0
    for split in SPLITS:
        for it in read_manifest(out / split / MANIFEST):
            if not it.response:
                assert it.cited_spans == []
                continue
            think = re.search(r"<think>(.*)</think>", it.response, re.DOTALL).group(1)
            tags = parse_segments(think)
            assert [list(t.span) for t in tags] == it.cited_spans
            for tag in tags:
                clause = re.split(r";|\.(?!\d)", think[tag.end_char:])[0]
                labels = [e["label"] for e in it.events if e["label"] in clause]
                assert labels, (it.id, clause)
                label = max(labels, key=len)  # "5 knocks" rather than a label inside it
                spans = [(e["onset"], e["offset"]) for e in it.events if e["label"] == label]
                assert max(segment_iou(tag.span, s) for s in spans) >= 0.3
                assert tag.span in spans, (it.id, tag.raw, label, spans)  # the rule teacher cites exact times
                assert 0 <= tag.span[0] < tag.span[1] <= it.duration
                n_checked += 1
            spans = {(e["onset"], e["offset"]) for e in it.events}
            assert {tuple(s) for s in it.decisive_spans} <= spans
    assert n_checked > N // 2


def test_clips_on_disk_are_the_scenes(run):
    out, _ = run
    items = read_manifest(out / "sft" / MANIFEST)[:3]
    for it in items:
        wav = load_audio(out / "sft" / it.audio)
        expected = render_scene(sample_scene(it.seed))
        assert len(wav) == round(it.duration * SAMPLE_RATE) and np.abs(wav - expected).max() < 1e-3
    ds = load_hf_split(out / "sft")
    assert ds[0]["id"] == items[0].id
    assert np.abs(item_audio(ds[0]) - load_audio(out / "sft" / items[0].audio)).max() < 1e-6


def test_rerun_resumes_and_repairs(run, tmp_path):
    out, stats = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    manifest = copy / "sft" / MANIFEST
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text("".join(lines[: len(lines) // 2]) + lines[len(lines) // 2][:30])  # killed mid-write
    lost = read_manifest(out / "sft" / MANIFEST)[-1]
    (copy / "sft" / lost.audio).unlink()
    assert synthesize(copy, "tiny", n=N, seed=3, progress=False, write_hf=False) == stats
    for split in SPLITS:
        assert filecmp.cmp(out / split / MANIFEST, copy / split / MANIFEST, shallow=False)
    assert filecmp.cmp(out / "sft" / lost.audio, copy / "sft" / lost.audio, shallow=False)
    with pytest.raises(SynthError, match="written with other settings .*seed"):
        synthesize(copy, "tiny", n=N, seed=4, progress=False, write_hf=False)
    # a directory written before a data setting existed resumes with the value the setting had then:
    # walk_max_spans its default, chain "named" (the default until the walks replaced it)
    config_path = copy / "synth_config.json"
    config = json.loads(config_path.read_text())
    assert config["data"]["chain"] == "walk"  # today's default
    del config["data"]["chain"], config["data"]["walk_max_spans"]
    config_path.write_text(json.dumps(config))
    with pytest.raises(SynthError, match="written with other settings .*data"):
        synthesize(copy, "tiny", n=N, seed=3, progress=False, write_hf=False)
    named = get_preset("tiny").with_overrides(data={"chain": "named"})
    assert synthesize(copy, named, n=N, seed=3, progress=False, write_hf=False)["items"] == stats["items"]


def test_cli_synth(tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "echo_lite.cli", "synth", "--preset", "tiny", "--n", "24", "--out",
                        str(out), "--seed", "1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    stats = json.loads((out / "stats.json").read_text())
    assert stats["n_requested"] == 24 and all(stats["items"][s] > 0 for s in SPLITS)
    assert json.loads(r.stdout)["items"] == stats["items"]
    bad = subprocess.run([sys.executable, "-m", "echo_lite.cli", "synth", "--out", str(out), "--n", "0"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--n must be >= 1" in bad.stderr
    # the chain style is recorded: the default (walks) is written, and the directory refuses --chain named
    cots = [it.response for split in SPLITS for it in read_manifest(out / split / MANIFEST)]
    assert any("I go through the sounds from the start" in c for c in cots)
    other = subprocess.run([sys.executable, "-m", "echo_lite.cli", "synth", "--preset", "tiny", "--n", "24", "--out",
                            str(out), "--seed", "1", "--chain", "named"], capture_output=True, text=True, timeout=300)
    assert other.returncode != 0 and "data differ" in other.stderr
    named = tmp_path / "named"
    r = subprocess.run([sys.executable, "-m", "echo_lite.cli", "synth", "--preset", "tiny", "--n", "24", "--out",
                        str(named), "--seed", "1", "--chain", "named"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads((named / "synth_config.json").read_text())["data"]["chain"] == "named"
    cots = [it.response for split in SPLITS for it in read_manifest(named / split / MANIFEST)]
    assert not any("I go through the sounds from the start" in c for c in cots)


def _audioset_files(root, n):
    """AudioSet-Strong files (TSV, label map, clips) describing n rendered synthetic scenes."""
    from echo_lite.audio import write_audio

    audio = root / "clips"
    audio.mkdir(parents=True)
    mids, rows = {}, ["segment_id\tstart_time_seconds\tend_time_seconds\tlabel"]
    for seed in range(n):
        scene = sample_scene(seed, kinds=["tone", "chirp", "knocks", "noise"], overlap_prob=0.0)
        seg = f"Yseg{seed}_30000"
        write_audio(audio / f"{seg}.wav", render_scene(scene))
        for e in scene.events:
            mid = mids.setdefault(e.label, f"/m/x{len(mids)}")
            rows.append(f"{seg}\t{e.onset:.3f}\t{e.offset:.3f}\t{mid}")
    (root / "strong.tsv").write_text("\n".join(rows) + "\n")
    (root / "names.tsv").write_text("".join(f"{mid}\t{label}\n" for label, mid in mids.items()))
    return root / "strong.tsv", root / "names.tsv", audio


def test_real_source_metadata_runs_through_the_same_stage(tmp_path):
    from echo_lite.data.synth import run

    tsv, names, audio = _audioset_files(tmp_path, 8)
    stats = run(tmp_path / "out", "tiny", n=16, audioset_tsv=str(tsv), label_map=str(names), audio_root=str(audio),
                progress=False)
    assert stats["scenes"]["train"] + stats["scenes"]["eval"] == 8 and stats["items"]["sft"] > 0
    for split in SPLITS:
        for it in read_manifest(tmp_path / "out" / split / MANIFEST):
            src = load_audio(audio / f"{it.scene_id}.wav")
            assert np.array_equal(load_audio(tmp_path / "out" / split / it.audio), src)
            spans = {(e["onset"], e["offset"]) for e in it.events}
            assert all(tuple(s) in spans for s in it.cited_spans)


def test_missing_real_audio_is_named_by_the_cli(tmp_path, capsys):
    from echo_lite.cli import main

    tsv, names, audio = _audioset_files(tmp_path, 2)
    (audio / "Yseg1_30000.wav").unlink()
    rc = main(["synth", "--out", str(tmp_path / "out"), "--n", "4", "--audioset-tsv", str(tsv), "--label-map",
               str(names), "--audio-root", str(audio)])
    err = capsys.readouterr().err
    assert rc == 2 and "strong.tsv:" in err and "audio file not found" in err and "Yseg1_30000.wav" in err
