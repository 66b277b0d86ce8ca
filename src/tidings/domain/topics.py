"""Topics and subscription patterns.

A topic is dot-separated tokens, domain first (``order.placed``). A pattern may also use ``*``
for exactly one token and ``>`` for one or more trailing tokens: the grammar of NATS subjects, so
that a pattern maps one-to-one onto a subject filter of the distributed bus.
"""

from __future__ import annotations

import re
from functools import lru_cache

from tidings.errors import InvalidTopic

MAX_TOPIC_LENGTH = 255

# Letters, digits, '_' and '-' only: everything NATS accepts in a subject token that is also safe
# to show in a URL, a file name or a log line without quoting.
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
TOPIC_REGEX = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\Z"  # \Z: '$' would let a final newline in
_TOPIC = re.compile(TOPIC_REGEX)


def validate_topic(topic: str) -> str:
    """Return ``topic`` unchanged if it is a valid concrete topic, else raise ``InvalidTopic``."""
    _check_length(topic)
    if _TOPIC.match(topic):
        return topic
    for token in topic.split("."):
        if not _TOKEN.fullmatch(token):
            raise InvalidTopic(_describe(topic, token, wildcards=False))
    raise InvalidTopic(f"{topic!r} is not a valid topic")


def validate_pattern(pattern: str) -> str:
    """Return ``pattern`` unchanged if it is a valid subscription pattern, else raise."""
    _check_length(pattern)
    tokens = pattern.split(".")
    for index, token in enumerate(tokens):
        if token == "*":
            continue
        if token == ">":
            if index != len(tokens) - 1:
                raise InvalidTopic(f"pattern {pattern!r}: '>' may only be the last token")
            continue
        if not _TOKEN.fullmatch(token):
            raise InvalidTopic(_describe(pattern, token, wildcards=True))
    return pattern


class Pattern:
    """A compiled subscription pattern that answers whether a topic matches it."""

    __slots__ = ("_literal", "_tail", "_tokens", "text")

    def __init__(self, text: str) -> None:
        validate_pattern(text)
        self.text = text
        tokens = text.split(".")
        self._tail = tokens[-1] == ">"
        self._tokens = tuple(tokens[:-1] if self._tail else tokens)
        self._literal = "*" not in tokens and not self._tail

    @property
    def prefix(self) -> str:
        """The literal text every matching topic starts with (for a coarse filter in SQL)."""
        literal: list[str] = []
        for token in self._tokens:
            if token == "*":
                break
            literal.append(token)
        else:
            if self._literal:
                return self.text
        return ".".join(literal) + ("." if literal else "")

    def matches(self, topic: str) -> bool:
        if self._literal:
            return topic == self.text
        tokens = topic.split(".")
        if self._tail:
            if len(tokens) <= len(self._tokens):
                return False
        elif len(tokens) != len(self._tokens):
            return False
        return all(p == "*" or p == t for p, t in zip(self._tokens, tokens, strict=False))

    def __repr__(self) -> str:
        return f"Pattern({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pattern) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


@lru_cache(maxsize=1024)
def compile_pattern(text: str) -> Pattern:
    """Compile (and cache) a pattern; raises ``InvalidTopic`` for a bad one."""
    return Pattern(text)


def covers(allowed: str, requested: str) -> bool:
    """Whether every topic that pattern ``requested`` matches also matches pattern ``allowed``:
    a subscription to ``requested`` stays within what ``allowed`` permits (``order.>`` covers
    ``order.*`` and ``order.eu.placed``; ``order.*`` does not cover ``order.>``).

    Token by token: ``>`` in ``allowed`` takes whatever tail ``requested`` has left (one token
    or more, wildcards included); ``*`` takes any one token but not ``>``; a literal only itself.
    """
    granted = compile_pattern(allowed).text.split(".")
    wanted = compile_pattern(requested).text.split(".")
    for index, token in enumerate(granted):
        if token == ">":
            return len(wanted) > index
        if index >= len(wanted) or wanted[index] == ">":
            return False  # ``requested`` is shorter, or its tail is longer than ``allowed`` takes
        if token != "*" and token != wanted[index]:
            return False  # a literal covers only itself (not ``*``, which takes any token)
    return len(wanted) == len(granted)


def overlaps(first: str, second: str) -> bool:
    """Whether some topic matches both patterns (``order.*`` and ``*.placed`` overlap;
    ``order.*`` and ``order.*.>`` do not)."""
    a = compile_pattern(first).text.split(".")
    b = compile_pattern(second).text.split(".")
    for index in range(max(len(a), len(b))):
        x = a[index] if index < len(a) else None
        y = b[index] if index < len(b) else None
        if x == ">" or y == ">":
            return x is not None and y is not None  # a tail takes whatever the other has left
        if x is None or y is None:
            return False  # of different lengths, without a tail
        if x != y and "*" not in (x, y):
            return False
    return True


def _check_length(text: str) -> None:
    if not isinstance(text, str) or not text:
        raise InvalidTopic(f"a topic must be a non-empty string, got {text!r}")
    if len(text) > MAX_TOPIC_LENGTH:
        raise InvalidTopic(f"topic {text[:40]!r}... is longer than {MAX_TOPIC_LENGTH} characters")


def _describe(text: str, token: str, *, wildcards: bool) -> str:
    if token == "":
        return f"{text!r}: empty token (leading, trailing or doubled '.')"
    if not wildcards and token in ("*", ">"):
        return f"{text!r}: wildcard {token!r} is allowed in patterns, not in topics"
    return f"{text!r}: token {token!r} may contain only letters, digits, '_' and '-'"


class AnyOf:
    """Matches a topic that any of its patterns matches: a group that listens to several topics
    (a saga: its start, its replies, its timeouts)."""

    __slots__ = ("patterns", "text")

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = tuple(Pattern(text) for text in patterns)
        self.text = " | ".join(sorted(pattern.text for pattern in self.patterns))

    def matches(self, topic: str) -> bool:
        return any(pattern.matches(topic) for pattern in self.patterns)
