import pytest

from echo_lite.config import AUDIO_TOKENS_PER_SECOND, FRAMES_PER_SECOND, PRESETS, get_preset


def test_presets_carry_the_methods_numbers():
    for name in ("tiny", "omni-3b", "omni-7b"):
        p = get_preset(name)
        assert p.segments.max_clips == 8 and p.segments.min_clip_s == 0.2
        assert p.sampling.eval_temperature == 0.7 and p.sampling.rollout_temperature == 1.0
        assert p.grpo.beta == 0.04 and p.grpo.clip_eps == 0.2 and p.grpo.num_generations == 8
        r = p.rewards
        assert (r.format, r.accuracy, r.segment_bonus) == (0.5, 0.5, 0.5)
        assert (r.consistency_penalty, r.consistency_floor) == (-0.1, -0.5)
        # maximum reward 1.5 (paper, Eq. 2)
        assert r.format + r.accuracy + r.segment_bonus == pytest.approx(1.5)
    assert get_preset("omni-7b").grpo.learning_rate == 1e-6
    assert get_preset("omni-7b").sft.full_ft_learning_rate == 5e-6
    assert FRAMES_PER_SECOND == 100 and AUDIO_TOKENS_PER_SECOND == 25


def test_presets_differ_only_in_configuration():
    assert get_preset("tiny").model.source == "tiny"
    assert get_preset("omni-3b").model.source == "Qwen/Qwen2.5-Omni-3B"
    assert get_preset("omni-7b").model.source == "Qwen/Qwen2.5-Omni-7B"
    assert set(PRESETS) == {"tiny", "omni-3b", "omni-7b"}


def test_overrides_replace_fields_and_reject_unknown_ones():
    p = get_preset("tiny").with_overrides(grpo={"beta": 0.0}, sft={"lora_r": 4})
    assert p.grpo.beta == 0.0 and p.sft.lora_r == 4
    assert get_preset("tiny").grpo.beta == 0.04  # the preset itself is unchanged
    with pytest.raises(KeyError, match="no field"):
        get_preset("tiny").with_overrides(grpo={"betta": 0.0})
    with pytest.raises(KeyError, match="no section"):
        get_preset("tiny").with_overrides(optimiser={"lr": 1})
    with pytest.raises(KeyError, match="unknown preset 'omni-70b'"):
        get_preset("omni-70b")
