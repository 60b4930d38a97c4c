"""The chat layout shared by SFT, RL and evaluation, and audio placeholder expansion.

The layout is Qwen2.5-Omni's (ChatML with `<|audio_bos|><|AUDIO|><|audio_eos|>` for each
audio in a user turn). It is rendered here rather than through the processor, which
needs torchvision; a test checks it equals the tokenizer's chat template. A system
prompt is always given explicitly: the stock template injects a long default one.
"""

from __future__ import annotations

from collections.abc import Sequence

from echo_lite.config import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    AUDIO_BOS,
    AUDIO_EOS,
    AUDIO_PAD,
    IM_END,
    IM_START,
    THINK_CLOSE,
    THINK_OPEN,
)

SYSTEM_PROMPT = "You are a helpful assistant that listens to audio carefully and reasons step by step."

# The paper's evaluation prompt (ECHO_METHOD.md section 2).
INSTRUCTION = (
    "Think step-by-step. Refer to the specific audio segments while thinking, and indicate the "
    "corresponding timestamps. Answer in the format of <think>...</think><answer>...</answer>."
)

AUDIO_SLOT = AUDIO_BOS + AUDIO_PAD + AUDIO_EOS  # one unexpanded audio in the layout


class PromptError(ValueError):
    """A prompt that cannot be built; the message says which input is wrong."""


def format_choices(choices: Sequence[str]) -> str:
    """`['a dog', 'a cat']` -> `["a dog", "a cat"]` (the paper's `[CHOICES]` list)."""
    return "[" + ", ".join(f'"{c}"' for c in choices) + "]"


def question_text(question: str, choices: Sequence[str] | None = None, instruction: str | None = INSTRUCTION) -> str:
    """`QUESTION Choose the answer from [CHOICES]. Think step-by-step. ...`"""
    if not question or not question.strip():
        raise PromptError("question is empty")
    parts = [question.strip()]
    if choices is not None:
        if len(choices) < 2:
            raise PromptError(f"need at least two choices, got {list(choices)!r}")
        if len(set(choices)) != len(choices):
            raise PromptError(f"choices repeat: {list(choices)!r}")
        parts.append(f"Choose the answer from {format_choices(choices)}.")
    if instruction:
        parts.append(instruction)
    return " ".join(parts)


def chat_messages(question: str, choices: Sequence[str] | None = None, n_audios: int = 1,
                  system: str = SYSTEM_PROMPT, instruction: str | None = INSTRUCTION) -> list[dict]:
    """Messages in the transformers multimodal chat format (audio items before the text)."""
    content = [{"type": "audio"} for _ in range(n_audios)]
    content.append({"type": "text", "text": question_text(question, choices, instruction)})
    return [{"role": "system", "content": system}, {"role": "user", "content": content}]


def _content_text(content) -> str:
    if isinstance(content, str):
        return content
    out = []
    for item in content:
        if item["type"] == "audio":
            out.append(AUDIO_SLOT)
        elif item["type"] == "text":
            out.append(item["text"])
        else:
            raise PromptError(f"content type {item['type']!r} is not supported (audio and text only)")
    return "".join(out)


def render_chat(messages: list[dict], add_generation_prompt: bool = True) -> str:
    """ChatML text of `messages`; each audio is one unexpanded `AUDIO_SLOT`."""
    if not messages or messages[0]["role"] != "system":
        raise PromptError("the first message must be an explicit system prompt")
    text = "".join(f"{IM_START}{m['role']}\n{_content_text(m['content'])}{IM_END}\n" for m in messages)
    if add_generation_prompt:
        text += f"{IM_START}assistant\n"
    return text


def audio_insert_text(n_tokens: int) -> str:
    """What the runtime writes for one (re-)inserted clip of `n_tokens` audio tokens."""
    if n_tokens < 1:
        raise PromptError(f"an inserted clip needs at least one audio token, got {n_tokens}")
    return AUDIO_BOS + AUDIO_PAD * n_tokens + AUDIO_EOS


def expand_audio_placeholders(text: str, token_counts: Sequence[int]) -> str:
    """Replace the i-th `AUDIO_SLOT` by `token_counts[i]` audio pads.

    The thinker scatters audio features into the pad positions in order, so the counts
    must match the clips exactly; a mismatch is an error here rather than deep in torch.
    """
    pieces = text.split(AUDIO_SLOT)
    if len(pieces) - 1 != len(token_counts):
        raise PromptError(f"text has {len(pieces) - 1} audio slot(s) but {len(token_counts)} clip(s) were given")
    out = [pieces[0]]
    for n, rest in zip(token_counts, pieces[1:]):
        out.append(audio_insert_text(n))
        out.append(rest)
    return "".join(out)


def format_response(think: str, answer: str) -> str:
    """`<think>THINK</think><answer>ANSWER</answer>` (the answer is the option text)."""
    return f"{THINK_OPEN}{think}{THINK_CLOSE}{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"


def build_prompt(question: str, choices: Sequence[str] | None, clip_token_counts: Sequence[int],
                 system: str = SYSTEM_PROMPT, instruction: str | None = INSTRUCTION) -> str:
    """The full, expanded prompt text for one question over one or more clips."""
    messages = chat_messages(question, choices, n_audios=len(clip_token_counts), system=system,
                             instruction=instruction)
    return expand_audio_placeholders(render_chat(messages), clip_token_counts)
