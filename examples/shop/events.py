"""The events the shop's services exchange: commands (imperative topics) and their replies."""

from __future__ import annotations

import tidings


class OrderPlaced(tidings.Event, topic="order.placed", type="shop.OrderPlaced"):
    order_id: str
    customer: str
    sku: str
    quantity: int
    amount: int  # cents


# -- inventory --------------------------------------------------------------------------------


class ReserveStock(tidings.Event, topic="inventory.reserve", type="shop.ReserveStock"):
    order_id: str
    sku: str
    quantity: int


class StockReserved(tidings.Event, topic="inventory.reserved", type="shop.StockReserved"):
    order_id: str
    sku: str
    quantity: int


class StockRejected(tidings.Event, topic="inventory.rejected", type="shop.StockRejected"):
    order_id: str
    sku: str
    reason: str


class ReleaseStock(tidings.Event, topic="inventory.release", type="shop.ReleaseStock"):
    order_id: str
    sku: str
    quantity: int


class StockReleased(tidings.Event, topic="inventory.released", type="shop.StockReleased"):
    order_id: str
    sku: str
    quantity: int


class StockChanged(tidings.Event, topic="inventory.stock.changed", type="shop.StockChanged"):
    """An event of the ``Stock`` aggregate: received, reserved (negative) or released."""

    sku: str
    change: int
    why: str
    order_id: str = ""


# -- payments ---------------------------------------------------------------------------------


class ChargePayment(tidings.Event, topic="payment.charge", type="shop.ChargePayment"):
    order_id: str
    amount: int


class PaymentCharged(tidings.Event, topic="payment.charged", type="shop.PaymentCharged"):
    order_id: str
    amount: int


class PaymentDeclined(tidings.Event, topic="payment.declined", type="shop.PaymentDeclined"):
    order_id: str
    reason: str


class RefundPayment(tidings.Event, topic="payment.refund", type="shop.RefundPayment"):
    order_id: str
    amount: int


class PaymentRefunded(tidings.Event, topic="payment.refunded", type="shop.PaymentRefunded"):
    order_id: str
    amount: int


# -- shipping ---------------------------------------------------------------------------------


class ScheduleShipment(tidings.Event, topic="shipping.schedule", type="shop.ScheduleShipment"):
    order_id: str
    sku: str
    quantity: int


class ShipmentScheduled(tidings.Event, topic="shipping.scheduled", type="shop.ShipmentScheduled"):
    order_id: str
    sku: str
    quantity: int


class ShipmentFailed(tidings.Event, topic="shipping.failed", type="shop.ShipmentFailed"):
    order_id: str
    reason: str


class CancelShipment(tidings.Event, topic="shipping.cancel", type="shop.CancelShipment"):
    order_id: str


class ShipmentCancelled(tidings.Event, topic="shipping.cancelled", type="shop.ShipmentCancelled"):
    order_id: str
