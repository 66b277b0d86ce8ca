"""The shipping service: schedules shipments; some fail, and now and then it stalls, so that the
shipping commands queued behind the stall outlive their deadline and are dead-lettered. A
shipment scheduled after its step was given up is cancelled (the saga's compensation); what is
scheduled is a document of the order's key, so a cancel sent twice cancels once."""

from __future__ import annotations

import asyncio

import msgspec

import tidings
from examples.shop import settings
from examples.shop.events import (
    CancelShipment,
    ScheduleShipment,
    ShipmentCancelled,
    ShipmentFailed,
    ShipmentScheduled,
)

app = tidings.App("shipping")
#: The collection of the documents this service keeps, one per order.
SHIPMENTS = "shipments"


class Shipment(msgspec.Struct):
    sku: str
    quantity: int
    cancelled: bool = False


def twice(order_id: str) -> int:
    return 2 if settings.chance(order_id, "twice:ship") < settings.DUPLICATE_RATE else 1


@app.subscribe("shipping.schedule", group="shipping")
async def schedule(command: ScheduleShipment, ctx: tidings.Context) -> None:
    if ctx.attempt == 1 and settings.chance(command.order_id, "stall") < settings.SHIPPING_STALL_RATE:
        await asyncio.sleep(settings.SHIPPING_STALL_SECONDS)
    order = command.order_id
    async with ctx.unit_of_work() as uow:
        if settings.chance(order, "fail") < settings.SHIPPING_FAILURE_RATE:
            reply: tidings.Event = ShipmentFailed(order_id=order, reason="no courier")
        else:
            if await uow.get(SHIPMENTS, order, Shipment) is None:
                uow.put(SHIPMENTS, order, Shipment(command.sku, command.quantity))
            reply = ShipmentScheduled(order_id=order, sku=command.sku, quantity=command.quantity)
        for _ in range(twice(order)):
            uow.publish(reply, key=order)


@app.subscribe("shipping.cancel", group="shipping-cancel")
async def cancel(command: CancelShipment, ctx: tidings.Context) -> None:
    order = command.order_id
    async with ctx.unit_of_work() as uow:
        shipment = await uow.get(SHIPMENTS, order, Shipment)
        if shipment is not None and not shipment.cancelled:
            uow.put(SHIPMENTS, order, Shipment(shipment.sku, shipment.quantity, cancelled=True))
        uow.publish(ShipmentCancelled(order_id=order), key=order)
