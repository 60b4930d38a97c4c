"""The tiny preset's tokenizer: a small byte-level BPE with Qwen2.5-Omni's special tokens.

Trained with `tokenizers` on a fixed corpus (the prompt texts and the synthetic world's
words), so it is rebuilt identically. Digits are split one by one so that a time such
as `12.5` is always the same four tokens the model can copy. The response tags
(`<think>`, `<seg>`, ...) are single tokens here; with the real Qwen tokenizer they are
plain text, and nothing in echo_lite depends on either.
"""

from __future__ import annotations

from pathlib import Path

from echo_lite.config import (
    ENDOFTEXT,
    IM_END,
    RESPONSE_TAGS,
    SPECIAL_TOKENS,
)
from echo_lite.prompts import INSTRUCTION, SYSTEM_PROMPT

TINY_VOCAB_SIZE = 1024

# Qwen2.5-Omni's layout for text and audio turns, as a Jinja chat template (used by
# `apply_chat_template`; `prompts.render_chat` renders the same text without Jinja).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'audio' %}{{ '<|audio_bos|><|AUDIO|><|audio_eos|>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Words of the synthetic world and the course's reasoning text; anything else still
# encodes (byte-level), only in more tokens.
_WORDS = """
system user assistant question answer choose from the a an of in at to and or is are was were
what which when how many long before after between first second third last next previous
tone tones pitch pitches higher lower high low same different rising falling chirp chirps
knock knocks knocking noise burst bursts melody melodies key major minor tempo fast slow bpm
speech spoken word words digit digits voice says said zero one two three four five six seven
eight nine ten C D E F G A B sharp flat note notes chord chords beat beats music musical sound
sounds event events clip audio segment segments timestamps seconds second s start end onset
offset duration gap silence overlap overlaps follows followed count counted times longer
shorter loudest quietest change changes changed increase decrease up down none no yes
listen listening again closer look check checking hear heard there here this that it its
so therefore suggests shows means confirms compared than then while during around about
let me focus on part clearly indicates appears occurs happens starts ends lasts
"""


def tokenizer_corpus() -> list[str]:
    lines = [SYSTEM_PROMPT, INSTRUCTION]
    words = _WORDS.split()
    lines += [" ".join(words[i:i + 12]) for i in range(0, len(words), 12)]
    lines += [w for w in words] + [" " + w for w in words] + [w.capitalize() for w in words]
    # Times and spans as the model will write them.
    lines += [f"{a}.{b}, {a + 1}.{b} seconds" for a in range(31) for b in range(10)]
    return lines * 4


def build_tiny_tokenizer(vocab_size: int = TINY_VOCAB_SIZE):
    """Train the tiny byte-level BPE and wrap it as a transformers fast tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in RESPONSE_TAGS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tokenizer(tokenizer, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    return out_dir
