"""MMAU / MMAR formats and scorers, on small files written here in the benchmarks' own formats;
every expected figure is computed by hand in the comments."""

import json

import pytest

from echo_lite.scoring import (
    BenchmarkFormatError,
    load_mmar,
    load_mmau,
    score_mmar,
    score_mmau,
    string_match,
    write_predictions,
)


def _mmau_row(i, task, answer, choices):
    return {"id": f"mmau-{i}", "audio_id": f"./test-mini-audios/{i}.wav", "question": "Which sound is heard?",
            "choices": choices, "answer": answer, "dataset": "synthetic", "task": task, "split": "test-mini",
            "category": "Sound Event Detection", "sub-category": "x", "difficulty": "easy"}


def _mmar_row(i, modality, answer, choices):
    return {"id": f"mmar-{i}", "audio_path": f"./audio/{i}.wav", "question": "What happens?", "choices": choices,
            "answer": answer, "modality": modality, "category": "Perception", "sub-category": "x",
            "language": "en", "source": "synthetic", "url": "", "timestamp": ""}


def test_official_string_match():
    choices = ["a dog barking", "a cat meowing", "a car horn"]
    assert string_match("a dog barking", "The answer is a dog barking.", choices)
    assert not string_match("a dog barking", "a dog barking or a cat", choices)  # a wrong option's word
    assert not string_match("a dog barking", "dog", choices)  # not every answer word
    assert string_match("a dog barking", "A DOG BARKING", choices)
    assert not string_match("a dog barking", "", choices)


def test_mmau_load_predict_score(tmp_path):
    c = ["dog", "cat", "car"]
    rows = [_mmau_row(0, "sound", "dog", c), _mmau_row(1, "sound", "cat", c), _mmau_row(2, "music", "car", c),
            _mmau_row(3, "speech", "dog", c), _mmau_row(4, "speech", "cat", c)]
    (tmp_path / "mmau-test-mini.json").write_text(json.dumps(rows))
    items = load_mmau(tmp_path)
    assert [it.group for it in items] == ["sound", "sound", "music", "speech", "speech"]
    assert items[0].audio == (tmp_path / "test-mini-audios" / "0.wav").resolve()
    preds = {"mmau-0": "dog", "mmau-1": "something else", "mmau-2": "car", "mmau-3": "dog", "mmau-4": None}
    out = write_predictions(items, preds, tmp_path / "pred.json", "mmau")
    written = json.loads(out.read_text())
    assert written[0]["model_prediction"] == "dog" and written[0]["difficulty"] == "easy"
    s = score_mmau(out)
    # sound 1/2 = 50, music 1/1 = 100, speech 1/2 = 50; macro (paper Avg) = 66.67; micro 3/5 = 60
    assert s["per_group"] == {"sound": 50.0, "music": 100.0, "speech": 50.0}
    assert s["macro"] == pytest.approx(200 / 3) and s["micro"] == pytest.approx(60.0)
    # "something else" matches no option: wrong, counted as unmatched (no first-option fallback);
    # the missing prediction counts as wrong and is reported, not skipped
    assert s["unmatched"] == 1 and s["missing"] == 1 and s["n"] == 5


def test_mmar_macro_is_the_mean_of_the_seven_groups(tmp_path):
    c = ["rain", "thunder", "wind"]
    groups = ["sound", "music", "speech", "sound-music", "sound-speech", "music-speech", "sound-music-speech"]
    rows, preds = [], {}
    # group g has g+1 items of which the first is answered correctly
    i = 0
    for g, modality in enumerate(groups):
        for k in range(g + 1):
            rows.append(_mmar_row(i, modality, "rain", c))
            preds[f"mmar-{i}"] = "rain" if k == 0 else "wind"
            i += 1
    (tmp_path / "MMAR-meta.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_mmar(tmp_path)
    assert len(items) == 28
    out = write_predictions(items, preds, tmp_path / "pred.jsonl", "mmar")
    first = json.loads(out.read_text().splitlines()[0])
    assert first["answer_prediction"] == "rain"
    s = score_mmar(out)
    per = [100.0 / (g + 1) for g in range(7)]
    assert s["per_group"] == pytest.approx(dict(zip(groups, per)))
    assert s["macro"] == pytest.approx(sum(per) / 7)  # 37.04, the paper's "Avg"
    assert s["micro"] == pytest.approx(100 * 7 / 28)  # 25.0
    assert s["unmatched"] == 0 and s["missing"] == 0


def test_bad_files_name_file_and_row(tmp_path):
    bad = tmp_path / "MMAR-meta.jsonl"
    bad.write_text(json.dumps(_mmar_row(0, "sound", "a", ["a", "b"])) + "\n{not json\n")
    with pytest.raises(BenchmarkFormatError, match="MMAR-meta.jsonl:2: not valid JSON"):
        load_mmar(bad)
    row = _mmar_row(0, "sound", "a", ["a", "b"])
    del row["choices"]
    bad.write_text(json.dumps(row) + "\n")
    with pytest.raises(BenchmarkFormatError, match="MMAR-meta.jsonl:1: item 'mmar-0' lacks the field 'choices'"):
        load_mmar(bad)
    bad.write_text(json.dumps(_mmar_row(0, "smell", "a", ["a", "b"])) + "\n")
    with pytest.raises(BenchmarkFormatError, match="modality 'smell'"):
        load_mmar(bad)
    bad.write_text(json.dumps({**_mmar_row(0, "sound", "a", ["a", "b"]), "audio_path": "../../etc/passwd"}) + "\n")
    with pytest.raises(BenchmarkFormatError, match="escapes"):
        load_mmar(bad)
    with pytest.raises(BenchmarkFormatError, match="file not found"):
        load_mmau(tmp_path / "nowhere.json")
    (tmp_path / "mmau-test-mini.json").write_text('{"id": 1}')
    with pytest.raises(BenchmarkFormatError, match="expected a JSON list"):
        load_mmau(tmp_path)
