"""The payments service: charges orders (declining a configurable share) and refunds them."""

from __future__ import annotations

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


@app.subscribe("payment.charge", group="payments")
async def charge(command: ChargePayment, ctx: tidings.Context) -> None:
    async with ctx.unit_of_work() as uow:
        if settings.chance(command.order_id, "decline") < settings.DECLINE_RATE:
            uow.publish(
                PaymentDeclined(order_id=command.order_id, reason="card declined"), key=command.order_id
            )
        else:
            uow.publish(
                PaymentCharged(order_id=command.order_id, amount=command.amount), key=command.order_id
            )


@app.subscribe("payment.refund", group="refunds")
async def refund(command: RefundPayment, ctx: tidings.Context) -> None:
    async with ctx.unit_of_work() as uow:
        uow.publish(PaymentRefunded(order_id=command.order_id, amount=command.amount), key=command.order_id)
