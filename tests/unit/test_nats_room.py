"""The cheap bound of a NATS message's headers that spares ``room_for`` building them for data far
from the limit: it must never be less than the headers the relay writes."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.adapters.nats.bus import _WIDEST, _message_of
from tidings.adapters.nats.publish import headers_bound, message_size
from tidings.domain.envelope import Envelope, RecordedEvent

MANY = settings(max_examples=300, deadline=None, database=None)
# Any text a header may carry (percent-encoded): no lone surrogates, which no message can hold.
TEXT = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40)
MAYBE = st.none() | TEXT
TIMES = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC))
envelopes = st.builds(
    Envelope,
    id=TEXT,
    source=TEXT,
    type=TEXT,
    topic=TEXT,
    time=TIMES,
    data=st.just(b""),
    subject=MAYBE,
    datacontenttype=TEXT,
    dataschema=MAYBE,
    schemaversion=st.integers(0, 2**63 - 1),
    correlationid=MAYBE,
    causationid=MAYBE,
    traceparent=MAYBE,
    tracestate=MAYBE,
    expirytime=st.none() | TIMES,
    partitionkey=MAYBE,
)


@MANY
@given(envelopes, TEXT)
def test_the_bound_is_never_less_than_the_headers(envelope: Envelope, stream: str) -> None:
    headers, _ = _message_of(RecordedEvent(envelope, stream, _WIDEST, _WIDEST))
    bound = headers_bound(stream, envelope)
    assert bound is not None
    assert bound >= message_size(headers, b"")


def test_extensions_are_measured_exactly() -> None:
    envelope = Envelope("e", "s", "t", "a.b", datetime.now(UTC), b"", extensions={"tenant": "x"})
    assert headers_bound("stream", envelope) is None
