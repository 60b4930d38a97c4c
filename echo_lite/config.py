"""Presets: every number of the method lives here and nowhere else.

Three presets share one code path (`tiny`, `omni-3b`, `omni-7b`); moving up a preset
changes these values, never the code. Sources: ECHO_METHOD.md (the paper, and the
released code where it differs) and STACK_NOTES.md (library facts).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

# --------------------------------------------------------------------------------------
# Facts of the audio front end and the token protocol (shared by every preset).
# --------------------------------------------------------------------------------------
SAMPLE_RATE = 16_000  # Hz; Qwen2.5-Omni's WhisperFeatureExtractor rate
HOP_LENGTH = 160  # samples per mel frame -> 100 frames/s
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH
AUDIO_TOKENS_PER_SECOND = 25  # after the encoder's two stride-2 poolings (40 ms a token)

# Qwen2.5-Omni's special tokens; the tiny tokenizer carries the same strings.
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
AUDIO_BOS, AUDIO_PAD, AUDIO_EOS = "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"
VISION_BOS, VISION_EOS = "<|vision_bos|>", "<|vision_eos|>"
IMAGE_PAD, VIDEO_PAD = "<|IMAGE|>", "<|VIDEO|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, AUDIO_BOS, AUDIO_PAD, AUDIO_EOS,
                  VISION_BOS, VISION_EOS, IMAGE_PAD, VIDEO_PAD)
# Placeholders a policy must never sample (they would break the next forward).
PLACEHOLDER_TOKENS = (AUDIO_BOS, AUDIO_PAD, AUDIO_EOS, VISION_BOS, VISION_EOS, IMAGE_PAD, VIDEO_PAD)

# The response grammar (ECHO_METHOD.md section 2).
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
SEG_OPEN, SEG_CLOSE = "<seg>", "</seg>"
RESPONSE_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE, SEG_OPEN, SEG_CLOSE)

# The runtime's modes: the paper's method and the controls it lacks (interleave.py).
RUNTIME_MODES = ("one_pass", "tags_only", "interleaved", "random_segment", "oracle_segment")

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"


# The real thinkers' architectures (from the public Qwen2.5-Omni-3B / -7B configs), used to
# build full-size models with random weights for GPU smoke tests and memory tables: no
# download needed. Audio and vision encoders are the same size in both.
FULL_SIZE_ARCH = {
    "omni-3b": dict(text_hidden=2048, text_ffn=11008, text_layers=36, text_heads=16, text_kv_heads=2,
                    vocab=151936, mrope_section=(16, 24, 24)),
    "omni-7b": dict(text_hidden=3584, text_ffn=18944, text_layers=28, text_heads=28, text_kv_heads=4,
                    vocab=152064, mrope_section=(16, 24, 24)),
}
FULL_SIZE_AUDIO = dict(audio_d_model=1280, audio_layers=32, audio_heads=20, audio_ffn=5120, n_mels=128)
FULL_SIZE_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                        fullatt_block_indexes=[7, 15, 23, 31], patch_size=14, spatial_merge_size=2,
                        temporal_patch_size=2)


# --------------------------------------------------------------------------------------
# Preset sections.
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """Where the thinker comes from and how it is run."""

    source: str  # "tiny" (built/shipped by this project) or a hub id / local directory
    dtype: str = "float32"
    attn_implementation: str = "sdpa"
    # tiny architecture (ignored when loading a checkpoint)
    n_mels: int = 128
    audio_d_model: int = 64
    audio_layers: int = 2
    audio_heads: int = 4
    audio_ffn: int = 256
    audio_n_window: int = 100  # the encoder attends within 2 * n_window mel frames (100 -> 2 s, as Qwen2.5-Omni)
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    text_ffn: int = 384
    mrope_section: tuple[int, int, int] = (4, 6, 6)  # sums to head_dim / 2
    max_positions: int = 4096
    # HF init leaves the audio conv output ~50x below the encoder's position table, so
    # every clip looks alike (TINY_MODEL_NOTES.md); scaling the two convs fixes it.
    audio_conv_init_scale: float = 4.0
    seed: int = 0


@dataclass(frozen=True)
class SegmentLimits:
    """The authors' runtime limits (ECHO_METHOD.md section 2)."""

    max_clips: int = 8  # at most 8 generate calls -> at most 8 inserted clips
    min_clip_s: float = 0.2  # clips under 0.2 s (3,200 samples) are not inserted
    clamp_to_clip: bool = True  # an end past the clip is clamped, not rejected
    max_new_tokens: int = 2048  # per answer, text tokens only
    inserted_audio_counts_against_budget: bool = False


@dataclass(frozen=True)
class SamplingSpec:
    eval_temperature: float = 0.7
    rollout_temperature: float = 1.0
    top_p: float = 1.0


@dataclass(frozen=True)
class RuntimeSpec:
    """How the interleaved runtime runs (interleave.py); the method's limits are in SegmentLimits."""

    backend: str = "transformers"  # "transformers" (any device) or "vllm" (GPU presets)
    batch_size: int = 16  # trajectories decoded together
    compact_after_holes: int = 32  # re-pack the KV cache once this many columns are padding for every row
    # Rows that feed a chunk (a prompt, a clip) in one forward; 0 = all. On a CPU one long
    # chunk at a time keeps its attention in cache (tiny: 16 prompts together took longer than
    # one by one); a GPU wants them all at once.
    chunk_rows: int = 0
    vllm_gpu_memory_utilization: float = 0.5
    vllm_max_model_len: int = 8192


@dataclass(frozen=True)
class RewardSpec:
    """Paper, Eq. 2 (maximum 1.5), plus the released variants as named options."""

    format: float = 0.5
    consistency_penalty: float = -0.1  # per </seg> whose continuation opens a sentence
    consistency_floor: float = -0.5
    consistency_rule: str = "char"  # "char" (released code) or "token"
    accuracy: float = 0.5
    accuracy_variant: str = "binary"  # "binary" (paper) or "confidence" (released)
    segment_bonus: float = 0.5
    segment_variant: str = "any"  # "any" (paper), "count", "non_overlap"
    grounding: float = 0.0  # echo_lite's segment-grounding reward (0 = paper)
    grounding_iou: float = 0.3


@dataclass(frozen=True)
class SFTSpec:
    use_lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    # LoRA on the language model only: never the audio tower or the vision encoder.
    lora_target_regex: str = (
        r"^(?!.*(audio_tower|visual)).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
    )
    learning_rate: float = 1e-4  # LoRA; the paper's full fine-tuning used 5e-6
    full_ft_learning_rate: float = 5e-6
    epochs: float = 1.0
    warmup_ratio: float = 0.05
    max_length: int = 2048
    per_device_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    freeze_audio_tower: bool = True
    insert_cited_clips: bool = False  # paper: <seg> is plain text during SFT
    # With clips inserted: this fraction of cited spans is shown as a tag the runtime declines
    # (`<seg>a, a</seg>`, masked from the loss, no clip after it) followed by the teacher's own
    # words, so the model learns to go on when its tag is declined. 0 = never (the paper).
    declined_tag_fraction: float = 0.0
    # Grow the base's language model to this many blocks before SFT (model.expand_text_depth);
    # None keeps the base as it is (the paper, and every full-size preset).
    text_layers: int | None = None
    # Batches of items of about the same length (transformers' LengthGroupedSampler over
    # `sft.approx_tokens`), so less of each batch is padding; False keeps plain random batches.
    group_by_length: bool = False
    bf16: bool = False
    gradient_checkpointing: bool = False
    seed: int = 0


@dataclass(frozen=True)
class SelfImproveSpec:
    """A second SFT round on the SFT model's own consensus answers (self_improve.py; Huang et al. 2022,
    "Large Language Models Can Self-Improve"): the paper has no such round. 0 questions = off."""

    questions: int = 0  # the first this many questions of the SFT split (their responses and answers unread)
    samples: int = 8  # sampled answers per question; the consensus of them is the target
    temperature: float = 0.7
    steps: int = 300
    learning_rate: float = 2e-4  # LoRA or full fine-tuning alike
    chunk: int = 50  # questions answered per file of targets: a stopped run resumes at a file's start
    seed: int = 0


@dataclass(frozen=True)
class GRPOSpec:
    """ECHO_METHOD.md section 5."""

    num_generations: int = 8  # G
    beta: float = 0.04  # KL coefficient (TRL's default is 0.0)
    clip_eps: float = 0.2
    learning_rate: float = 1e-6
    prompts_per_step: int = 64
    temperature: float = 1.0
    epochs: float = 1.0
    mask_inserted_audio: bool = True  # released code counted them in KL and denominator
    use_vllm: bool = False
    seed: int = 0


CHAIN_STYLES = ("named", "walk")


@dataclass(frozen=True)
class DataSpec:
    """The synthetic world and the EAQA-style data pipeline (ECHO_METHOD.md section 3)."""

    clip_seconds: tuple[float, float] = (5.0, 30.0)  # cues also fall after 10 s (the paper's never did)
    event_seconds: tuple[float, float] = (0.3, 3.0)
    min_gap_s: float = 0.2  # between consecutive (non-overlapping) events
    events_per_second: tuple[float, float] = (0.25, 0.45)  # event density of a sampled scene
    max_events: int = 12
    overlap_prob: float = 0.3  # chance a scene gets one event laid over another
    background_noise_rms: float = 0.003  # ~ -50 dBFS: low, so events stay well separated
    # kind -> sampling weight; speech is dropped (logged) when espeak-ng is not installed
    kind_weights: tuple[tuple[str, float], ...] = (
        ("tone", 0.30), ("chirp", 0.14), ("knocks", 0.14), ("noise", 0.12), ("melody", 0.15), ("speech", 0.15))
    # question type -> sampling weight ("property at a time" is what the tiny model learns best)
    qtype_weights: tuple[tuple[str, float], ...] = (
        ("tone_at_time", 0.25), ("sound_at_time", 0.12), ("order", 0.08), ("count_in_span", 0.07),
        ("knock_count", 0.07), ("duration_compare", 0.07), ("gap", 0.06), ("what_follows", 0.08),
        ("overlap", 0.06), ("pitch_change", 0.07), ("tempo_change", 0.07))
    n_choices: int = 4  # options per question (fewer when the type has fewer possible answers)
    max_count_cited: int = 3  # "how many tones" cites each one: at most this many keeps the CoT short
    questions_per_scene: int = 2  # items written per clip (distinct types; same split)
    min_duration_diff_s: float = 0.5  # a "which lasts longer" pair must differ this much
    min_option_gap_s: float = 0.5  # numeric time options are at least this far apart
    cite_iou: float = 0.3  # a cited span must overlap the event it names with IoU >= this
    eval_fraction: float = 0.15  # of the scenes, drawn from held-out seeds
    rl_fraction: float = 0.3  # of the non-eval scenes whose items are fully valid
    eval_seed_offset: int = 1_000_000  # eval scenes use seeds from here on (disjoint from sft/rl)
    # The chains of the types that name their sounds (order, what_follows, duration_compare, gap, overlap):
    # "named" cites the named sounds directly; "walk" goes through the clip's sounds from the start, one
    # span after the other, naming each, up to the last sound the answer needs (at most `walk_max_spans`,
    # else the named chain). Why: the tiny thinker finds a sound by its place in time (IoU 0.67) but not
    # by its kind (0.28-0.36; docs/localisation.md), and each re-heard clip names its sound. On the base
    # pretrained in two stages (PLACEMENT_STAGE, one round), the main job's SFT on walks gave named IoU 0.319
    # on the 300 eval items (0.260 named chains on the one-stage base; walks on that base 0.245): measured,
    # same items. On the shipped base (four rounds), 0.448; with twice the SFT data and steps, 0.471 (0.465
    # in batches grouped by length, shipped).
    chain: str = "walk"
    walk_max_spans: int = 6
    seed: int = 0

    def __post_init__(self):
        if self.chain not in CHAIN_STYLES:
            raise ValueError(f"DataSpec.chain {self.chain!r}: expected one of {CHAIN_STYLES}")
        if self.walk_max_spans < 1:
            raise ValueError(f"DataSpec.walk_max_spans {self.walk_max_spans}: need at least 1")


# The shipped base's second stage (`echo-lite pretrain --stage placement`): the one-stage base
# (data/tiny_base_stage1) trained 2,400 steps more per round (PLACEMENT_ROUND_SEEDS) with walks through
# the clip (the `walk` family) and spans of the sound at a given time (`span`) taking 65 % of the steps. Why: the tiny thinker learns to
# reach a sound by its place in time, and the 1,000 SFT steps of the main job see too few walks to learn
# it (docs/localisation.md). Walk IoU by place on held-out scenes 0.019 -> 0.332 after one round; the
# probes stayed within 0.06 of the one-stage base's (label 0.370 -> 0.355, count 0.460 -> 0.405, order
# 0.325 -> 0.370; after four rounds 0.335, 0.460, 0.400).
PLACEMENT_STAGE: dict = {
    "init": "data/tiny_base_stage1", "steps": 2400, "curriculum_steps": 0, "learning_rate": 5e-4, "eval_every": 400,
    "task_weights": (("walk", 0.4), ("span", 0.25), ("relisten", 0.1), ("onepass", 0.1), ("single", 0.05),
                     ("multi", 0.02), ("read", 0.08)),
}


# The placement stage runs in rounds: each round is PLACEMENT_STAGE again from the weights of the round
# before, the rate restarted (a warm restart); each number is one round's batch-stream seed (the first
# two share seed 0: the shipped base was made that way). Why four: walk IoU by place on held-out scenes
# 0.332, 0.380, 0.412, 0.433, 0.476 after one to five rounds, and the main job's named IoU after SFT 0.319,
# 0.339, 0.376, 0.448, 0.453 on the same 300 eval items (docs/localisation.md): a fifth round's 25 minutes
# bought 0.005 after SFT (and 0.027 less accuracy, within one standard error).
PLACEMENT_ROUND_SEEDS: tuple[int, ...] = (0, 0, 2, 3)


@dataclass(frozen=True)
class PretrainSpec:
    """Pretraining the tiny base on the synthetic world (issue 4; TINY_MODEL_NOTES.md recipe).

    One plain AdamW over all weights; each step draws one task family for the whole batch
    (lengths alike, little padding). The first `curriculum_steps` steps are single-clip
    perception and text-only reading; then the full mix. Steps, not wall time, end the run:
    it reproduces.
    """

    steps: int = 2000
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    curriculum_steps: int = 300  # perception and reading first, time in long scenes after
    # task family -> weight during the curriculum: single clips, and copying the question's
    # times from text alone (a text step costs ~1/10 of an audio step)
    curriculum_weights: tuple[tuple[str, float], ...] = (("single", 0.6), ("read", 0.4))
    decay_start: float = 0.6  # fraction of the steps after which the rate decays linearly ...
    final_lr_fraction: float = 0.1  # ... to this fraction of `learning_rate`
    # task family -> weight after the curriculum (see perception.py for what each is)
    # (single clips are mastered in the curriculum; "span" teaches what SFT needs: copy a time, cite a span)
    task_weights: tuple[tuple[str, float], ...] = (
        ("single", 0.12), ("multi", 0.05), ("relisten", 0.15), ("onepass", 0.38), ("span", 0.20), ("read", 0.10))
    # question types of the "read" family (every type whose question holds a time) -> weight
    read_qtypes: tuple[tuple[str, float], ...] = (
        ("sound_at_time", 0.25), ("tone_at_time", 0.25), ("count_in_span", 0.2), ("knock_count", 0.2),
        ("pitch_change", 0.1))
    # one-pass question types (from data/questions.py) -> weight (knock counts: the slowest probe)
    onepass_qtypes: tuple[tuple[str, float], ...] = (
        ("sound_at_time", 0.25), ("tone_at_time", 0.10), ("knock_count", 0.45), ("what_follows", 0.20))
    # question types of the "span" family -> weight (the span each cites follows from the question)
    span_qtypes: tuple[tuple[str, float], ...] = (
        ("sound_at_time", 0.30), ("tone_at_time", 0.20), ("count_in_span", 0.15), ("knock_count", 0.15),
        ("what_follows", 0.20))
    # question types of the "walk" family (the types whose walk chains go through the clip) -> weight
    walk_qtypes: tuple[tuple[str, float], ...] = (
        ("order", 0.25), ("what_follows", 0.25), ("duration_compare", 0.2), ("gap", 0.2), ("overlap", 0.1))
    # Start from this base's weights (a directory, e.g. "data/tiny_base") instead of a fresh model:
    # a second stage of pretraining with another mix. None: from scratch (the shipped recipe).
    init: str | None = None
    relisten_other_fraction: float = 0.3  # re-listen items citing another event than the asked one
    single_pad_s: tuple[float, float] = (0.0, 0.3)  # context kept around a single clip
    # event kinds of single clips -> weight: knock counts and melody keys are the slow classes to learn
    # (measured at step 800: with DataSpec's mix tones, chirps, noise 100 %, knocks 22 %, melodies 17 %;
    # with knocks at 0.35 here, knocks 42 %, melodies 31 %)
    single_kind_weights: tuple[tuple[str, float], ...] = (
        ("tone", 0.10), ("chirp", 0.05), ("knocks", 0.45), ("noise", 0.05), ("melody", 0.20), ("speech", 0.15))
    multi_clips: tuple[int, int] = (2, 3)
    # long-scene lengths of a batch -> weight (short ones are cheaper; all of 5-30 s is seen)
    scene_buckets: tuple[tuple[tuple[float, float], float], ...] = (
        ((5.0, 10.0), 0.60), ((10.0, 15.0), 0.30), ((15.0, 30.0), 0.10))
    train_seed_range: int = 1_000_000  # training scenes: seeds below this (DataSpec's eval seeds start here)
    probe_seed_offset: int = 3_000_000  # probe scenes: from here on, never trained on
    probe_items: int = 200  # per probe at the end of training
    probe_seconds: tuple[float, float] = (5.0, 15.0)
    fine_detail_seconds: tuple[float, float] = (10.0, 30.0)
    eval_every: int = 200
    eval_items: int = 32  # per probe, for the training curve
    log_every: int = 50  # a progress line (step, loss, seconds)
    save_every: int = 200  # resumable state (model + optimizer) this often
    threads: int = 2
    seed: int = 0
    max_checkpoint_mb: float = 15.0


@dataclass(frozen=True)
class DemoSpec:
    """The main job (`echo-lite demo`): sizes of each stage, so the whole tiny pipeline runs in
    about 35 minutes on 2 CPU cores and gives the same numbers on every run."""

    n_items: int = 1200  # items drafted by synth (before routing to sft / rl / eval)
    sft_epochs: float = 2.0
    grpo_steps: int = 24
    eval_items: int = 96  # held-out items answered per row of the ablation table
    # The SFT and SFT+GRPO rows again as the consensus of this many sampled answers (consensus.py);
    # 1 = greedy rows only. 8: the GRPO group size (ECHO_METHOD.md section 5).
    consensus_samples: int = 8
    seed: int = 0


@dataclass(frozen=True)
class Preset:
    name: str
    model: ModelSpec
    segments: SegmentLimits = field(default_factory=SegmentLimits)
    sampling: SamplingSpec = field(default_factory=SamplingSpec)
    runtime: RuntimeSpec = field(default_factory=RuntimeSpec)
    rewards: RewardSpec = field(default_factory=RewardSpec)
    sft: SFTSpec = field(default_factory=SFTSpec)
    self_improve: SelfImproveSpec = field(default_factory=SelfImproveSpec)
    grpo: GRPOSpec = field(default_factory=GRPOSpec)
    data: DataSpec = field(default_factory=DataSpec)
    pretrain: PretrainSpec = field(default_factory=PretrainSpec)
    demo: DemoSpec = field(default_factory=DemoSpec)
    device: str = "cpu"

    def with_overrides(self, **sections: dict) -> "Preset":
        """Return a copy with some fields of some sections replaced.

        `preset.with_overrides(sft={"lora_r": 4}, grpo={"beta": 0.0})`
        """
        changes = {}
        for section, values in sections.items():
            if not hasattr(self, section):
                raise KeyError(f"preset {self.name!r} has no section {section!r}")
            current = getattr(self, section)
            if dataclasses.is_dataclass(current):
                unknown = set(values) - {f.name for f in dataclasses.fields(current)}
                if unknown:
                    raise KeyError(f"preset section {section!r} has no field(s) {sorted(unknown)}")
                changes[section] = dataclasses.replace(current, **values)
            else:
                changes[section] = values
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        model=ModelSpec(source="tiny"),
        segments=SegmentLimits(max_new_tokens=160),
        # Full fine-tuning on tiny: LoRA (r=16, lr 1e-3) plateaued at a response loss of 4.96 after
        # 160 steps, while full fine-tuning reached 2.27 after 80 and 0.78 after 200 (measured).
        # Cited clips inserted into SFT samples (the paper's SFT writes tags only): trained without
        # them, the tiny model's answers broke once real clips followed </seg> (600 steps, 48 eval
        # items: well formed 0.90 tags_only vs 0.50 interleaved; accuracy 0.40 vs 0.19).
        # The base's 2 text blocks grow to 4 before SFT (block expansion): on the same data and 605
        # steps, 450 held-out items, interleaved greedy: well formed 0.51 -> 0.66, citing 0.71 ->
        # 0.77, accuracy 0.096 -> 0.158 (measured; the loss curves were alike).
        # A tenth of the cited spans shown declined (declined_tag_fraction): 22 of the 29 malformed
        # answers of the SFT model trained without it came after a tag the runtime declined; with it,
        # same data and steps, 300 held-out items: well formed 0.903 -> 0.933, malformed after a
        # declined tag 22 -> 8, accuracy 0.477 both (measured). 0.15 with 1,000 steps: see DemoSpec below.
        # Batches grouped by length (group_by_length): the main job's 2,000 SFT steps took 31 min on the 2
        # cores instead of ~50 (a random batch of 8 is mostly padding to its longest clip), same data
        # and steps, same 300 held-out items: named IoU 0.471 -> 0.465, accuracy 0.567 -> 0.623, well
        # formed 0.990 -> 0.987; after GRPO IoU 0.507 -> 0.529, accuracy 0.617 -> 0.603 (measured;
        # docs/localisation.md).
        sft=SFTSpec(use_lora=False, learning_rate=1e-3, full_ft_learning_rate=1e-3, lora_r=16, lora_alpha=32,
                    per_device_batch_size=8, insert_cited_clips=True, text_layers=4, declined_tag_fraction=0.15,
                    group_by_length=True),
        # Prompts and clips fed 4 rows at a time: 16 answers of 18 s clips, CPU, one thread,
        # best of 4 alternating runs: 1.16 s against 1.26 s with all 16 rows at once.
        runtime=RuntimeSpec(chunk_rows=4),
        # Rollouts at 0.7: at 1.0 the tiny SFT model's groups were near-random (rollout accuracy
        # 0-9 % against 28 % greedy), so the group advantages carried little signal.
        grpo=GRPOSpec(learning_rate=5e-5, prompts_per_step=4, num_generations=8, temperature=0.7),
        # More SFT data and steps: 400 steps on 710 items left the format at 0.73 well formed;
        # 600 steps on 1,756 items reached 0.90 (tags_only, same 48 items). 2.25 epochs (495 steps,
        # 10.8 min) with 4 blocks keep the main job under 30 min (27.3 min measured; 605 steps
        # took 11.8 min, the response loss flat from ~450). GRPO: 40 steps (~8.7 s each with 4
        # blocks and shared prompts): over 20 the mean reward did not clearly rise. 300 eval items
        # per row: with 96, rows 2 points apart were within one standard error (~4 points).
        # 6,000 items (3,550 for SFT) and 742 SFT steps: on the same 300 held-out items, interleaved,
        # greedy, against 3,000 items: well formed 0.830 -> 0.903 (order 0.55 -> 0.85, gap 0.61 -> 0.84),
        # accuracy 0.410 -> 0.477, IoU 0.342 -> 0.322 (3,000 items for 742 steps: 0.857, 0.493, 0.348).
        # The data takes 4.8 GB on disk (the audio and its datasets copy).
        # 1,000 SFT steps (2.253 epochs of 444) with declined_tag_fraction 0.15, against 742 steps with 0.1,
        # same 300 held-out items: well formed 0.933 -> 0.993, citing 0.98 -> 0.99, IoU 0.322 -> 0.343,
        # decisive hit 0.421 -> 0.467, accuracy 0.477 -> 0.500 (SFT 22.4 min instead of ~15; measured).
        # Then 80 GRPO steps: from that SFT model, 40 steps gave 0.503 (+0.3 points), 80 gave 0.530
        # (+3.0; IoU 0.343 -> 0.355, well formed 1.0), same 300 items (measured; ~5 min a run).
        # 12,000 items (7,230 for SFT) and 2,000 SFT steps (2.2125 epochs of 904), from the four-round
        # base, same 300 held-out items, against 6,000 items and 1,000 steps: named IoU 0.448 -> 0.471,
        # where the question gives a time 0.474 -> 0.520 (the text-only rule: 0.497), well formed 0.980
        # -> 0.990, accuracy 0.577 -> 0.567; after GRPO IoU 0.503 -> 0.507, accuracy 0.587 -> 0.617.
        # 12,000 items and 1,000 steps gave IoU 0.426, 6,000 items and 2,000 steps 0.443: the data and
        # the steps together, not either alone (docs/localisation.md). The data takes 9.5 GB on disk.
        demo=DemoSpec(n_items=12000, sft_epochs=2.2125, grpo_steps=80, eval_items=300),
        # SFT's second round on its own consensus answers (self_improve.py): from the SFT model above,
        # the consensus of 8 answers to the first 1,600 SFT questions, then 300 steps at 2e-4 (12.5 + 4.5 min
        # on the 2 cores). Same 300 held-out items, greedy, interleaved: named IoU 0.465 -> 0.543, accuracy
        # 0.623 -> 0.643, well formed 0.987 -> 0.997, cites 0.98 -> 0.99, decisive hit 0.628 -> 0.654; after
        # GRPO IoU 0.529 -> 0.571, accuracy 0.603 -> 0.627. A trial with other sample seeds: IoU 0.565, accuracy
        # 0.617 (measured; docs/localisation.md).
        self_improve=SelfImproveSpec(questions=1600),
    ),
    "omni-3b": Preset(
        name="omni-3b",
        model=ModelSpec(source="Qwen/Qwen2.5-Omni-3B", dtype="bfloat16"),
        sft=SFTSpec(bf16=True, gradient_checkpointing=True, per_device_batch_size=2,
                    gradient_accumulation_steps=8),
        grpo=GRPOSpec(prompts_per_step=8, use_vllm=True),
        runtime=RuntimeSpec(backend="vllm", batch_size=64),
        device="cuda",
    ),
    "omni-7b": Preset(
        name="omni-7b",
        model=ModelSpec(source="Qwen/Qwen2.5-Omni-7B", dtype="bfloat16"),
        sft=SFTSpec(bf16=True, gradient_checkpointing=True, per_device_batch_size=1,
                    gradient_accumulation_steps=16),
        grpo=GRPOSpec(prompts_per_step=64, use_vllm=True),
        runtime=RuntimeSpec(backend="vllm", batch_size=64),
        device="cuda",
    ),
}


def get_preset(name: str | Preset) -> Preset:
    if isinstance(name, Preset):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
