"""The payments service: charges orders (declining a configurable share) and refunds them.

The ledger of an order is a document of the order's key: its charge and its refund, each once.
"""

from __future__ import annotations

import msgspec

import tidings
from examples.shop import settings
from examples.shop.events import (
    ChargePayment,
    PaymentCharged,
    PaymentDeclined,
    PaymentRefunded,
    RefundPayment,
)

app = tidings.App("payments")
#: The collection of the documents this service keeps, one per order.
LEDGERS = "ledgers"


class Ledger(msgspec.Struct):
    """Per order: what was charged and refunded. A refund sent twice refunds once."""

    charged: int = 0
    refunded: int = 0


@app.subscribe("payment.charge", group="payments")
async def charge(command: ChargePayment, ctx: tidings.Context) -> None:
    async with ctx.unit_of_work() as uow:
        if settings.chance(command.order_id, "decline") < settings.DECLINE_RATE:
            uow.publish(
                PaymentDeclined(order_id=command.order_id, reason="card declined"), key=command.order_id
            )
            return
        ledger = await uow.get(LEDGERS, command.order_id, Ledger) or Ledger()
        uow.put(LEDGERS, command.order_id, Ledger(charged=command.amount, refunded=ledger.refunded))
        for _ in range(replies(command.order_id, "charge")):
            uow.publish(
                PaymentCharged(order_id=command.order_id, amount=command.amount), key=command.order_id
            )


@app.subscribe("payment.refund", group="refunds")
async def refund(command: RefundPayment, ctx: tidings.Context) -> None:
    async with ctx.unit_of_work() as uow:
        ledger = await uow.get(LEDGERS, command.order_id, Ledger) or Ledger()
        if not ledger.refunded:
            uow.put(LEDGERS, command.order_id, Ledger(charged=ledger.charged, refunded=command.amount))
        for _ in range(replies(command.order_id, "refund")):
            uow.publish(
                PaymentRefunded(order_id=command.order_id, amount=command.amount), key=command.order_id
            )


def replies(order_id: str, what: str) -> int:
    """Usually one reply; sometimes two (the saga must act on one)."""
    return 2 if settings.chance(order_id, f"twice:{what}") < settings.DUPLICATE_RATE else 1
