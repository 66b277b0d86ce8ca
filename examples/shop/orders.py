"""The orders service: runs the fulfilment saga of every order placed.

reserve the stock -> charge the payment -> schedule the shipment; a refusal, a failure or a step
that times out undoes the finished steps in reverse order (refund, then release).
"""

from __future__ import annotations

from datetime import timedelta

import tidings
from examples.shop import settings
from examples.shop.events import (
    CancelShipment,
    ChargePayment,
    OrderPlaced,
    PaymentCharged,
    PaymentDeclined,
    PaymentRefunded,
    RefundPayment,
    ReleaseStock,
    ReserveStock,
    ScheduleShipment,
    ShipmentCancelled,
    ShipmentFailed,
    ShipmentScheduled,
    StockRejected,
    StockReleased,
    StockReserved,
)


def order(s: tidings.SagaData) -> OrderPlaced:
    placed: OrderPlaced = s.start
    return placed


timeout = timedelta(seconds=settings.STEP_TIMEOUT_SECONDS)
fulfilment = tidings.Saga("fulfilment", starts_on=OrderPlaced, key=lambda e: e.order_id)
fulfilment.step(
    "reserve",
    send=lambda s: ReserveStock(order_id=s.key, sku=order(s).sku, quantity=order(s).quantity),
    success=StockReserved,
    failure=StockRejected,
    compensate=lambda s: ReleaseStock(order_id=s.key, sku=order(s).sku, quantity=order(s).quantity),
    compensated=StockReleased,
    timeout=timeout,
)
fulfilment.step(
    "charge",
    send=lambda s: ChargePayment(order_id=s.key, amount=order(s).amount),
    success=PaymentCharged,
    failure=PaymentDeclined,
    compensate=lambda s: RefundPayment(order_id=s.key, amount=s.replies["charge"].amount),
    compensated=PaymentRefunded,
    timeout=timeout,
)
fulfilment.step(
    "ship",
    send=lambda s: ScheduleShipment(order_id=s.key, sku=order(s).sku, quantity=order(s).quantity),
    success=ShipmentScheduled,
    failure=ShipmentFailed,
    compensate=lambda s: CancelShipment(order_id=s.key),  # for a shipment scheduled too late
    compensated=ShipmentCancelled,
    timeout=timeout,
    deadline=timedelta(seconds=settings.SHIPPING_DEADLINE_SECONDS),
)

app = tidings.App("orders")
app.add_saga(fulfilment)
