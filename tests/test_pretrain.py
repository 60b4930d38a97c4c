"""Pretraining the tiny base: items, scoring, a short real run, checkpoint and resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from echo_lite.audio import audio_token_count, cut_span
from echo_lite.config import AUDIO_BOS, AUDIO_PAD, DATA_DIR, SEG_CLOSE, get_preset
from echo_lite.data.world import render_scene, sample_scene
from echo_lite.perception import (
    PROBES,
    Collator,
    Item,
    PerceptionError,
    answer_loss,
    chance_level,
    fine_detail_items,
    present_label_baseline,
    probe_items,
    read_item,
    relisten_item,
    rows_correct,
    run_probes,
    score_items,
    span_item,
    split_teacher_clause,
    time_copy_items,
    training_batch,
    walk_item,
)
from echo_lite.pretrain import PretrainError, learning_rate, pretrain

TINY = get_preset("tiny")


def _small(**extra):
    """The tiny preset shrunk for tests: short scenes, a few steps, few probe items."""
    pretrain = dict(steps=4, curriculum_steps=2, eval_every=4, eval_items=2, save_every=100, probe_items=3,
                    scene_buckets=(((5.0, 6.0), 1.0),), probe_seconds=(5.0, 6.0), fine_detail_seconds=(10.0, 11.0),
                    batch_size=4, task_weights=(("onepass", 0.5), ("relisten", 0.5)))
    pretrain.update(extra)
    return TINY.with_overrides(pretrain=pretrain)


@pytest.fixture(scope="module")
def collate(tiny_tokenizer):
    return Collator(tiny_tokenizer, TINY.model.n_mels)


def test_training_batches_are_a_pure_function_of_seed_and_step():
    spec = _small().pretrain
    a = training_batch(3, 0, spec, TINY.data)
    b = training_batch(3, 0, spec, TINY.data)
    c = training_batch(3, 1, spec, TINY.data)
    assert [i.question for i in a] == [i.question for i in b]
    assert all(np.array_equal(x, y) for i, j in zip(a, b, strict=True) for x, y in zip(i.clips, j.clips, strict=True))
    assert [i.answer for i in a] != [i.answer for i in c] or [i.question for i in a] != [i.question for i in c]
    spec = _small(curriculum_steps=12).pretrain  # the curriculum: single clips and text-only reading first
    tasks = [training_batch(step, 0, spec, TINY.data) for step in range(12)]
    assert {b[0].task for b in tasks} == {"single", "read"}
    for batch in tasks:
        assert len({i.task for i in batch}) == 1  # one family a step
        assert all(len(i.clips) == (1 if i.task == "single" else 0) for i in batch)
    assert training_batch(12, 0, spec, TINY.data)[0].task in {"onepass", "relisten"}


def test_relisten_item_inserts_the_cited_clip_inside_the_assistant_turn(tiny_tokenizer):
    rng = np.random.default_rng(0)
    it = relisten_item(11, rng, (8.0, 12.0), TINY.data, cite="asked")
    scene = sample_scene(it.meta["seed"], duration=(8.0, 12.0), spec=TINY.data)
    assert it.answer.strip() == it.meta["asked_label"]
    assert np.array_equal(it.clips[0], render_scene(scene, TINY.data))
    assert np.array_equal(it.clips[1], cut_span(it.clips[0], *it.meta["span"]))
    text = it.user_text() + it.assistant_text()
    assistant = text.split("<|im_start|>assistant\n", 1)[1]
    assert assistant.startswith("<think>") and assistant.endswith(", this is the")
    after_seg = assistant.split(SEG_CLOSE, 1)[1]
    assert after_seg.startswith(AUDIO_BOS + AUDIO_PAD * audio_token_count(len(it.clips[1])))
    ids, start = it.prompt_ids(tiny_tokenizer)
    pad = tiny_tokenizer.convert_tokens_to_ids(AUDIO_PAD)
    assert ids.count(pad) == sum(audio_token_count(len(c)) for c in it.clips)
    assert ids[start:].count(pad) == audio_token_count(len(it.clips[1]))
    other = relisten_item(11, np.random.default_rng(0), (8.0, 12.0), TINY.data, cite="other")
    if other.answer.strip() != other.meta["asked_label"]:  # the label of what is heard, not of what is asked
        assert other.answer.strip() in other.meta["labels"]
    with pytest.raises(PerceptionError, match="cite"):
        relisten_item(11, np.random.default_rng(0), (8.0, 12.0), TINY.data, cite="nowhere")


def test_teacher_clause_split_names_the_problem():
    head, bridge = split_teacher_clause("so I listen to <seg>1.0, 2.0</seg>, this is the C5 tone.", "C5 tone")
    assert head.endswith(SEG_CLOSE) and bridge == ", this is the"
    with pytest.raises(PerceptionError, match="C4 tone"):
        split_teacher_clause("so I listen to <seg>1.0, 2.0</seg>, this is the C5 tone.", "C4 tone")


def test_probe_items_are_held_out_and_answers_are_true_of_the_scene():
    spec = _small().pretrain
    for name in PROBES:
        items = probe_items(name, 3, spec, TINY.data)
        assert len(items) == 3 and all(it.meta["seed"] >= spec.probe_seed_offset for it in items)
    items = probe_items("label_at_time", 3, spec, TINY.data)
    for it in items:  # the asked time lies inside the answered event
        (a, b), = it.meta["spans"]
        t = float(it.question.split(" at ")[1].split(" s")[0])
        assert a < t < b and it.answer in it.meta["labels"]
    train_seeds = [it.meta["seed"] for k in range(3) for it in training_batch(k, 0, spec, TINY.data)]
    assert max(train_seeds) < spec.train_seed_range
    one = fine_detail_items(3, spec, TINY.data, None)
    oracle = fine_detail_items(3, spec, TINY.data, "asked")
    assert [i.question for i in one] == [i.question for i in oracle]  # the same questions in every condition
    assert [i.answer.strip() for i in one] == [i.answer.strip() for i in oracle]


def test_chance_and_present_label_baselines_on_constructed_items():
    items = [Item("onepass", "q", (np.zeros(1600, np.float32),), 1, ans, meta={"labels": labels})
             for ans, labels in [("a", ["a", "b"]), ("a", ["a", "a", "c", "d"]), ("b", ["b"])]]
    assert chance_level(items) == pytest.approx(2 / 3)
    assert present_label_baseline(items) == pytest.approx((0.5 + 0.5 + 1.0) / 3)


def test_rows_correct_needs_every_answer_token():
    logits = torch.tensor([[0.0, 5.0], [5.0, 0.0], [0.0, 5.0], [0.0, 5.0]])  # argmax 1, 0, 1, 1
    gold = torch.tensor([1, 0, 1, 0])
    rows = torch.tensor([0, 0, 1, 1])
    assert rows_correct(logits, gold, rows, 3).tolist() == [True, False, False]  # row 2 has no answer


def test_loss_and_scores_on_a_real_tiny_model(tiny_model, collate):
    spec = _small().pretrain
    items = training_batch(3, 0, spec, TINY.data)
    batch = collate(items)
    loss = answer_loss(tiny_model, batch)
    labels = batch.pop("labels")
    with torch.no_grad():
        full = tiny_model(**batch, labels=labels).loss  # HF's loss over the same answer tokens
    assert torch.allclose(loss, full, atol=1e-5)
    ok = score_items(tiny_model, collate, items)
    assert len(ok) == len(items) and all(isinstance(x, bool) for x in ok)
    res = run_probes(tiny_model, collate, spec, TINY.data, n=3)
    assert set(res) == set(PROBES)
    for r in res.values():
        assert 0 <= r.accuracy <= 1 and 1 / 3 <= r.chance <= 1 and r.n == 3


def test_learning_rate_schedule():
    spec = TINY.pretrain
    assert learning_rate(0, spec) == spec.learning_rate
    assert learning_rate(int(spec.decay_start * spec.steps) - 1, spec) == spec.learning_rate
    assert learning_rate(spec.steps, spec) == pytest.approx(spec.learning_rate * spec.final_lr_fraction)


def test_short_pretrain_writes_a_checkpoint_that_reloads_and_learned(tmp_path, tiny_tokenizer, collate):
    from safetensors.torch import load_file

    from echo_lite.model import build_tiny_thinker, load_preset_model

    preset = _small()
    report = pretrain(preset, seed=0, out=tmp_path, log=lambda s: None)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "PRETRAIN.json", "PRETRAIN.md",
                 "curve.csv", "curve.png"):
        assert (tmp_path / name).exists(), name
    assert not list(tmp_path.glob("*.bin")) and not (tmp_path / "train_state").exists()
    assert report["checkpoint_mb"] <= TINY.pretrain.max_checkpoint_mb
    assert set(report["probes"]) == set(PROBES) and "oracle_segment" in report["fine_detail"]
    assert json.loads((tmp_path / "PRETRAIN.json").read_text())["seed"] == 0
    assert "echo-lite pretrain --preset tiny --seed 0" in (tmp_path / "PRETRAIN.md").read_text()
    lm = load_preset_model("tiny", checkpoint=tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    fresh = build_tiny_thinker(tiny_tokenizer)
    assert any(not torch.equal(p, fresh.state_dict()[k]) for k, p in saved.items() if k in fresh.state_dict())
    batch = collate(training_batch(1, 0, preset.pretrain, TINY.data))  # a batch it trained on
    with torch.no_grad():
        assert answer_loss(lm.model, batch) < answer_loss(fresh, batch)
    from echo_lite.cli import main

    assert main(["probe", "--checkpoint", str(tmp_path), "--n", "2", "--json", str(tmp_path / "probe.json")]) == 0
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert set(probe["probes"]) == set(PROBES) and probe["fine_detail"]["one_pass"]["n"] == 2


def test_resume_equals_uninterrupted(tmp_path):
    from safetensors.torch import load_file

    preset = _small(eval_every=100)
    pretrain(preset, seed=0, out=tmp_path / "a", final_eval=False, log=lambda s: None)
    assert pretrain(preset, seed=0, out=tmp_path / "b", final_eval=False, stop_after=2, log=lambda s: None) is None
    assert (tmp_path / "b" / "train_state" / "state.json").exists()
    pretrain(preset, seed=0, out=tmp_path / "b", final_eval=False, log=lambda s: None)
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca = (tmp_path / "a" / "curve.csv").read_text().splitlines()
    cb = (tmp_path / "b" / "curve.csv").read_text().splitlines()
    assert [r.split(",")[2] for r in ca] == [r.split(",")[2] for r in cb]  # the same losses


def test_resume_refuses_a_state_from_other_settings(tmp_path):
    preset = _small(eval_every=100)
    pretrain(preset, seed=0, out=tmp_path, final_eval=False, stop_after=1, log=lambda s: None)
    with pytest.raises(PretrainError, match="train_state"):
        pretrain(preset, seed=1, out=tmp_path, final_eval=False, log=lambda s: None)


@pytest.mark.parametrize("qtype", [q for q, _ in TINY.pretrain.span_qtypes])
def test_span_items_ask_for_the_copied_time_and_the_cited_span(qtype, collate):
    """The `span` family: the teacher's words up to its first number are given; the target is
    the rest of the first cited clause - the question's time (copied) and a span that holds
    the asked event."""
    import re

    from echo_lite.config import THINK_OPEN
    from echo_lite.segments import parse_segments

    it = span_item(11, np.random.default_rng(0), qtype, (8.0, 12.0), TINY.data)
    assert it.task == "span" and not it.end_turn and len(it.clips) == 1
    assert it.assistant_prefix.startswith(THINK_OPEN) and not re.search(r"\d", it.assistant_prefix)
    assert it.answer[0].isdigit() and it.answer.endswith(SEG_CLOSE)
    tags = parse_segments(it.answer if "<seg>" in it.answer else "<seg>" + it.answer)
    assert tags and tags[0].ok and tags[0].span in [tuple(s) for s in it.meta["spans"]]
    times = re.findall(r"\d+\.\d", it.question)
    if times:  # a time in the question: the answer starts by copying it
        assert it.answer.startswith(times[0])
    prompt, answer = collate.encode(it)
    assert collate.tok.decode(answer) == it.answer  # the whole clause is the target, nothing more
    full = collate.tok(it.user_text() + it.assistant_prefix + it.answer, add_special_tokens=False).input_ids
    assert prompt + answer == full  # given and target tokenise as the SFT response would


@pytest.mark.parametrize("qtype", [q for q, _ in TINY.pretrain.walk_qtypes])
def test_walk_items_ask_for_the_sounds_in_order_from_the_start(qtype, collate):
    """The `walk` family: the teacher's walk chain through its last span is the target; its spans are
    the clip's sounds from the first one on, in order of onset, as the SFT data's walk chains write them."""
    from echo_lite.config import THINK_OPEN
    from echo_lite.data.questions import WALK_OPENING
    from echo_lite.segments import parse_segments

    it = walk_item(21, np.random.default_rng(0), qtype, (8.0, 14.0), TINY.data)
    assert it.task == "walk" and not it.end_turn and len(it.clips) == 1
    assert it.assistant_prefix.startswith(THINK_OPEN) and it.assistant_prefix.endswith(WALK_OPENING)
    assert it.answer.startswith("<seg>") and it.answer.endswith(SEG_CLOSE)
    spans = [t.span for t in parse_segments(it.answer)]
    assert spans and all(t.ok for t in parse_segments(it.answer))
    assert spans == [tuple(s) for s in it.meta["all_spans"][:len(spans)]]  # from the first sound, none skipped
    scene = sample_scene(it.meta["seed"], duration=(8.0, 14.0), spec=TINY.data)
    assert np.array_equal(render_scene(scene, TINY.data), it.clips[0])  # the scene the item names
    prompt, answer = collate.encode(it)
    assert collate.tok.decode(answer) == it.answer
    full = collate.tok(it.user_text() + it.assistant_prefix + it.answer, add_special_tokens=False).input_ids
    assert prompt + answer == full  # given and target tokenise as the SFT response would


def test_a_rare_question_type_keeps_looking_past_fifty_scenes():
    """Step 2,031 of a placement round with seed 4 asks `overlap` from seed 707,025; the first scene from
    there that can ask it is the 56th. With 50 tries that round stopped with an error (it did, once)."""
    from echo_lite.config import PLACEMENT_STAGE

    spec = TINY.with_overrides(pretrain=PLACEMENT_STAGE).pretrain
    items = training_batch(2031, 4, spec, TINY.data)
    assert len(items) == spec.batch_size and {i.task for i in items} == {"walk"}
    found = [i.meta["seed"] for i in items if i.meta["qtype"] == "overlap" and i.meta["seed"] >= 707_025]
    assert found and min(found) - 707_025 >= 50


def test_walk_family_and_a_second_stage_from_a_base(tmp_path, monkeypatch):
    """`task_weights` may draw the walk family; `init` starts from a base's weights, not a fresh model (a
    relative path is found from any directory), names a missing base, and the report names the stage."""
    from safetensors.torch import load_file

    from echo_lite.config import PLACEMENT_ROUND_SEEDS, PLACEMENT_STAGE
    from echo_lite.pretrain import command_line

    preset = _small(task_weights=(("walk", 1.0),), curriculum_steps=0, steps=2, eval_every=100, probe_items=2,
                    scene_buckets=(((8.0, 12.0), 1.0),))
    assert {i.task for i in training_batch(0, 0, preset.pretrain, TINY.data)} == {"walk"}
    monkeypatch.chdir(tmp_path)  # "data/tiny_base_stage1" is not here: it is found in the repository
    second = preset.with_overrides(pretrain={"init": "data/tiny_base_stage1", "learning_rate": 0.0})
    pretrain(second, seed=0, out=tmp_path / "stage2", final_eval=False, log=lambda s: None)
    a = load_file(str(DATA_DIR / "tiny_base_stage1" / "model.safetensors"))
    b = load_file(str(tmp_path / "stage2" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # lr 0: the base's weights, kept
    assert "--init data/tiny_base_stage1" in (tmp_path / "stage2" / "PRETRAIN.md").read_text()
    missing = preset.with_overrides(pretrain={"init": str(tmp_path / "nowhere")})
    with pytest.raises(PretrainError, match="nowhere"):
        pretrain(missing, seed=0, out=tmp_path / "x", final_eval=False, log=lambda s: None)
    shipped = TINY.with_overrides(pretrain=PLACEMENT_STAGE)
    assert command_line(shipped, 0) == "echo-lite pretrain --preset tiny --seed 0 --stage placement --init data/tiny_base_stage1"
    assert command_line(shipped, None, PLACEMENT_ROUND_SEEDS) == "echo-lite pretrain --preset tiny --stage placement"
    assert command_line(shipped, None, (5, 6)).endswith("--stage placement  (rounds with seeds (5, 6))")


def test_placement_rounds_chain_runs_and_are_kept(tmp_path):
    """`placement_stage` runs one round per seed, each from the round before: the result equals the same
    runs chained by hand. A second call keeps every finished round (runs nothing); the report names the
    rounds; a preset without a base to start from is refused."""
    from safetensors.torch import load_file

    from echo_lite.pretrain import placement_stage

    preset = _small(init="data/tiny_base_stage1", steps=2, curriculum_steps=0, eval_every=100)
    quiet = lambda s: None  # noqa: E731
    report = placement_stage(preset, out=tmp_path / "final", seeds=(0, 1), rounds_dir=tmp_path / "rounds",
                             final_eval=False, log=quiet)
    assert [(r["round"], r["seed"]) for r in report["rounds"]] == [(1, 0), (2, 1)]
    assert report["rounds"][1]["init"] == str(tmp_path / "rounds" / "round1")
    assert "rounds of 2 steps (seeds 0, 1)" in (tmp_path / "final" / "PRETRAIN.md").read_text()
    by_hand = tmp_path / "hand"
    pretrain(preset, seed=0, out=by_hand / "1", final_eval=False, log=quiet)
    pretrain(preset.with_overrides(pretrain={"init": str(by_hand / "1")}), seed=1, out=by_hand / "2",
             final_eval=False, log=quiet)
    a, b = load_file(str(tmp_path / "final" / "model.safetensors")), load_file(str(by_hand / "2" / "model.safetensors"))
    stage1 = load_file(str(DATA_DIR / "tiny_base_stage1" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the chain by hand, bit for bit
    assert not all(torch.equal(a[k], stage1[k]) for k in a)  # and it trained
    said = []
    placement_stage(preset, out=tmp_path / "final", seeds=(0, 1), rounds_dir=tmp_path / "rounds",
                    final_eval=False, log=said.append)
    assert sum("kept" in s for s in said) == 2 and not any(s.startswith("step") for s in said)
    said.clear()  # another seed for the last round: round 1 kept, round 2 run again
    placement_stage(preset, out=tmp_path / "final", seeds=(0, 3), rounds_dir=tmp_path / "rounds",
                    final_eval=False, log=said.append)
    assert sum("kept" in s for s in said) == 1
    with pytest.raises(PretrainError, match="init"):
        placement_stage(_small(), out=tmp_path / "x", log=quiet)


@pytest.mark.parametrize("qtype", [q for q, _ in TINY.pretrain.read_qtypes])
def test_read_items_copy_the_questions_times_from_text_alone(qtype, collate, tiny_model):
    """The `read` family: no audio at all; the target is the teacher's words from its first
    number to `<seg>`, which hold every time of the question, copied."""
    import re

    from echo_lite.config import AUDIO_BOS, SEG_OPEN, THINK_OPEN

    items = [read_item(20 + k, np.random.default_rng(k), qtype, TINY.data) for k in range(3)]
    for it in items:
        assert it.task == "read" and it.clips == () and it.n_user_clips == 0 and not it.end_turn
        assert it.assistant_prefix.startswith(THINK_OPEN) and not re.search(r"\d", it.assistant_prefix)
        assert SEG_OPEN not in it.answer and it.answer == it.answer.rstrip()
        times = re.findall(r"\d+\.\d", it.question)
        assert times and re.findall(r"\d+\.\d", it.answer) == times  # every asked time, in order
        assert AUDIO_BOS not in it.user_text()
    batch = collate(items)  # a text-only batch: no audio inputs
    assert "input_features" not in batch
    loss = answer_loss(tiny_model, batch)
    assert torch.isfinite(loss) and loss > 0


def test_time_copy_items_are_held_out_span_items_cut_to_the_copied_times(collate, tiny_model):
    import re

    from echo_lite.config import SEG_OPEN

    items = time_copy_items(5, TINY.pretrain, TINY.data)
    assert {it.meta["qtype"] for it in items} == {q for q, _ in TINY.pretrain.read_qtypes}
    for it in items:
        assert it.task == "copy" and len(it.clips) == 1 and SEG_OPEN not in it.answer
        assert it.meta["seed"] >= TINY.pretrain.probe_seed_offset  # never trained on
        assert re.findall(r"\d+\.\d", it.answer) == re.findall(r"\d+\.\d", it.question)
    assert time_copy_items(5, TINY.pretrain, TINY.data)[3].question == items[3].question  # fixed set
    assert len(score_items(tiny_model, collate, items)) == 5
