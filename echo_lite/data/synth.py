"""The data stage: world -> caption -> teacher -> filters -> datasets on disk (`echo-lite synth`).

`synthesize(out, preset, n, seed)` writes `out/sft`, `out/rl`, `out/eval` (see
`formats` for what a split directory holds) and `out/stats.json`: counts per split,
per question type, per drop reason, and the clip-length histogram.

Scenes are planned from the seed: training scenes use seeds `seed * 1e8 + i`, eval
scenes `seed * 1e8 + eval_seed_offset + j`, so eval clips are never trained on. Each
scene yields `questions_per_scene` items; all of a scene's items that pass go to the
same training split unless their chain of thought failed (-> RL without it). The stage
is resumable: clips are written atomically, manifests are append-only and keyed by item
id, so a re-run after a crash only adds what is missing, and produces the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from echo_lite.audio import load_audio, write_audio
from echo_lite.config import DataSpec, Preset, get_preset
from echo_lite.data.caption import Captioner, MetadataCaptioner
from echo_lite.data.filters import DROPPED, RL, SFT, Judge, judge_item
from echo_lite.data.formats import AUDIO_DIR, MANIFEST, SPLITS, Item, append_jsonl, manifest_ids, save_hf_split
from echo_lite.data.teacher import Request, RuleTeacher, Teacher, qtype_order
from echo_lite.data.world import Scene, render_scene, sample_scene, speech_available
from echo_lite.prompts import format_response

log = logging.getLogger(__name__)
SEED_STRIDE = 100_000_000  # scene seeds of run seed S: S * SEED_STRIDE + i
CONFIG_FILE, STATS_FILE = "synth_config.json", "stats.json"
HIST_EDGES = (0, 5, 10, 15, 20, 25, 30)


class SynthError(ValueError):
    """Bad arguments or an output directory written with other settings."""


def plan_seeds(n: int, seed: int, spec: DataSpec) -> tuple[list[int], list[int]]:
    """(training scene seeds, held-out eval scene seeds) for `n` requested items."""
    if n < 1:
        raise SynthError(f"--n must be >= 1, got {n}")
    n_scenes = math.ceil(n / spec.questions_per_scene)
    n_eval = max(1, round(n_scenes * spec.eval_fraction))
    n_train = max(1, n_scenes - n_eval)
    if n_train >= spec.eval_seed_offset:
        raise SynthError(f"{n_train} training scenes would reach the eval seeds (offset {spec.eval_seed_offset})")
    base = int(seed) * SEED_STRIDE
    return [base + i for i in range(n_train)], [base + spec.eval_seed_offset + j for j in range(n_eval)]


def _item_seed(scene_seed: int, k: int) -> int:
    return int(np.random.SeedSequence([scene_seed, k]).generate_state(1)[0])


def _atomic_json(path: Path, obj) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


# Settings whose default has changed since they were added: a directory written before the setting
# existed was made with this value, not with today's default (the walk chains became the default later).
DATA_DEFAULTS_WHEN_ADDED = {"chain": "named"}


def _check_config(out: Path, config: dict) -> None:
    path = out / CONFIG_FILE
    if path.exists():
        old = json.loads(path.read_text())
        if isinstance(old.get("data"), dict):  # a setting added since: the old run had its default then
            defaults = json.loads(json.dumps(dataclasses.asdict(DataSpec()))) | DATA_DEFAULTS_WHEN_ADDED
            old["data"] = {**{k: v for k, v in defaults.items() if k not in old["data"]}, **old["data"]}
        if old != config:
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            raise SynthError(f"{out} was written with other settings ({', '.join(diff)} differ); "
                             f"use a new --out or delete it")
    else:
        out.mkdir(parents=True, exist_ok=True)
        _atomic_json(path, config)


def _tokenizer_for(preset: Preset):
    from echo_lite.model import load_tokenizer

    try:
        return load_tokenizer(preset.model.source)
    except Exception as err:  # a hub preset offline: no token budget check, said once
        log.warning("no tokenizer for preset %s (%s): the CoT length check is skipped", preset.name, err)
        return None


def _histogram(values: list[float]) -> dict[str, int]:
    counts = np.histogram(values, bins=HIST_EDGES)[0] if values else np.zeros(len(HIST_EDGES) - 1, int)
    return {f"{a}-{b}": int(c) for a, b, c in zip(HIST_EDGES[:-1], HIST_EDGES[1:], counts, strict=True)}


def _is_eval_source(scene: Scene, spec: DataSpec) -> bool:
    """A real clip's split, fixed by its id (stable across runs and across list order)."""
    return zlib.crc32(scene.scene_id.encode()) % 10_000 < spec.eval_fraction * 10_000


def scene_audio(scene: Scene, spec: DataSpec) -> np.ndarray:
    """The clip: read from `meta["audio_path"]` for real sources, rendered for synthetic scenes."""
    if scene.meta.get("audio_path"):
        return load_audio(scene.meta["audio_path"])
    if scene.meta.get("source"):
        raise SynthError(f"scene {scene.scene_id} ({scene.meta['source']}): no audio file; give the adapter audio_root")
    return render_scene(scene, spec)


def synthesize(out: str | Path, preset: str | Preset = "tiny", n: int = 1000, seed: int = 0,
               teacher: Teacher | None = None, judge: Judge | None = None, captioner: Captioner | None = None,
               write_hf: bool = True, progress: bool = True, source_scenes: list[Scene] | None = None) -> dict:
    """Run the whole data stage into `out`; returns the stats (also written to `out/stats.json`).

    `source_scenes` (from `adapters`, with audio files) replace the synthetic world: the
    first `ceil(n / questions_per_scene)` of them are used, and a stable hash of each clip
    id puts `eval_fraction` of them in the eval split.
    """
    preset = get_preset(preset)
    spec, limits = preset.data, preset.segments
    teacher = teacher or RuleTeacher(spec)
    captioner = captioner or MetadataCaptioner()
    out = Path(out)
    train_seeds, eval_seeds = plan_seeds(n, seed, spec)
    if source_scenes is not None:
        if not source_scenes:
            raise SynthError("source_scenes is empty: no clips to write questions about")
        picked = source_scenes[:math.ceil(n / spec.questions_per_scene)]
        plan = [(sc, "eval" if _is_eval_source(sc, spec) else "train") for sc in picked]
        if len(picked) > 1 and all(g == plan[0][1] for _, g in plan):  # tiny sets: keep both groups non-empty
            plan[-1] = (plan[-1][0], "eval" if plan[0][1] == "train" else "train")
    else:
        held = set(eval_seeds)
        plan = [(sample_scene(sd, duration=spec.clip_seconds, spec=spec), "eval" if sd in held else "train")
                for sd in [*train_seeds, *eval_seeds]]
    config = {"preset": preset.name, "seed": int(seed), "data": dataclasses.asdict(spec), "teacher": teacher.name,
              "captioner": captioner.name, "judge": bool(judge),
              "source": sorted({sc.meta.get("source", "synthetic") for sc, _ in plan})}
    _check_config(out, json.loads(json.dumps(config)))  # as JSON reads it back: tuples become lists
    if not speech_available():
        log.warning("espeak-ng is not installed: scenes are drawn without speech events")
    tokenizer = _tokenizer_for(preset)
    done = {split: manifest_ids(out / split / MANIFEST) for split in SPLITS}

    # 1. scenes, captions, teacher requests (text only: cheap)
    scenes, captions, requests, group, route_seed = {}, {}, [], {}, {}
    for i, (scene, scene_group) in enumerate(plan):
        if scene.scene_id in scenes:
            raise SynthError(f"two clips share the id {scene.scene_id!r}")
        wav = scene_audio(scene, spec) if captioner.name != "metadata" else None
        scenes[scene.scene_id], captions[scene.scene_id] = scene, captioner(scene, wav)
        group[scene.scene_id] = scene_group
        sd = scene.seed if not scene.meta.get("source") else int(seed) * SEED_STRIDE + i
        route_seed[scene.scene_id] = sd
        for k in range(spec.questions_per_scene):
            item_seed = _item_seed(sd, k)
            order = qtype_order(np.random.default_rng(item_seed), spec)
            requests.append(Request(f"{scene.scene_id}-q{k}", scene, captions[scene.scene_id], order, item_seed))
    outcomes = teacher.teach(requests)

    # 2. filters and routing
    stats = {"preset": preset.name, "seed": int(seed), "n_requested": int(n), "teacher": teacher.name,
             "scenes": {g: sum(grp == g for _, grp in plan) for g in ("train", "eval")}}
    items_by_scene: dict[str, list[Item]] = defaultdict(list)
    drop_reasons, rl_reasons, teacher_errors = Counter(), Counter(), Counter()
    qtypes: dict[str, Counter] = {s: Counter() for s in SPLITS}
    drafted, cot_tokens = Counter(), []
    if judge is not None and hasattr(judge, "prefetch"):  # an LLM judge: ask for all verdicts concurrently
        judge.prefetch([(captions[r.scene.scene_id].simulation(), o.draft) for r, o in zip(requests, outcomes, strict=True)
                        if o.draft is not None])
    for req, outcome in zip(requests, outcomes, strict=True):
        scene = req.scene
        if outcome.draft is None:
            teacher_errors[outcome.error or "unknown"] += 1
            continue
        draft = outcome.draft
        drafted[draft.qtype] += 1
        verdict, cites = judge_item(scene, draft, spec, limits, captions[scene.scene_id].simulation(), judge,
                                    tokenizer, limits.max_new_tokens)
        route, reason = verdict.route()
        if route == DROPPED:
            drop_reasons[reason] += 1
            continue
        if group[scene.scene_id] == "eval":
            split = "eval"
        elif route == SFT and np.random.default_rng([route_seed[scene.scene_id], 7]).random() < spec.rl_fraction:
            split, reason = RL, "sampled"
        else:
            split = route
        if split == RL:
            rl_reasons[reason] += 1
        keep_cot = verdict.cot_valid
        response = format_response(draft.think, draft.answer) if keep_cot else ""
        if split == SFT and tokenizer is not None:
            cot_tokens.append(len(tokenizer(response).input_ids))
        qtypes[split][draft.qtype] += 1
        items_by_scene[scene.scene_id].append(Item(
            id=req.item_id, audio=f"{AUDIO_DIR}/{scene.scene_id}.wav", duration=scene.duration,
            question=draft.question, choices=list(draft.choices), answer=draft.answer, response=response,
            qtype=draft.qtype, events=[e.to_dict() for e in scene.events],
            decisive_spans=[list(s) for s in draft.decisive_spans],
            cited_spans=[list(c.span) for c in cites] if keep_cot else [], split=split, seed=scene.seed,
            scene_id=scene.scene_id, query=dict(draft.query), teacher=draft.teacher, route=reason or ""))

    # 3. audio and manifests (resumable: existing clips and ids are kept as they are)
    iterator = items_by_scene.items()
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=len(items_by_scene), desc="synth: writing clips", unit="clip")
    for scene_id, items in iterator:
        wav, written = None, None
        for split in sorted({it.split for it in items}):
            path = out / split / AUDIO_DIR / f"{scene_id}.wav"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                if written is not None:
                    try:
                        os.link(written, path)  # same clip in two splits: one file on disk
                    except OSError:
                        write_audio(path, wav)
                else:
                    wav = scene_audio(scenes[scene_id], spec) if wav is None else wav
                    write_audio(path, wav)
            written = path
            new = [it.to_json() for it in items if it.split == split and it.id not in done[split]]
            append_jsonl(out / split / MANIFEST, new)
    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
        (out / split / MANIFEST).touch()
        if write_hf:
            save_hf_split(out / split, progress=progress)

    kept = [it for items in items_by_scene.values() for it in items]
    durations = [s.duration for s in scenes.values()]
    stats.update({
        "items": {s: sum(qtypes[s].values()) for s in SPLITS} | {DROPPED: sum(drop_reasons.values()),
                                                                   "declined": sum(teacher_errors.values())},
        "qtypes": {s: dict(sorted(qtypes[s].items())) for s in SPLITS},
        "qtypes_drafted": dict(sorted(drafted.items())),
        "drop_reasons": dict(sorted(drop_reasons.items())),
        "rl_reasons": dict(sorted(rl_reasons.items())),
        "teacher_errors": dict(sorted(teacher_errors.items())),
        "clip_seconds_histogram": _histogram(durations),
        "clip_seconds": {"min": min(durations), "max": max(durations), "mean": round(float(np.mean(durations)), 2)},
        "clips_over_10s": sum(d > 10 for d in durations),
        "items_with_cue_after_10s": sum(any(s[1] > 10 for s in it.decisive_spans) for it in kept),
        "cot_tokens": {"mean": round(float(np.mean(cot_tokens)), 1), "max": int(max(cot_tokens))} if cot_tokens else {},
        "speech": "espeak-ng" if speech_available() else "skipped (espeak-ng not installed)",
    })
    _atomic_json(out / STATS_FILE, stats)
    return stats


def run(out: str | Path, preset: str | Preset = "tiny", n: int = 1000, seed: int = 0, teacher: str = "rule",
        llm_url: str | None = None, llm_model: str | None = None, llm_key_env: str | None = None,
        judge: bool = False, workers: int = 4, progress: bool = True, audioset_tsv: str | None = None,
        label_map: str | None = None, musicbench_json: str | None = None, audio_root: str | None = None,
        chain: str | None = None) -> dict:
    """`synthesize` with the teacher, judge and sources built from plain options (what the CLI passes);
    `chain` overrides the preset's `DataSpec.chain`."""
    out = Path(out)
    preset = get_preset(preset)
    if chain is not None:
        preset = preset.with_overrides(data={"chain": chain})
    sources = None
    if audioset_tsv or musicbench_json:
        from echo_lite.data.adapters import read_audioset_strong, read_musicbench

        if not audio_root:
            raise SynthError("real sources need --audio-root (the directory holding their clips)")
        sources = []
        if audioset_tsv:
            if not label_map:
                raise SynthError("--audioset-tsv needs --label-map (mid_to_display_name.tsv)")
            sources += read_audioset_strong(audioset_tsv, label_map, audio_root=audio_root)
        if musicbench_json:
            sources += read_musicbench(musicbench_json, audio_root=audio_root)
    llm_teacher = llm_judge = None
    if teacher == "llm" or judge:
        from echo_lite.data.llm import ChatClient, LLMJudge, LLMTeacher

        if not llm_url or not llm_model:
            raise SynthError("the LLM teacher/judge needs --llm-url and --llm-model")
        key = os.environ.get(llm_key_env) if llm_key_env else None
        if llm_key_env and not key:
            raise SynthError(f"environment variable {llm_key_env} (the API key) is not set")
        client = ChatClient(llm_url, llm_model, api_key=key)
        out.mkdir(parents=True, exist_ok=True)
        if teacher == "llm":
            llm_teacher = LLMTeacher(client, out / "teacher_llm.jsonl", workers=workers,
                                     n_choices=preset.data.n_choices)
        if judge:
            llm_judge = LLMJudge(client, out / "judge_llm.jsonl", workers=workers)
    elif teacher != "rule":
        raise SynthError(f"unknown teacher {teacher!r}; choose rule or llm")
    return synthesize(out, preset, n=n, seed=seed, teacher=llm_teacher, judge=llm_judge, progress=progress,
                      source_scenes=sources)
