import numpy as np
import pytest
import torch

from echo_lite.audio import AudioFeaturizer, audio_token_count, cut_span
from echo_lite.config import AUDIO_PAD, get_preset
from echo_lite.model import (
    ModelLoadError,
    apply_lora,
    build_tiny_thinker,
    count_parameters,
    expand_text_depth,
    freeze_audio_tower,
    is_model_dir,
    load_preset_model,
    load_thinker,
    load_tokenizer,
)
from echo_lite.prompts import build_prompt


def _inputs(tok, model, wavs, question="Which tone is first?"):
    counts = [audio_token_count(len(w)) for w in wavs]
    enc = tok(build_prompt(question, ["A4", "A5"], counts), return_tensors="pt")
    feats = AudioFeaturizer(model.config.audio_config.num_mel_bins)(wavs)
    return {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask, **feats}


def test_tiny_is_a_real_thinker_of_about_a_million_parameters(tiny_model):
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    assert isinstance(tiny_model, Qwen2_5OmniThinkerForConditionalGeneration)
    counts = count_parameters(tiny_model)
    assert 500_000 < counts["total"] < 5_000_000
    assert counts["audio_tower"] > 0 and counts["language_model"] > counts["audio_tower"]


def test_build_is_deterministic(tiny_tokenizer):
    a = build_tiny_thinker(tiny_tokenizer)
    b = build_tiny_thinker(tiny_tokenizer)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb)


def test_audio_changes_the_logits(tiny_model, tiny_tokenizer, tone):
    """With the conv init fix, two different clips give clearly different outputs."""
    noise = np.random.default_rng(1).standard_normal(len(tone)).astype(np.float32) * 0.3
    with torch.no_grad():
        a = tiny_model(**_inputs(tiny_tokenizer, tiny_model, [tone])).logits[0, -1]
        b = tiny_model(**_inputs(tiny_tokenizer, tiny_model, [noise])).logits[0, -1]
    assert (a - b).abs().max() > 1e-2


def test_forward_and_generate_with_two_clips(tiny_model, tiny_tokenizer, tone):
    clip = cut_span(tone, 4.0, 6.0)
    inputs = _inputs(tiny_tokenizer, tiny_model, [tone, clip])
    assert (inputs["input_ids"] == tiny_tokenizer.convert_tokens_to_ids(AUDIO_PAD)).sum() == 250 + 50
    with torch.no_grad():
        out = tiny_model(**inputs)
    assert out.logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(out.logits).all()
    lm = load_preset_model("tiny")
    gen = tiny_model.generate(**inputs, max_new_tokens=12, do_sample=False, suppress_tokens=lm.placeholder_ids())
    new = gen[0, inputs["input_ids"].shape[1]:]
    assert 1 <= len(new) <= 12
    assert not set(new.tolist()) & set(lm.placeholder_ids())


def test_save_and_load_round_trip_with_safetensors(tmp_path, tiny_model, tiny_tokenizer, tone):
    tiny_model.save_pretrained(tmp_path, safe_serialization=True)
    tiny_tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin"))
    again = load_thinker(tmp_path)
    inputs = _inputs(tiny_tokenizer, tiny_model, [tone])
    with torch.no_grad():
        assert torch.allclose(tiny_model(**inputs).logits, again(**inputs).logits, atol=1e-6)
    lm = load_preset_model("tiny", checkpoint=tmp_path)
    assert count_parameters(lm.model)["total"] == count_parameters(tiny_model)["total"]


def test_a_saved_model_is_recognised_whole_or_in_shards(tmp_path, tiny_model):
    """One file or shards (as a 3B/7B save comes out); a save that wrote its config but no weights is not a model."""
    tiny_model.save_pretrained(tmp_path / "one", safe_serialization=True)
    tiny_model.save_pretrained(tmp_path / "shards", safe_serialization=True, max_shard_size="1MB")
    assert len(list((tmp_path / "shards").glob("model-*.safetensors"))) > 1
    (tmp_path / "cut").mkdir()
    tiny_model.config.save_pretrained(tmp_path / "cut")
    assert is_model_dir(tmp_path / "one") and is_model_dir(tmp_path / "shards")
    assert not is_model_dir(tmp_path / "cut") and not is_model_dir(tmp_path / "nothing")


def test_block_expansion_keeps_the_function_and_the_cache(tmp_path, tiny_model, tiny_tokenizer, tone):
    """Grown blocks add nothing at first: same logits, same greedy tokens through the KV
    cache (each block has its own cache slot), and the grown model saves and loads."""
    import copy

    grown = copy.deepcopy(tiny_model)
    n = tiny_model.config.text_config.num_hidden_layers
    assert expand_text_depth(grown, 2 * n) == n
    assert grown.config.text_config.num_hidden_layers == len(grown.config.text_config.layer_types) == 2 * n
    assert [b.self_attn.layer_idx for b in grown.model.layers] == list(range(2 * n))
    assert count_parameters(grown)["language_model"] > count_parameters(tiny_model)["language_model"]
    inputs = _inputs(tiny_tokenizer, tiny_model, [tone])
    with torch.no_grad():
        assert torch.allclose(tiny_model(**inputs).logits, grown(**inputs).logits, atol=1e-6)
    gen = dict(max_new_tokens=8, do_sample=False, suppress_tokens=load_preset_model("tiny").placeholder_ids())
    assert torch.equal(tiny_model.generate(**inputs, **gen), grown.generate(**inputs, **gen))
    grown.save_pretrained(tmp_path, safe_serialization=True)
    again = load_thinker(tmp_path)
    assert again.config.text_config.num_hidden_layers == 2 * n
    with torch.no_grad():
        assert torch.allclose(again(**inputs).logits, grown(**inputs).logits, atol=1e-6)
    assert expand_text_depth(again, 2 * n) == 0  # already that deep
    with pytest.raises(ValueError, match=f"multiple of {2 * n}"):
        expand_text_depth(again, 3 * n)


def test_load_errors_name_the_source(tmp_path):
    with pytest.raises(ModelLoadError, match="nowhere"):
        load_thinker(tmp_path / "nowhere")
    with pytest.raises(ModelLoadError, match="tokenizer"):
        load_tokenizer(tmp_path / "nowhere")


def test_lora_touches_the_language_model_only(tiny_tokenizer):
    model = build_tiny_thinker(tiny_tokenizer)
    freeze_audio_tower(model)
    peft_model = apply_lora(model, get_preset("tiny").sft)
    lora_names = [n for n, _ in peft_model.named_parameters() if "lora_" in n]
    assert lora_names and not any("audio_tower" in n or "visual" in n for n in lora_names)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert set(trainable) == set(lora_names)
    # one backward step through audio reaches the adapters
    t = np.sin(np.arange(16000) / 5).astype(np.float32)
    inputs = _inputs(tiny_tokenizer, model, [t])
    out = peft_model(**inputs, labels=inputs["input_ids"])
    out.loss.backward()
    assert all(p.grad is not None for n, p in peft_model.named_parameters() if p.requires_grad)
    merged = peft_model.merge_and_unload()
    assert not any("lora_" in n for n, _ in merged.named_parameters())


def test_a_frozen_audio_tower_is_cut_from_autograd(tiny_tokenizer):
    """transformers' enable_input_require_grads hooks the tower's conv1; with gradient
    checkpointing the frozen tower was then recomputed in backward (and under ZeRO-3 that
    recompute failed). After freeze_audio_tower no tower layer runs in backward, and the
    language model's gradients are the same as with the tower outside autograd."""
    t = np.sin(np.arange(24000) / 7).astype(np.float32)

    def grads(cut: bool):
        torch.manual_seed(0)
        model = build_tiny_thinker(tiny_tokenizer)
        if cut:
            freeze_audio_tower(model)
        else:
            for n, p in model.named_parameters():
                p.requires_grad_("audio_tower" not in n)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        model.train()
        calls = []  # counted in forward itself: a checkpoint's recompute skips module hooks
        for layer in model.audio_tower.layers:
            layer.forward = (lambda f: lambda *a, **k: calls.append(1) or f(*a, **k))(layer.forward)
        inputs = _inputs(tiny_tokenizer, model, [t])
        out = model(**inputs, labels=inputs["input_ids"])
        n_forward = len(calls)
        out.loss.backward()
        g = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return g, n_forward, len(calls) - n_forward, len(model.audio_tower.layers)

    g_cut, fwd, recomputed, n_layers = grads(cut=True)
    g_ref, fwd_ref, recomputed_ref, _ = grads(cut=False)
    assert fwd == fwd_ref == n_layers
    assert recomputed_ref == fwd_ref  # without the cut: every frozen layer ran again in backward
    assert recomputed == 0
    assert g_cut.keys() == g_ref.keys() and not any("audio_tower" in n for n in g_cut)
    for n in g_cut:
        torch.testing.assert_close(g_cut[n], g_ref[n], rtol=1e-5, atol=1e-7)


def test_load_thinker_from_a_full_omni_checkpoint_directory(tmp_path, tiny_model):
    """The 3B/7B path: a full Qwen2.5-Omni checkpoint (config `qwen2_5_omni`, weights under
    `thinker.`) loads as the thinker with `from_pretrained`, in bf16, from a local directory."""
    from safetensors.torch import save_file
    from transformers import Qwen2_5OmniConfig

    Qwen2_5OmniConfig(thinker_config=tiny_model.config.to_dict(), enable_audio_output=False).save_pretrained(tmp_path)
    state = {f"thinker.{k}": v.detach().clone().contiguous() for k, v in tiny_model.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    model = load_thinker(tmp_path, dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    ours = dict(tiny_model.named_parameters())
    for name, p in model.named_parameters():
        assert torch.equal(p, ours[name].to(torch.bfloat16)), name


@pytest.mark.parametrize("preset,lm_billions", [("omni-3b", (3.0, 3.6)), ("omni-7b", (7.3, 7.8))])
def test_full_size_architectures_have_the_real_sizes(tiny_tokenizer, preset, lm_billions):
    """The 3B / 7B thinkers built from their configs (on the meta device: no memory, no download)."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    from echo_lite.config import FULL_SIZE_ARCH, FULL_SIZE_VISION
    from echo_lite.model import full_size_spec, tiny_thinker_config

    cfg = tiny_thinker_config(tiny_tokenizer, full_size_spec(preset), vocab_size=FULL_SIZE_ARCH[preset]["vocab"],
                              vision=FULL_SIZE_VISION)
    with torch.device("meta"):
        model = Qwen2_5OmniThinkerForConditionalGeneration(cfg)
    counts = count_parameters(model)
    assert lm_billions[0] < counts["language_model"] / 1e9 < lm_billions[1]
    assert 0.6 < counts["audio_tower"] / 1e9 < 0.7  # the Whisper-large-sized audio encoder
    assert model.lm_head.weight.shape[0] == FULL_SIZE_ARCH[preset]["vocab"]


def test_training_memory_estimate():
    from echo_lite.model import estimate_training_memory_gib

    # the classic mixed-precision recipe: 2 (weights) + 2 (grads) + 4 (master) + 8 (AdamW) = 16 bytes per weight
    assert estimate_training_memory_gib(2**30, 2**30, state_bytes=4, master_bytes=4) == pytest.approx(16.0)
    # frozen weights cost only their own bytes
    assert estimate_training_memory_gib(2**30, 0) == pytest.approx(2.0)
    # bf16 everything, as the presets' runs: 2 (weights) + 2 (grads) + 4 (AdamW) = 8 bytes per trainable weight
    assert estimate_training_memory_gib(2**30, 2**29) == pytest.approx(2.0 + 3.0)
    # below the measured 3B peaks (activations come on top): full FT 34.66 GiB, LoRA 10.87 GiB
    assert 25 < estimate_training_memory_gib(4.70e9, 3.397e9) < 34.66
    assert 8 < estimate_training_memory_gib(4.70e9, 29.9e6) < 10.87
    with pytest.raises(ValueError, match="trainable"):
        estimate_training_memory_gib(10, 11)


def test_loaded_models_carry_the_tokenizers_special_ids():
    """The Trainer has nothing to re-align (it would warn and rewrite the configs at every SFT start)."""
    from transformers.trainer_utils import align_special_tokens

    lm = load_preset_model(get_preset("tiny"))
    eos, config = lm.tokenizer.eos_token_id, lm.model.config.to_dict()
    align_special_tokens(lm.model, lm.tokenizer)
    assert lm.model.config.to_dict() == config and config["eos_token_id"] == eos
    assert lm.model.generation_config.eos_token_id in (eos, [eos])  # not doubled
