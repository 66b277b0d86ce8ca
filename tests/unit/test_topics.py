"""Topics and subscription patterns: the grammar, and matching checked against a reference."""

from __future__ import annotations

import itertools
import re
from typing import Any, cast

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tidings.domain.topics import (
    MAX_TOPIC_LENGTH,
    Pattern,
    compile_pattern,
    covers,
    overlaps,
    validate_pattern,
    validate_topic,
)
from tidings.errors import InvalidTopic, TidingsError

FAST = settings(max_examples=150, deadline=None, database=None)

TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"


# --- independent reference implementations -----------------------------------------------------


def reference_topic_ok(text: str) -> bool:
    if not 1 <= len(text) <= MAX_TOPIC_LENGTH:
        return False
    return all(token and all(c in TOKEN_CHARS for c in token) for token in text.split("."))


def reference_pattern_ok(text: str) -> bool:
    if not 1 <= len(text) <= MAX_TOPIC_LENGTH:
        return False
    tokens = text.split(".")
    for index, token in enumerate(tokens):
        if token == "*":
            continue
        if token == ">":
            if index != len(tokens) - 1:
                return False
            continue
        if not token or not all(c in TOKEN_CHARS for c in token):
            return False
    return True


def reference_matches(pattern: list[str], topic: list[str]) -> bool:
    """Token by token: '*' takes exactly one token, '>' one or more trailing tokens."""
    if not pattern:
        return not topic
    head, rest = pattern[0], pattern[1:]
    if head == ">":
        return len(topic) >= 1
    if not topic:
        return False
    if head == "*" or head == topic[0]:
        return reference_matches(rest, topic[1:])
    return False


# --- strategies ---------------------------------------------------------------------------------

tokens = st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=12)
valid_topics = st.lists(tokens, min_size=1, max_size=8).map(".".join).filter(lambda t: len(t) <= 255)

# A small alphabet so that random topics and patterns actually match often.
small_tokens = st.sampled_from(["a", "b", "c"])
small_topics = st.lists(small_tokens, min_size=1, max_size=4)
small_patterns = st.builds(
    lambda body, tail: body + ([">"] if tail else []),
    st.lists(st.sampled_from(["a", "b", "*"]), min_size=0, max_size=4),
    st.booleans(),
).filter(lambda tokens: len(tokens) >= 1)

# Text that is likely to hit every branch of the grammar.
grammar_chars = st.sampled_from(list("ab-_.*>Z9 \n\t/é$")) | st.characters()
grammar_text = st.one_of(
    st.text(alphabet=grammar_chars, max_size=20),
    valid_topics,
    small_patterns.map(".".join),
    st.lists(st.sampled_from(["a", "*", ">", "", "b c", "\n"]), min_size=1, max_size=4).map(".".join),
    st.sampled_from(["a" * 255, "a" * 256, "*" + ".*" * 127, "*" + ".*" * 128]),
)


# --- validate_topic -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        "a",
        "order",
        "order.placed",
        "Order.Placed-v2.x_y",
        "0.1.2",
        "-",
        "_",
        "a" * 255,
        ".".join(["ab"] * 85),
    ],
)
def test_valid_topics_are_returned_unchanged(topic: str) -> None:
    assert validate_topic(topic) is topic


@pytest.mark.parametrize(
    ("topic", "problem"),
    [
        ("", "non-empty string"),
        (".", "empty token"),
        ("order.", "empty token"),
        (".order", "empty token"),
        ("order..placed", "empty token"),
        ("order.*", "wildcard '*' is allowed in patterns, not in topics"),
        ("order.>", "wildcard '>' is allowed in patterns, not in topics"),
        ("*", "wildcard '*'"),
        (">", "wildcard '>'"),
        ("order placed", "may contain only letters, digits, '_' and '-'"),
        ("order/placed", "may contain only letters"),
        ("ordér", "may contain only letters"),
        ("order.pla*ced", "may contain only letters"),
        ("order.placed\n", "may contain only letters"),
        ("order\n.placed", "may contain only letters"),
        ("\n", "may contain only letters"),
        ("a" * 256, "longer than 255 characters"),
        ("a." * 128, "longer than 255 characters"),
    ],
)
def test_invalid_topics_raise_naming_the_problem(topic: str, problem: str) -> None:
    with pytest.raises(InvalidTopic, match=re.escape(problem)):
        validate_topic(topic)


def test_invalid_topic_names_the_offending_token() -> None:
    with pytest.raises(InvalidTopic) as caught:
        validate_topic("order.pl@ced.x")
    assert "'pl@ced'" in str(caught.value)
    assert isinstance(caught.value, TidingsError)


@pytest.mark.parametrize("value", [None, 7, b"order.placed", ["a"]])
def test_non_strings_are_invalid_topics(value: object) -> None:
    with pytest.raises(InvalidTopic, match="non-empty string"):
        validate_topic(cast(Any, value))
    with pytest.raises(InvalidTopic, match="non-empty string"):
        validate_pattern(cast(Any, value))


@FAST
@given(valid_topics)
def test_generated_valid_topics_are_accepted(topic: str) -> None:
    assert validate_topic(topic) == topic
    # Every valid topic is also a valid (literal) pattern that matches only itself.
    assert validate_pattern(topic) == topic
    pattern = Pattern(topic)
    assert pattern.matches(topic)
    assert pattern.prefix == topic


@FAST
@given(grammar_text)
def test_validate_topic_agrees_with_reference(text: str) -> None:
    expected = reference_topic_ok(text)
    event(f"valid={expected}")
    if expected:
        assert validate_topic(text) == text
    else:
        with pytest.raises(InvalidTopic) as caught:
            validate_topic(text)
        assert str(caught.value)


@FAST
@given(
    st.lists(tokens, min_size=1, max_size=5), st.integers(0, 4), st.sampled_from(["", "*", ">", "a b", "\n"])
)
def test_one_bad_token_makes_a_topic_invalid(good: list[str], where: int, bad: str) -> None:
    parts = list(good)
    parts.insert(min(where, len(parts)), bad)
    topic = ".".join(parts)
    with pytest.raises(InvalidTopic):
        validate_topic(topic)


@FAST
@given(valid_topics)
def test_trailing_newline_is_rejected(topic: str) -> None:
    # '$' in a regex would accept a final newline; the grammar must not.
    with pytest.raises(InvalidTopic):
        validate_topic(topic + "\n")
    with pytest.raises(InvalidTopic):
        validate_pattern(topic + "\n")


# --- validate_pattern ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    ["a", "*", ">", "a.*", "a.>", "*.b", "*.*", "a.*.c.>", "*.>", "order.placed", "x" * 255],
)
def test_valid_patterns_are_returned_unchanged(pattern: str) -> None:
    assert validate_pattern(pattern) is pattern


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("", "non-empty string"),
        ("a.>.b", "'>' may only be the last token"),
        (">.a", "'>' may only be the last token"),
        (">.>", "'>' may only be the last token"),
        ("a..b", "empty token"),
        ("a.", "empty token"),
        (".>", "empty token"),
        ("a.**", "token '**' may contain only"),
        ("a.b*", "token 'b*' may contain only"),
        ("a.>>", "token '>>' may contain only"),
        ("a.b>", "token 'b>' may contain only"),
        ("a.>\n", "may contain only"),
        ("a.*\n", "may contain only"),
        ("a b.*", "may contain only"),
        ("a" * 256, "longer than 255 characters"),
        ("*." * 127 + ">.", "longer than 255 characters"),
    ],
)
def test_invalid_patterns_raise_naming_the_problem(pattern: str, problem: str) -> None:
    with pytest.raises(InvalidTopic, match=re.escape(problem)):
        validate_pattern(pattern)
    with pytest.raises(InvalidTopic, match=re.escape(problem)):
        Pattern(pattern)


@FAST
@given(grammar_text)
def test_validate_pattern_agrees_with_reference(text: str) -> None:
    expected = reference_pattern_ok(text)
    event(f"valid={expected}")
    if expected:
        assert validate_pattern(text) == text
        assert compile_pattern(text) == Pattern(text)
    else:
        with pytest.raises(InvalidTopic):
            validate_pattern(text)
        with pytest.raises(InvalidTopic):
            compile_pattern(text)


# --- Pattern.matches and Pattern.prefix ---------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("a.b", "a.b", True),
        ("a.b", "a.b.c", False),
        ("a.b", "a", False),
        ("a.*", "a.b", True),
        ("a.*", "a", False),
        ("a.*", "a.b.c", False),
        ("*", "a", True),
        ("*", "a.b", False),
        (">", "a", True),
        (">", "a.b.c", True),
        ("a.>", "a", False),
        ("a.>", "a.b", True),
        ("a.>", "a.b.c", True),
        ("a.>", "b.c", False),
        ("*.b.>", "x.b.y.z", True),
        ("*.b.>", "x.c.y.z", False),
        ("a.*.c", "a.x.c", True),
        ("a.*.c", "a.x.d", False),
        ("ab", "a", False),
        ("a", "ab", False),
        ("a.>", "ab.c", False),
    ],
)
def test_matches_examples(pattern: str, topic: str, expected: bool) -> None:
    assert Pattern(pattern).matches(topic) is expected
    assert reference_matches(pattern.split("."), topic.split(".")) is expected


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [
        ("a.b", "a.b"),
        ("a.b.>", "a.b."),
        ("a.b.*", "a.b."),
        ("a.*.c", "a."),
        ("*.b", ""),
        ("*", ""),
        (">", ""),
        ("a.>", "a."),
    ],
)
def test_prefix_examples(pattern: str, prefix: str) -> None:
    assert Pattern(pattern).prefix == prefix


def test_exhaustive_small_alphabet_agrees_with_reference() -> None:
    topics = [list(t) for n in range(1, 4) for t in itertools.product("ab", repeat=n)]
    bodies = [list(p) for n in range(0, 4) for p in itertools.product(["a", "b", "*"], repeat=n)]
    patterns = [b for b in bodies if b] + [[*b, ">"] for b in bodies]
    matched = compared = 0
    for pattern_tokens in patterns:
        pattern = Pattern(".".join(pattern_tokens))
        for topic_tokens in topics:
            topic = ".".join(topic_tokens)
            expected = reference_matches(pattern_tokens, topic_tokens)
            assert pattern.matches(topic) is expected, (pattern, topic)
            if expected:
                assert topic.startswith(pattern.prefix), (pattern, topic)
                matched += 1
            compared += 1
    # The comparison means something only if a healthy share of pairs match.
    assert compared == len(patterns) * len(topics)
    assert matched >= 100
    assert matched / compared > 0.1


@FAST
@given(small_patterns, small_topics)
def test_matches_agrees_with_reference(pattern_tokens: list[str], topic_tokens: list[str]) -> None:
    pattern = Pattern(".".join(pattern_tokens))
    topic = ".".join(topic_tokens)
    expected = reference_matches(pattern_tokens, topic_tokens)
    event(f"matches={expected}")
    assert pattern.matches(topic) is expected
    assert compile_pattern(pattern.text).matches(topic) is expected
    if expected:
        assert topic.startswith(pattern.prefix)


@st.composite
def pattern_and_matching_topic(draw: st.DrawFn) -> tuple[str, str]:
    """A random pattern and a topic built from it so that it must match."""
    pattern_tokens = draw(st.lists(st.sampled_from(["a", "b", "c", "*", "long-token_9"]), max_size=5))
    tail = draw(st.booleans()) or not pattern_tokens
    topic_tokens = [draw(tokens) if token == "*" else token for token in pattern_tokens]
    if tail:
        pattern_tokens.append(">")
        topic_tokens.extend(draw(st.lists(tokens, min_size=1, max_size=3)))
    return ".".join(pattern_tokens), ".".join(topic_tokens)


@FAST
@given(pattern_and_matching_topic())
def test_topics_built_from_a_pattern_match_it_and_start_with_its_prefix(case: tuple[str, str]) -> None:
    text, topic = case
    pattern = Pattern(text)
    assert validate_topic(topic) == topic
    assert pattern.matches(topic)
    assert reference_matches(text.split("."), topic.split("."))
    assert topic.startswith(pattern.prefix)
    # The prefix is all of the literal text before the first wildcard.
    leading = list(itertools.takewhile(lambda t: t not in ("*", ">"), text.split(".")))
    if len(leading) == len(text.split(".")):
        assert pattern.prefix == text
    else:
        assert pattern.prefix == "".join(f"{t}." for t in leading)


@FAST
@given(pattern_and_matching_topic(), tokens)
def test_changing_a_literal_token_breaks_the_match(case: tuple[str, str], replacement: str) -> None:
    text, topic = case
    pattern_tokens = text.split(".")
    topic_tokens = topic.split(".")
    literal_positions = [i for i, t in enumerate(pattern_tokens) if t not in ("*", ">")]
    if not literal_positions:
        # Only wildcards: a topic one token shorter than the pattern needs must not match.
        needed = len(pattern_tokens)
        if needed > 1:
            assert not Pattern(text).matches(".".join(topic_tokens[: needed - 1]))
        return
    position = literal_positions[0]
    if replacement == topic_tokens[position]:
        replacement += "x"
    topic_tokens[position] = replacement
    assert not Pattern(text).matches(".".join(topic_tokens))


def test_pattern_equality_hash_and_repr() -> None:
    assert Pattern("a.*") == Pattern("a.*")
    assert Pattern("a.*") != Pattern("a.>")
    assert Pattern("a.*") != "a.*"
    assert hash(Pattern("a.>")) == hash(Pattern("a.>"))
    assert repr(Pattern("a.>")) == "Pattern('a.>')"
    assert compile_pattern("a.>") is compile_pattern("a.>")


# --- covers -------------------------------------------------------------------------------------


def reference_covers(allowed: list[str], requested: list[str]) -> bool:
    """By enumeration: every topic that ``requested`` matches, built from the literals of both
    patterns and a token that neither names (standing for any other token), with tails up to one
    token longer than ``allowed``, must match ``allowed``. These topics represent all others: a
    pattern cannot tell one unnamed token from another, nor tails longer than it looks at."""
    alphabet = sorted({t for t in allowed + requested if t not in ("*", ">")} | {"fresh"})
    longest = len(allowed) + 1

    def topics(tokens: list[str]) -> list[list[str]]:
        if not tokens:
            return [[]]
        head, rest = tokens[0], topics(tokens[1:])
        if head == ">":
            return [list(t) for n in range(1, longest + 1) for t in itertools.product(alphabet, repeat=n)]
        choices = alphabet if head == "*" else [head]
        return [[choice, *tail] for choice in choices for tail in rest]

    return all(reference_matches(allowed, topic) for topic in topics(requested))


@pytest.mark.parametrize(
    ("allowed", "requested", "expected"),
    [
        ("order.>", "order.>", True),
        ("order.>", "order.*", True),
        ("order.>", "order.eu.placed", True),
        ("order.>", "order.*.>", True),
        ("order.>", "order", False),
        ("order.>", ">", False),
        ("order.*", "order.placed", True),
        ("order.*", "order.*", True),
        ("order.*", "order.>", False),
        ("order.*", "order.eu.placed", False),
        ("order.placed", "order.placed", True),
        ("order.placed", "order.*", False),
        ("*.placed", "order.placed", True),
        ("*.placed", "*.*", False),
        ("*.*", "order.placed", True),
        (">", ">", True),
        (">", "a.*.>", True),
        ("*", ">", False),
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.*.d", False),
    ],
)
def test_covers_examples(allowed: str, requested: str, expected: bool) -> None:
    assert covers(allowed, requested) is expected
    assert reference_covers(allowed.split("."), requested.split(".")) is expected


def test_covers_rejects_bad_patterns() -> None:
    with pytest.raises(InvalidTopic):
        covers("order.>.x", "order.a.x")
    with pytest.raises(InvalidTopic):
        covers("order.>", "order..x")


def test_covers_exhaustive_small_alphabet_agrees_with_reference() -> None:
    bodies = [list(p) for n in range(0, 3) for p in itertools.product(["a", "b", "*"], repeat=n)]
    patterns = [b for b in bodies if b] + [[*b, ">"] for b in bodies]
    covered = 0
    for allowed in patterns:
        for requested in patterns:
            expected = reference_covers(allowed, requested)
            assert covers(".".join(allowed), ".".join(requested)) is expected, (allowed, requested)
            covered += expected
    # Both answers occur often enough for the comparison to mean something.
    assert 50 < covered < len(patterns) ** 2 - 50


@FAST
@given(small_patterns, small_patterns)
def test_covers_agrees_with_reference(allowed: list[str], requested: list[str]) -> None:
    expected = reference_covers(allowed, requested)
    event(f"covers={expected}")
    assert covers(".".join(allowed), ".".join(requested)) is expected


@FAST
@given(small_patterns, small_topics)
def test_a_pattern_covers_itself_and_its_topics(pattern: list[str], topic: list[str]) -> None:
    text = ".".join(pattern)
    assert covers(text, text)
    # A concrete topic is a pattern that matches only itself: covered exactly when matched.
    assert covers(text, ".".join(topic)) is Pattern(text).matches(".".join(topic))


# --- overlaps -----------------------------------------------------------------------------------


def reference_overlaps(first: list[str], second: list[str]) -> bool:
    """By enumeration: some topic built from both patterns' literals and one other token, up to
    one token longer than the longer pattern, matches both."""
    alphabet = sorted({t for t in first + second if t not in ("*", ">")} | {"fresh"})
    longest = max(len(first), len(second)) + 1
    candidates = (list(t) for n in range(1, longest + 1) for t in itertools.product(alphabet, repeat=n))
    return any(reference_matches(first, t) and reference_matches(second, t) for t in candidates)


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("order.*", "*.placed", True),
        ("order.*", "order.*.>", False),
        ("order.*", "order.>", True),
        ("order.card.>", "order.*.>", True),
        ("order.placed", "order.shipped", False),
        (">", "a.b.c", True),
        ("a.*", "a", False),
    ],
)
def test_overlaps_examples(first: str, second: str, expected: bool) -> None:
    assert overlaps(first, second) is expected
    assert overlaps(second, first) is expected


def test_overlaps_exhaustive_small_alphabet_agrees_with_reference() -> None:
    bodies = [list(p) for n in range(0, 3) for p in itertools.product(["a", "b", "*"], repeat=n)]
    patterns = [b for b in bodies if b] + [[*b, ">"] for b in bodies]
    found = 0
    for first in patterns:
        for second in patterns:
            expected = reference_overlaps(first, second)
            assert overlaps(".".join(first), ".".join(second)) is expected, (first, second)
            found += expected
    assert 50 < found < len(patterns) ** 2 - 50
