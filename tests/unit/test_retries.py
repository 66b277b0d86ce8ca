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


class FlakyStore(tidings.BackendUnavailable):
    pass


@pytest.mark.parametrize("wide", [Exception, tidings.TidingsError, tidings.BackendUnavailable])
@pytest.mark.parametrize(
    "error",
    [
        tidings.BackendUnavailable("sqlite:///shop.db is locked"),
        FlakyStore("postgresql://app@db/shop refused the connection"),
        tidings.ConcurrencyError("invoice-42", 0, 1),
    ],
    ids=lambda e: type(e).__name__,
)
def test_passing_faults_are_retried_whatever_dead_letter_on_says(
    wide: type[Exception], error: Exception
) -> None:
    # A dead_letter_on of Exception would otherwise dead-letter at the first blip of the store.
    retry = Retry(dead_letter_on=(wide,))
    assert retry.is_transient(error)


def test_a_wide_dead_letter_on_still_dead_letters_the_rest() -> None:
    assert not Retry(dead_letter_on=(Exception,)).is_transient(OutOfStock())
    missing = tidings.AggregateNotFound("Invoice '42'")
    assert not Retry(dead_letter_on=(tidings.TidingsError,)).is_transient(missing)


@pytest.mark.parametrize("given", [ValueError, (ValueError, "KeyError"), (KeyboardInterrupt,), [ValueError]])
def test_dead_letter_on_takes_a_tuple_of_exception_classes(given: object) -> None:
    with pytest.raises(tidings.ConfigurationError, match="dead_letter_on"):
        Retry(dead_letter_on=given)  # type: ignore[arg-type]
