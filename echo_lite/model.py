"""Build or load the thinker and tokenizer for a preset; LoRA wiring.

`tiny` is a real `Qwen2_5OmniThinkerForConditionalGeneration` of about a million
parameters built from a config (or the checkpoint this project trained and ships under
`data/tiny_base/`); `omni-3b` / `omni-7b` load the thinker of the real checkpoint with
`from_pretrained` from a hub id or a local directory. Same class, same code path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from echo_lite.config import (
    AUDIO_BOS,
    AUDIO_EOS,
    AUDIO_PAD,
    DATA_DIR,
    FULL_SIZE_ARCH,
    FULL_SIZE_AUDIO,
    FULL_SIZE_VISION,
    IMAGE_PAD,
    PLACEHOLDER_TOKENS,
    VIDEO_PAD,
    VISION_BOS,
    VISION_EOS,
    ModelSpec,
    Preset,
    SFTSpec,
    get_preset,
)

TINY_TOKENIZER_DIR = DATA_DIR / "tiny_tokenizer"
TINY_BASE_DIR = DATA_DIR / "tiny_base"  # the pretrained tiny thinker (issue 4) once shipped


class ModelLoadError(RuntimeError):
    """A checkpoint or tokenizer that cannot be loaded; the message names the source."""


def load_tokenizer(source: str | Path):
    """A tokenizer from a local directory or hub id ("tiny" -> the shipped tiny tokenizer)."""
    from transformers import AutoTokenizer

    if str(source) == "tiny":
        source = TINY_BASE_DIR if (TINY_BASE_DIR / "tokenizer.json").exists() else TINY_TOKENIZER_DIR
        if not (Path(source) / "tokenizer.json").exists():
            from echo_lite.tokenizer import build_tiny_tokenizer, save_tokenizer

            save_tokenizer(build_tiny_tokenizer(), TINY_TOKENIZER_DIR)
    try:
        tok = AutoTokenizer.from_pretrained(str(source))
    except Exception as err:
        raise ModelLoadError(f"cannot load a tokenizer from {source!r}: {err}") from err
    missing = [t for t in (AUDIO_BOS, AUDIO_PAD, AUDIO_EOS) if tok.convert_tokens_to_ids(t) in (None, tok.unk_token_id)]
    if missing:
        raise ModelLoadError(f"tokenizer from {source!r} lacks the audio placeholder token(s) {missing}")
    return tok


def tiny_thinker_config(tokenizer, spec: ModelSpec, vocab_size: int | None = None, vision: dict | None = None):
    """A Qwen2.5-Omni thinker config from a ModelSpec (tiny, or full-size for smoke tests) whose
    special ids are the tokenizer's. The vision tower is minimal unless `vision` is given."""
    from transformers import Qwen2_5OmniThinkerConfig

    head_dim = spec.text_hidden // spec.text_heads
    if sum(spec.mrope_section) * 2 != head_dim:
        raise ValueError(f"mrope_section {spec.mrope_section} must sum to head_dim/2 = {head_dim // 2}")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (AUDIO_BOS, AUDIO_PAD, AUDIO_EOS, VISION_BOS,
                                                           VISION_EOS, IMAGE_PAD, VIDEO_PAD)}
    cfg = Qwen2_5OmniThinkerConfig(
        audio_config=dict(
            num_mel_bins=spec.n_mels, encoder_layers=spec.audio_layers, encoder_attention_heads=spec.audio_heads,
            encoder_ffn_dim=spec.audio_ffn, d_model=spec.audio_d_model, output_dim=spec.text_hidden,
            n_window=spec.audio_n_window, max_source_positions=1500,
        ),
        # The vision tower is never used by echo_lite; it is kept as small as it builds.
        vision_config={**(vision or dict(depth=1, hidden_size=32, intermediate_size=32, num_heads=2,
                                         fullatt_block_indexes=[0], patch_size=14, spatial_merge_size=2,
                                         temporal_patch_size=2)), "out_hidden_size": spec.text_hidden},
        text_config=dict(
            vocab_size=vocab_size or len(tokenizer), hidden_size=spec.text_hidden, intermediate_size=spec.text_ffn,
            num_hidden_layers=spec.text_layers, num_attention_heads=spec.text_heads,
            num_key_value_heads=spec.text_kv_heads, max_position_embeddings=spec.max_positions,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": list(spec.mrope_section)},
            tie_word_embeddings=vocab_size is None, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        ),
        audio_token_index=ids[AUDIO_PAD], audio_start_token_id=ids[AUDIO_BOS], audio_end_token_id=ids[AUDIO_EOS],
        image_token_index=ids[IMAGE_PAD], video_token_index=ids[VIDEO_PAD],
    )
    cfg.vision_start_token_id = ids[VISION_BOS]
    cfg.vision_end_token_id = ids[VISION_EOS]
    return cfg


def build_tiny_thinker(tokenizer, spec: ModelSpec | None = None):
    """A freshly initialised tiny thinker (HF init plus the audio-conv scale fix), seeded."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    spec = spec or get_preset("tiny").model
    torch.manual_seed(spec.seed)
    model = Qwen2_5OmniThinkerForConditionalGeneration(tiny_thinker_config(tokenizer, spec))
    # See ModelSpec.audio_conv_init_scale: lift the conv output above the position table.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if re.search(r"audio_tower\.conv[12]\.weight$", name):
                p.mul_(spec.audio_conv_init_scale)
    _set_generation_defaults(model, tokenizer)
    return model.eval()


def full_size_spec(preset_name: str) -> ModelSpec:
    """The ModelSpec of the real 3B / 7B thinker (architecture numbers from config.FULL_SIZE_ARCH)."""
    arch = dict(FULL_SIZE_ARCH[preset_name])
    arch.pop("vocab")
    return ModelSpec(source=preset_name, dtype="bfloat16", audio_conv_init_scale=1.0, max_positions=32768,
                     **arch, **FULL_SIZE_AUDIO)


def build_full_size_thinker(preset_name: str, tokenizer, dtype: torch.dtype = torch.bfloat16,
                            device: str = "cuda"):
    """A full-size 3B / 7B thinker with random weights (no download): for GPU smoke tests and
    memory tables. Token ids come from `tokenizer`; the vocabulary has the real size."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    cfg = tiny_thinker_config(tokenizer, full_size_spec(preset_name), vocab_size=FULL_SIZE_ARCH[preset_name]["vocab"],
                              vision=FULL_SIZE_VISION)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5OmniThinkerForConditionalGeneration._from_config(cfg, dtype=dtype,
                                                                         attn_implementation="sdpa")
    _set_generation_defaults(model, tokenizer)
    return model.eval()


def _set_generation_defaults(model, tokenizer) -> None:
    # The thinker's own config too: transformers' Trainer otherwise "aligns" it with the tokenizer
    # at every SFT/GRPO start, with a warning, and doubles the generation config's EOS id.
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    gc = model.generation_config
    gc.eos_token_id = tokenizer.eos_token_id
    gc.pad_token_id = tokenizer.pad_token_id
    gc.bos_token_id = None


def load_thinker(source: str | Path, dtype: str = "float32", attn_implementation: str = "sdpa",
                 device: str | torch.device = "cpu"):
    """`from_pretrained` of a thinker from a local directory or hub id (safetensors only).

    A full Qwen2.5-Omni checkpoint also works: transformers maps its `thinker.` prefix.
    """
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    try:
        model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
            str(source), dtype=getattr(torch, dtype), attn_implementation=attn_implementation,
            use_safetensors=True,
        )
    except Exception as err:
        raise ModelLoadError(f"cannot load a Qwen2.5-Omni thinker from {str(source)!r}: {err}") from err
    return model.to(device).eval()


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    preset: Preset

    @property
    def n_mels(self) -> int:
        return self.model.config.audio_config.num_mel_bins

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def placeholder_ids(self) -> list[int]:
        """Token ids a policy must never sample (`suppress_tokens` while generating)."""
        return [self.tokenizer.convert_tokens_to_ids(t) for t in PLACEHOLDER_TOKENS]


def is_model_dir(path: str | Path) -> bool:
    """A finished save: a LoRA adapter, or full weights in one file or in shards (their index is
    written after the shards, so a save that stopped part way is not taken for a model)."""
    path = Path(path)
    return any((path / name).exists() for name in ("adapter_config.json", "model.safetensors",
                                                    "model.safetensors.index.json"))


def load_preset_model(preset: str | Preset, checkpoint: str | Path | None = None) -> LoadedModel:
    """The model and tokenizer a preset starts from, or `checkpoint` when given.

    tiny: `checkpoint`, else the shipped pretrained base if present, else a new model.
    """
    preset = get_preset(preset)
    spec = preset.model
    if checkpoint is not None:
        source = Path(checkpoint)
    elif spec.source == "tiny":
        source = TINY_BASE_DIR if (TINY_BASE_DIR / "model.safetensors").exists() else None
    else:
        source = spec.source
    if source is None:
        tok = load_tokenizer("tiny")
        model = build_tiny_thinker(tok, spec)
    else:
        tok = load_tokenizer(source)
        model = load_thinker(source, spec.dtype, spec.attn_implementation, device=preset.device)
        _set_generation_defaults(model, tok)
    return LoadedModel(model=model, tokenizer=tok, preset=preset)


def count_parameters(model) -> dict[str, int]:
    """Parameter counts: total, trainable, and per part (audio tower, vision, language model)."""
    parts = {"total": 0, "trainable": 0, "audio_tower": 0, "visual": 0, "language_model": 0}
    for name, p in model.named_parameters():
        n = p.numel()
        parts["total"] += n
        parts["trainable"] += n if p.requires_grad else 0
        if "audio_tower" in name:
            parts["audio_tower"] += n
        elif "visual" in name:
            parts["visual"] += n
        else:
            parts["language_model"] += n
    return parts


GIB = 1024 ** 3


def estimate_training_memory_gib(total_params: float, trainable_params: float, weight_bytes: int = 2,
                                 state_bytes: int = 2, master_bytes: int = 0) -> float:
    """GiB that a training step holds for the model itself, before activations:

    - every weight, frozen or not: `total_params * weight_bytes`;
    - per trainable weight: its gradient (`weight_bytes`), AdamW's two moments (`2 * state_bytes`)
      and, in classic mixed precision, an fp32 master copy (`master_bytes`, 4; 0 when the optimizer
      updates the bf16 weights directly, as the presets' runs do).

    The classic recipe (bf16 weights, fp32 master copy and moments: 2 + 2 + 4 + 8 = 16 bytes per
    trainable weight) is `state_bytes=4, master_bytes=4`. Activations depend on the batch and on
    gradient checkpointing and are not included: the measured peaks in `benchmarks/results/` are higher.
    """
    if total_params < 0 or not 0 <= trainable_params <= total_params:
        raise ValueError(f"need 0 <= trainable ({trainable_params}) <= total ({total_params})")
    per_trainable = weight_bytes + 2 * state_bytes + master_bytes
    return (total_params * weight_bytes + trainable_params * per_trainable) / GIB


def apply_lora(model, sft: SFTSpec):
    """Wrap the thinker with LoRA adapters on the language model only (regex from the preset)."""
    from peft import LoraConfig, get_peft_model

    targets = [n for n, _ in model.named_modules() if re.match(sft.lora_target_regex, n)]
    if not targets:
        raise ValueError(f"LoRA regex {sft.lora_target_regex!r} matches no module of this model")
    cfg = LoraConfig(r=sft.lora_r, lora_alpha=sft.lora_alpha, lora_dropout=sft.lora_dropout,
                     target_modules=sft.lora_target_regex, bias="none")
    return get_peft_model(model, cfg)


def freeze_audio_tower(model) -> int:
    """Freeze every audio-tower parameter and cut the autograd graph at the tower's output;
    returns how many tensors were frozen.

    Why the cut: transformers' `enable_input_require_grads` (called for gradient
    checkpointing) hooks the tower's `conv1` too, so a frozen tower was still recorded by
    autograd and, with checkpointing, recomputed in backward for gradients nobody uses.
    Under DeepSpeed ZeRO-3 that recompute found its partitioned weights empty and training
    stopped (H100, omni-3b). Detaching a frozen tower's output changes no gradient.
    """
    n = 0
    for name, p in model.named_parameters():
        if "audio_tower" in name:
            p.requires_grad_(False)
            n += 1
    for name, tower in model.named_modules():  # found by name: the model may be wrapped (PEFT)
        if name.split(".")[-1] == "audio_tower" and not getattr(tower, "_echo_detached", False):
            tower.register_forward_hook(_detach_tower_output)
            tower._echo_detached = True
    return n


def _detach_tower_output(module, args, output):
    if any(p.requires_grad for p in module.parameters()):  # unfrozen later: gradients must flow again
        return output
    if torch.is_tensor(output):
        return output.detach()
    output.last_hidden_state = output.last_hidden_state.detach()
    return output


def expand_text_depth(model, n_layers: int) -> int:
    """Grow the language model to `n_layers` decoder blocks by block expansion (LLaMA Pro,
    Wu et al. 2024): after each block come copies of it whose output projections
    (`o_proj`, `down_proj`) are zero, so each copy adds nothing to the residual stream and
    the grown model computes exactly what it did before. Training then gives the copies a
    use. Returns how many blocks were added (0 when the model already has `n_layers`).

    Why: the tiny base is pretrained at 2 blocks within its CPU budget, and the reasoning
    format SFT teaches is more than 2 blocks learn (measured: the tiny preset's comment in
    config.py).
    """
    import copy

    from torch import nn

    lm = model.model  # the thinker's text model
    layers, cfg = lm.layers, lm.config
    n_now = len(layers)
    if n_layers == n_now:
        return 0
    if n_layers < n_now or n_layers % n_now:
        raise ValueError(f"cannot grow {n_now} text layers to {n_layers}: give a multiple of {n_now} "
                         "(every block gets the same number of copies)")
    types = [t for t in cfg.layer_types for _ in range(n_layers // n_now)]
    grown = []
    for block in layers:
        grown.append(block)
        for _ in range(n_layers // n_now - 1):
            twin = copy.deepcopy(block)
            with torch.no_grad():
                twin.self_attn.o_proj.weight.zero_()
                twin.mlp.down_proj.weight.zero_()
            grown.append(twin)
    for i, block in enumerate(grown):
        block.self_attn.layer_idx = i  # the KV cache is indexed by it
    lm.layers = nn.ModuleList(grown)
    for c in {id(cfg): cfg, id(model.config.text_config): model.config.text_config}.values():
        c.num_hidden_layers = n_layers
        c.layer_types = list(types)
    return n_layers - n_now
