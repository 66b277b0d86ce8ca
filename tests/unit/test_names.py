"""The name rule (stream names, keys, scopes) and the namespaces of scopes: pure logic."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.domain.names import MAX_NAME, check_name, check_stream_name, subject_of
from tidings.errors import InvalidArgument, InvalidTopic
from tidings.runtime.keyring import named_scope, scope_label, stored_scope, topic_scope

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=8)
TOPICS = st.lists(TOKEN, min_size=1, max_size=4).map(".".join)
# Names as people write them, with tidings' own prefix and its look-alikes mixed in.
NAMES = st.one_of(
    st.text(min_size=1, max_size=40),
    st.builds(
        lambda prefix, rest: prefix + rest, st.sampled_from(["topic:", "topic", "Topic:", ":"]), st.text()
    ),
    TOPICS.map(lambda t: f"topic:{t}"),
)


def _valid(name: str) -> bool:
    return 1 <= len(name) <= MAX_NAME and all(unicodedata.category(c) not in ("Cc", "Cs") for c in name)


@given(NAMES)
def test_a_name_passes_exactly_when_it_has_no_control_character_nor_surrogate(name: str) -> None:
    if _valid(name):
        assert check_name("key", name) == name
    else:
        with pytest.raises(InvalidArgument, match="key"):
            check_name("key", name)


@given(st.one_of(NAMES, st.text(alphabet=st.characters(max_codepoint=0xA0), min_size=1)))
def test_a_stream_name_may_hold_del_and_c1_controls(name: str) -> None:
    """Stores held such stream names before the rule: they stay readable and appendable."""
    if _valid(name.translate(dict.fromkeys(range(0x7F, 0xA0), "x"))):
        assert check_stream_name(name) == name
    else:
        with pytest.raises(InvalidArgument, match="stream name"):
            check_stream_name(name)


def test_the_subject_of_a_stream_escapes_its_controls() -> None:
    assert subject_of("order-42") == "order-42"
    assert subject_of("c1-\x85\x7f") == "c1-\\x85\\x7f"


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("", "must be 1 to 512 characters, got 0"),
        ("x" * 513, "must be 1 to 512 characters, got 513"),
        ("a\x00b", r"contains a control character \('\\x00' at 1\)"),
        ("a\x7f", "control character"),
        ("a\x85", "control character"),
        ("lone-\ud800", r"lone surrogate \('\\ud800' at 5\), which is not valid UTF-8"),
    ],
)
def test_what_is_wrong_with_a_name_is_said(name: str, says: str) -> None:
    with pytest.raises(InvalidArgument, match=says):
        check_name("key", name)


def test_names_in_any_script_pass() -> None:
    for name in ("order-42", "Bestellung ä", "注文-1", "tab\u00a0space", "emoji-🎉"):
        assert check_name("key", name) == name


@given(NAMES, TOPICS)
def test_no_stream_or_scope_of_an_application_shares_a_topics_scope(name: str, topic: str) -> None:
    if _valid(name):
        assert named_scope(name) != topic_scope(topic)


@given(NAMES, NAMES)
def test_stored_scopes_of_different_names_differ(first: str, second: str) -> None:
    if _valid(first) and _valid(second) and first != second:
        assert named_scope(first) != named_scope(second)


@given(NAMES)
def test_a_scope_keeps_its_old_stored_name_unless_it_looks_like_a_topics(name: str) -> None:
    """Keys stored before scopes had namespaces go on sealing every stream but the look-alikes."""
    if _valid(name):
        assert (named_scope(name) == name) == (not name.startswith("topic:"))
        assert scope_label(named_scope(name)) in (name, f"{name} (stream)")


def test_a_person_names_a_scope_or_a_topic() -> None:
    assert stored_scope("order-1") == "order-1"
    assert stored_scope(topic="order.placed") == "topic:order.placed"
    assert stored_scope("topic:order.placed") != stored_scope(topic="order.placed")
    with pytest.raises(InvalidArgument, match="not both"):
        stored_scope()
    with pytest.raises(InvalidArgument, match="not both"):
        stored_scope("a", "b.c")
    with pytest.raises(InvalidTopic):
        stored_scope(topic="no spaces please")
