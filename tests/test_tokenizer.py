from echo_lite.config import RESPONSE_TAGS, SPECIAL_TOKENS
from echo_lite.model import TINY_TOKENIZER_DIR
from echo_lite.tokenizer import build_tiny_tokenizer


def test_shipped_tokenizer_is_what_the_builder_makes(tiny_tokenizer):
    assert (TINY_TOKENIZER_DIR / "tokenizer.json").exists()
    rebuilt = build_tiny_tokenizer()
    assert rebuilt.get_vocab() == tiny_tokenizer.get_vocab()


def test_special_tokens_and_tags_are_single_tokens(tiny_tokenizer):
    for tok in SPECIAL_TOKENS + RESPONSE_TAGS:
        ids = tiny_tokenizer(tok, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, tok
        assert tiny_tokenizer.convert_ids_to_tokens(ids[0]) == tok
    assert tiny_tokenizer.eos_token == "<|im_end|>" and tiny_tokenizer.pad_token == "<|endoftext|>"
    assert len(tiny_tokenizer) < 1100


def test_round_trip_and_digit_splitting(tiny_tokenizer):
    text = "<think>I listen to <seg>12.5, 14.0</seg>, it rises.</think><answer>rising chirp</answer>"
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tiny_tokenizer.decode(ids) == text
    toks = tiny_tokenizer.convert_ids_to_tokens(ids)
    i = toks.index("<seg>")
    assert toks[i + 1:i + 5] == ["1", "2", ".", "5"]


def test_save_and_reload(tmp_path, tiny_tokenizer):
    from echo_lite.model import load_tokenizer

    tiny_tokenizer.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    s = "<|im_start|>user\n<|audio_bos|><|AUDIO|><|audio_eos|>hi<|im_end|>"
    assert again(s)["input_ids"] == tiny_tokenizer(s)["input_ids"]
