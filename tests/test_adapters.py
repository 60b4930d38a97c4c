import json

import numpy as np
import pytest
import soundfile as sf

from echo_lite.data.adapters import AdapterError, read_audioset_strong, read_label_map, read_musicbench

HEADER = "segment_id\tstart_time_seconds\tend_time_seconds\tlabel\n"


def _tsv(path, rows, header=HEADER):
    path.write_text(header + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    return path


@pytest.fixture
def label_map(tmp_path):
    path = tmp_path / "mid_to_display_name.tsv"
    path.write_text("/m/09x0r\tSpeech\n/m/0bt9lr\tDog\n/m/07yv9\tVehicle\n")
    return path


def test_audioset_strong_rows_become_scenes(tmp_path, label_map):
    tsv = _tsv(tmp_path / "audioset_eval_strong.tsv", [
        ("Y0abc_30000", 1.234, 3.456, "/m/09x0r"),
        ("Y0abc_30000", 0.0, 10.0, "/m/07yv9"),
        ("Y0abc_30000", 5.51, 6.0, "/m/0bt9lr"),
        ("Yxyz_0", 2.0, 2.04, "/m/0bt9lr"),
    ])
    scenes = {s.scene_id: s for s in read_audioset_strong(tsv, label_map)}
    assert set(scenes) == {"Y0abc_30000", "Yxyz_0"}
    a = scenes["Y0abc_30000"]
    assert a.duration == 10.0 and a.meta["source"] == "audioset_strong"
    assert [(e.label, e.onset, e.offset) for e in a.events] == [
        ("vehicle", 0.0, 10.0), ("speech", 1.2, 3.5), ("dog", 5.5, 6.0)]
    assert a.events[1].attrs["onset_exact"] == 1.234 and a.events[1].attrs["mid"] == "/m/09x0r"
    short = scenes["Yxyz_0"].events[0]
    assert (short.onset, short.offset) == (2.0, 2.1)  # shorter than the grid: one 0.1 s cell


def test_audioset_audio_is_located_and_a_missing_file_named(tmp_path, label_map):
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "Y0abc_30000.flac", np.zeros(16000 * 8, dtype=np.float32), 16000)
    tsv = _tsv(tmp_path / "strong.tsv", [("Y0abc_30000", 1.0, 9.5, "/m/09x0r"), ("Ymissing_0", 1.0, 2.0, "/m/09x0r")])
    with pytest.raises(AdapterError, match=r"strong.tsv:3: audio file not found: .*Ymissing_0.wav"):
        read_audioset_strong(tsv, label_map, audio_root=audio)
    scenes = read_audioset_strong(tsv, label_map, audio_root=audio, require_audio=False)
    assert [s.scene_id for s in scenes] == ["Y0abc_30000"]
    assert scenes[0].duration == 8.0 and scenes[0].events[0].offset == 8.0  # clipped to the real audio
    assert scenes[0].meta["audio_path"].endswith("Y0abc_30000.flac")


@pytest.mark.parametrize("row,match", [
    (("Y1_0", "abc", 2.0, "/m/09x0r"), r"strong.tsv:3: start_time_seconds 'abc' is not a number"),
    (("Y1_0", 3.0, 2.0, "/m/09x0r"), r"strong.tsv:3: need 0 <= start < end"),
    (("Y1_0", 1.0, 2.0, "/m/nope"), r"strong.tsv:3: label '/m/nope' is not in the label map"),
    (("Y1_0", 1.0, 2.0), r"strong.tsv:3: expected 4 tab-separated fields, got 3"),
    (("Y1_0", 1.0, "nan", "/m/09x0r"), r"strong.tsv:3: end_time_seconds 'nan' is not finite"),
])
def test_malformed_audioset_rows_name_file_and_line(tmp_path, label_map, row, match):
    tsv = _tsv(tmp_path / "strong.tsv", [("Y0_0", 0.5, 1.0, "/m/09x0r"), row])
    with pytest.raises(AdapterError, match=match):
        read_audioset_strong(tsv, label_map)


def test_bad_header_and_label_map(tmp_path, label_map):
    with pytest.raises(AdapterError, match=r"strong.tsv:1: expected the header"):
        read_audioset_strong(_tsv(tmp_path / "strong.tsv", [], header="a\tb\tc\td\n"), label_map)
    bad_map = tmp_path / "map.tsv"
    bad_map.write_text("/m/09x0r\tSpeech\n/m/0bt9lr Dog\n")
    with pytest.raises(AdapterError, match=r"map.tsv:2: expected 2 tab-separated fields"):
        read_label_map(bad_map)
    assert read_label_map(label_map)["/m/0bt9lr"] == "Dog"


def _musicbench_row(**kw):
    row = {
        "location": "data_aug2/-0SdAVK79lg_1.wav",
        "main_caption": "A calm acoustic guitar piece with soft percussion.",
        "alt_caption": "", "prompt_aug": "", "prompt_ch": "The chord progression is C, G, Am.",
        "prompt_bt": "The beat counts to 4.", "prompt_bpm": "The bpm is 96.0.", "prompt_key": "The key is C major.",
        "beats": [[0.31, 0.94, 1.56, 2.19], [1.0, 2.0, 3.0, 4.0]], "bpm": 96.0, "key": ["C", "major"],
        "keyprob": [0.81], "chords": ["C", "G", "Am"], "chords_time": [0.464, 3.715, 7.012],
        "is_audioset_eval_mcaps": False,
    }
    row.update(kw)
    return row


def test_musicbench_rows_become_scenes(tmp_path):
    path = tmp_path / "MusicBench_test_A.json"
    path.write_text("\n".join(json.dumps(r) for r in [_musicbench_row(), _musicbench_row(location="b/x.wav",
                                                                                          key="A minor")]) + "\n")
    a, b = read_musicbench(path)
    assert a.scene_id == "-0SdAVK79lg_1" and a.duration == 10.0 and a.meta["caption"].startswith("A calm")
    music = a.events[0]
    assert music.kind == "music" and music.label == "C major music" and music.attrs["bpm"] == 96.0
    assert music.attrs["beats"] == [0.31, 0.94, 1.56, 2.19]
    chords = [(e.label, e.onset, e.offset) for e in a.events if e.kind == "chord"]
    assert chords == [("C chord", 0.5, 3.7), ("G chord", 3.7, 7.0), ("Am chord", 7.0, 10.0)]
    assert b.events[0].label == "A minor music"
    array = tmp_path / "array.json"
    array.write_text(json.dumps([_musicbench_row()]))
    assert read_musicbench(array)[0].events == a.events


@pytest.mark.parametrize("line,match", [
    ("{not json", r"bench.json:2: not valid JSON"),
    (json.dumps(_musicbench_row(chords=["C"], chords_time=[0.1, 2.0])), r"bench.json:2: chords and chords_time"),
    (json.dumps(_musicbench_row(bpm="fast")), r"bench.json:2: bpm 'fast' is not a number"),
    (json.dumps({k: v for k, v in _musicbench_row().items() if k != "location"}), r"bench.json:2: missing field 'location'"),
    (json.dumps(_musicbench_row(chords_time=[3.0, 1.0, 2.0])), r"bench.json:2: chords_time is not sorted"),
    (json.dumps(_musicbench_row(beats=[1, 2])), r"bench.json:2: beats must be"),
])
def test_malformed_musicbench_rows_name_file_and_line(tmp_path, line, match):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(_musicbench_row()) + "\n" + line + "\n")
    with pytest.raises(AdapterError, match=match):
        read_musicbench(path)


def test_musicbench_missing_audio_is_named(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(_musicbench_row()) + "\n")
    with pytest.raises(AdapterError, match=r"bench.json:1: audio file not found: .*-0SdAVK79lg_1.wav"):
        read_musicbench(path, audio_root=tmp_path)
