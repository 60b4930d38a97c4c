import pytest

from echo_lite.config import AUDIO_PAD
from echo_lite.prompts import (
    AUDIO_SLOT,
    PromptError,
    build_prompt,
    chat_messages,
    expand_audio_placeholders,
    format_response,
    question_text,
    render_chat,
)


def test_layout_equals_the_tokenizers_chat_template(tiny_tokenizer):
    msgs = chat_messages("Which tone comes first?", ["C4", "E4"], n_audios=2)
    ours = render_chat(msgs)
    theirs = tiny_tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert ours == theirs
    assert ours.startswith("<|im_start|>system\n") and ours.endswith("<|im_start|>assistant\n")
    assert ours.count(AUDIO_SLOT) == 2


def test_question_follows_the_papers_prompt():
    q = question_text("What is heard at 3 s?", ["a dog", "a cat"])
    assert q.startswith('What is heard at 3 s? Choose the answer from ["a dog", "a cat"]. Think step-by-step.')
    assert q.endswith("Answer in the format of <think>...</think><answer>...</answer>.")


def test_bad_questions_are_refused():
    with pytest.raises(PromptError, match="question is empty"):
        question_text("  ", ["a", "b"])
    with pytest.raises(PromptError, match="at least two choices"):
        question_text("q?", ["a"])
    with pytest.raises(PromptError, match="choices repeat"):
        question_text("q?", ["a", "a"])
    with pytest.raises(PromptError, match="explicit system prompt"):
        render_chat([{"role": "user", "content": "hi"}])


def test_expansion_counts_must_match():
    text = render_chat(chat_messages("q?", ["a", "b"], n_audios=2))
    out = expand_audio_placeholders(text, [3, 5])
    assert out.count(AUDIO_PAD) == 8
    with pytest.raises(PromptError, match="2 audio slot\\(s\\) but 1 clip"):
        expand_audio_placeholders(text, [3])
    with pytest.raises(PromptError, match="at least one audio token"):
        expand_audio_placeholders(text, [3, 0])


def test_prompt_ids_hold_one_pad_per_audio_token(tiny_tokenizer):
    text = build_prompt("q?", ["a", "b"], [250, 25])
    ids = tiny_tokenizer(text)["input_ids"]
    assert ids.count(tiny_tokenizer.convert_tokens_to_ids(AUDIO_PAD)) == 275
    assert format_response("x", "a") == "<think>x</think><answer>a</answer>"
