"""Reading the answer out of a response and matching it to an option. Pure functions.

One matcher serves the rewards, the synthetic benchmark and the MMAU/MMAR scorers. An
answer that matches no option, or several, is unmatched: there is no fallback to the
first option (the authors' matcher had one, which inflates accuracy).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

from echo_lite.config import ANSWER_CLOSE, ANSWER_OPEN

_ANSWER = re.compile(re.escape(ANSWER_OPEN) + r"(.*?)" + re.escape(ANSWER_CLOSE), re.DOTALL)
_PUNCT = str.maketrans("", "", string.punctuation)
_LETTER = re.compile(r"^\(?([A-Za-z])[\).:]?(?:\s|$)")


def extract_answer(response: str) -> str | None:
    """The text inside the last `<answer>...</answer>`, or None when there is none."""
    found = _ANSWER.findall(response or "")
    return found[-1].strip() if found else None


def normalize(text: str) -> str:
    """Lowercase, no punctuation, single spaces: 'The C5 tone.' -> 'the c5 tone'."""
    return " ".join(text.lower().translate(_PUNCT).split())


def match_choice(answer: str | None, choices: Sequence[str]) -> int | None:
    """Index of the option `answer` names, or None (no match, or ambiguous).

    Order of rules: exact text after normalisation; a leading option letter ("B", "(B)",
    "B. ...") when the choices are shown with letters; the one option whose normalised
    text is contained in the answer (and no other option is).
    """
    if answer is None:
        return None
    norm = normalize(answer)
    if not norm:
        return None
    options = [normalize(c) for c in choices]
    exact = [i for i, o in enumerate(options) if o == norm]
    if len(exact) == 1:
        return exact[0]
    m = _LETTER.match(answer.strip())
    if m and len(answer.strip()) <= 4:
        idx = ord(m.group(1).upper()) - ord("A")
        return idx if 0 <= idx < len(choices) else None
    contained = [i for i, o in enumerate(options) if o and re.search(rf"(?<!\w){re.escape(o)}(?!\w)", norm)]
    # "high C5 tone" contains both "c5 tone" and "high c5 tone": keep the longest if it covers the others
    if len(contained) > 1:
        longest = max(contained, key=lambda i: len(options[i]))
        if all(options[i] in options[longest] for i in contained):
            contained = [longest]
    return contained[0] if len(contained) == 1 else None


def is_correct(response: str, choices: Sequence[str], answer: str) -> bool:
    """Whether the response's answer matches the gold option `answer`."""
    idx = match_choice(extract_answer(response), choices)
    return idx is not None and normalize(choices[idx]) == normalize(answer)
