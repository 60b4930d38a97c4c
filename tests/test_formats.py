import json
import os

import numpy as np
import pytest

from echo_lite.audio import write_audio
from echo_lite.data.formats import (
    MANIFEST,
    FormatError,
    Item,
    append_jsonl,
    check_relative,
    item_audio,
    load_hf_split,
    manifest_ids,
    read_manifest,
    resolve_audio,
    save_hf_split,
)


def _item(i=0, **kw):
    d = dict(id=f"scene-{i}-q0", audio=f"audio/scene-{i}.wav", duration=4.0, question="Which tone is heard at 1.5 s?",
             choices=["C5 tone", "E4 tone"], answer="C5 tone",
             response="<think>I listen to <seg>1.0, 2.0</seg>, this is the C5 tone.</think><answer>C5 tone</answer>",
             qtype="tone_at_time", events=[{"kind": "tone", "label": "C5 tone", "onset": 1.0, "offset": 2.0, "attrs": {}}],
             decisive_spans=[[1.0, 2.0]], cited_spans=[[1.0, 2.0]], split="sft", seed=i, scene_id=f"scene-{i}",
             query={"t": 1.5})
    d.update(kw)
    return Item(**d)


def _split(tmp_path, n=3):
    split = tmp_path / "sft"
    for i in range(n):
        t = np.arange(64000) / 16000
        write_audio(split / "audio" / f"scene-{i}.wav", (0.3 * np.sin(2 * np.pi * (300 + 100 * i) * t)).astype(np.float32))
    append_jsonl(split / MANIFEST, [_item(i).to_json() for i in range(n)])
    return split


@pytest.mark.parametrize("rel", ["../outside.wav", "audio/../../x.wav", "/etc/passwd", "C:/x.wav", ""])
def test_paths_escaping_the_root_are_refused(rel):
    with pytest.raises(FormatError, match="audio path"):
        check_relative(rel)


def test_a_symlink_out_of_the_root_is_refused(tmp_path):
    root = tmp_path / "root"
    (root / "audio").mkdir(parents=True)
    secret = tmp_path / "secret.wav"
    write_audio(secret, np.zeros(1600, np.float32))
    os.symlink(secret, root / "audio" / "link.wav")
    with pytest.raises(FormatError, match="outside the data root"):
        resolve_audio(root, "audio/link.wav")
    with pytest.raises(FormatError, match="audio file not found: .*missing.wav"):
        resolve_audio(root, "audio/missing.wav")


def test_manifest_round_trip_and_errors_name_file_and_line(tmp_path):
    split = _split(tmp_path)
    items = read_manifest(split / MANIFEST)
    assert [it.id for it in items] == ["scene-0-q0", "scene-1-q0", "scene-2-q0"] and items[1] == _item(1)
    lines = (split / MANIFEST).read_text().splitlines()
    cases = [
        ("{oops", r"manifest.jsonl:2: not valid JSON"),
        (json.dumps({**json.loads(lines[1]), "answer": "G4 tone"}), r"manifest.jsonl:2 .*answer 'G4 tone' is not one of"),
        (json.dumps({**json.loads(lines[1]), "audio": "../../etc/x.wav"}), r"manifest.jsonl:2: audio path .* escapes"),
        (json.dumps({k: v for k, v in json.loads(lines[1]).items() if k != "choices"}), r"manifest.jsonl:2: missing field"),
        (json.dumps({**json.loads(lines[1]), "cited_spans": [[3.0, 9.0]]}), r"manifest.jsonl:2 .*ends after the clip"),
        (json.dumps({**json.loads(lines[1]), "audio": "audio/nope.wav"}), r"manifest.jsonl:2: audio file not found"),
        (lines[0], r"manifest.jsonl:2: item id 'scene-0-q0' appears twice"),
    ]
    for bad, match in cases:
        (split / MANIFEST).write_text("\n".join([lines[0], bad, lines[2]]) + "\n")
        with pytest.raises(FormatError, match=match):
            read_manifest(split / MANIFEST)


def test_a_torn_last_line_is_cut_before_appending(tmp_path):
    split = _split(tmp_path, n=2)
    path = split / MANIFEST
    with path.open("a") as f:
        f.write(_item(2).to_json()[:40])  # a writer killed mid-line
    with pytest.raises(FormatError, match="unfinished last line"):
        read_manifest(path)
    assert manifest_ids(path) == {"scene-0-q0", "scene-1-q0"}  # cuts the torn line
    append_jsonl(path, [_item(2).to_json()])
    write_audio(split / "audio" / "scene-2.wav", np.zeros(16000, np.float32))
    assert [it.id for it in read_manifest(path)] == ["scene-0-q0", "scene-1-q0", "scene-2-q0"]


def test_hf_split_embeds_the_audio(tmp_path):
    split = _split(tmp_path)
    save_hf_split(split)
    ds = load_hf_split(split)
    assert len(ds) == 3 and ds.features["audio"].sampling_rate == 16000
    row = ds[1]
    assert row["id"] == "scene-1-q0" and json.loads(row["events"])[0]["label"] == "C5 tone"
    wav = item_audio(row)
    expected = np.sin(2 * np.pi * 400 * np.arange(64000) / 16000) * 0.3
    assert np.abs(wav - expected).max() < 1e-3  # 16-bit PCM of the clip written to disk
    assert row["decisive_spans"] == [[1.0, 2.0]]
