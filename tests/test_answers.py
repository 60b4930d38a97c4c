import pytest

from echo_lite.answers import extract_answer, is_correct, match_choice, normalize

CHOICES = ["C5 tone", "high C5 tone", "rising chirp", "3 knocks"]


def test_extract_the_last_answer():
    assert extract_answer("<think>x</think><answer> rising chirp </answer>") == "rising chirp"
    assert extract_answer("<answer>a</answer> then <answer>b</answer>") == "b"
    assert extract_answer("<think>no answer</think>") is None
    assert extract_answer("") is None


@pytest.mark.parametrize("answer,expected", [
    ("rising chirp", 2), ("Rising chirp.", 2), ("  3 KNOCKS ", 3),
    ("C5 tone", 0), ("high C5 tone", 1),  # exact beats containment
    ("It is the high C5 tone", 1),  # contained options that nest: the longest wins
    ("B", 1), ("(C)", 2), ("D.", 3),
    ("a falling chirp", None), ("", None), (None, None),
    ("rising chirp or 3 knocks", None),  # ambiguous: no fallback
    ("E", None),  # a letter past the options
])
def test_match_choice(answer, expected):
    assert match_choice(answer, CHOICES) == expected


def test_no_fallback_to_the_first_option():
    assert not is_correct("<answer>something else</answer>", CHOICES, "C5 tone")
    assert is_correct("<answer>c5 tone</answer>", CHOICES, "C5 tone")
    assert normalize("The C5 tone!") == "the c5 tone"
