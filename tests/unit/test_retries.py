"""Retry: which errors are tried again, and what a budget accepts."""

from __future__ import annotations

import pytest

import tidings
from tidings.runtime.retries import Retry


class OutOfStock(Exception):
    pass


class NoSuchSku(OutOfStock):
    pass


def test_named_errors_and_their_subclasses_are_not_retried() -> None:
    retry = Retry(dead_letter_on=(OutOfStock,))
    assert not retry.is_transient(OutOfStock())
    assert not retry.is_transient(NoSuchSku())
    assert retry.is_transient(RuntimeError("downstream is down"))


@pytest.mark.parametrize(
    "error",
    [
        tidings.AccessDenied("billing", "publish", "order.placed"),
        tidings.InvalidArgument("a stream name may not be empty"),
        tidings.InvalidTopic("bad topic"),
        tidings.PayloadTooLarge("2 MiB"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_that_would_only_repeat_are_never_retried(error: Exception) -> None:
    assert not Retry().is_transient(error)


@pytest.mark.parametrize(
    "error",
    [tidings.AggregateNotFound("Invoice '42'"), tidings.ConcurrencyError("invoice-42", 0, 1)],
    ids=lambda e: type(e).__name__,
)
def test_errors_that_another_attempt_may_pass_are_retried(error: Exception) -> None:
    # Another group's handler may create the aggregate, or move the stream on, meanwhile.
    assert Retry().is_transient(error)


@pytest.mark.parametrize("given", [ValueError, (ValueError, "KeyError"), (KeyboardInterrupt,), [ValueError]])
def test_dead_letter_on_takes_a_tuple_of_exception_classes(given: object) -> None:
    with pytest.raises(tidings.ConfigurationError, match="dead_letter_on"):
        Retry(dead_letter_on=given)  # type: ignore[arg-type]
