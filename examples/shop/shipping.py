"""The shipping service: schedules shipments; some fail, and now and then it stalls, so that the
shipping commands queued behind the stall outlive their deadline and are dead-lettered."""

from __future__ import annotations

import asyncio

import tidings
from examples.shop import settings
from examples.shop.events import ScheduleShipment, ShipmentFailed, ShipmentScheduled

app = tidings.App("shipping")


@app.subscribe("shipping.schedule", group="shipping")
async def schedule(command: ScheduleShipment, ctx: tidings.Context) -> None:
    if ctx.attempt == 1 and settings.chance(command.order_id, "stall") < settings.SHIPPING_STALL_RATE:
        await asyncio.sleep(settings.SHIPPING_STALL_SECONDS)
    async with ctx.unit_of_work() as uow:
        if settings.chance(command.order_id, "fail") < settings.SHIPPING_FAILURE_RATE:
            reply: tidings.Event = ShipmentFailed(order_id=command.order_id, reason="no courier")
        else:
            reply = ShipmentScheduled(order_id=command.order_id, sku=command.sku, quantity=command.quantity)
        for _ in range(2 if settings.chance(command.order_id, "twice:ship") < settings.DUPLICATE_RATE else 1):
            uow.publish(reply, key=command.order_id)
