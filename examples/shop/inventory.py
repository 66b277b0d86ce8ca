"""The inventory service: finite stock per SKU, reserved and released for orders.

Stock is an event-sourced aggregate per SKU: two orders of one SKU handled at once by different
partitions cannot both take its last unit (the second save fails its concurrency check, and its
handler runs again on the new level). What an order holds is a document of the order's key
(always handled in the order's partition), so that a release sent twice releases once.
"""

from __future__ import annotations

import msgspec

import tidings
from examples.shop.events import (
    ReleaseStock,
    ReserveStock,
    StockChanged,
    StockRejected,
    StockReleased,
    StockReserved,
)
from tidings.runtime.unit_of_work import UnitOfWork


class Stock(tidings.Aggregate, category="stock"):
    level: int = 0

    def receive(self, quantity: int) -> None:
        self.record(StockChanged(sku=self.id, change=quantity, why="received"))

    def reserve(self, order_id: str, quantity: int) -> bool:
        if quantity > self.level:
            return False
        self.record(StockChanged(sku=self.id, change=-quantity, why="reserved", order_id=order_id))
        return True

    def release(self, order_id: str, quantity: int) -> None:
        self.record(StockChanged(sku=self.id, change=quantity, why="released", order_id=order_id))

    def apply(self, event: tidings.Event) -> None:
        if isinstance(event, StockChanged):
            self.level += event.change


app = tidings.App("inventory")
#: The collection of the documents this service keeps, one per order.
RESERVATIONS = "reservations"


async def stock_of(uow: UnitOfWork, sku: str) -> Stock:
    try:
        return await uow.load(Stock, sku)
    except tidings.AggregateNotFound:
        return Stock(sku)


class Reservation(msgspec.Struct):
    """Per order: what it holds. Compensations may come more than once; a release acts once."""

    sku: str
    quantity: int
    released: bool = False


@app.subscribe("inventory.reserve", group="inventory", retry=tidings.Retry(attempts=20, backoff=0.01))
async def reserve(command: ReserveStock, ctx: tidings.Context) -> None:
    async with ctx.unit_of_work() as uow:
        stock = await stock_of(uow, command.sku)
        if stock.reserve(command.order_id, command.quantity):
            uow.save(stock)
            uow.put(RESERVATIONS, command.order_id, Reservation(command.sku, command.quantity))
            reply: tidings.Event = StockReserved(
                order_id=command.order_id, sku=command.sku, quantity=command.quantity
            )
        else:
            reason = f"only {stock.level} left"
            reply = StockRejected(order_id=command.order_id, sku=command.sku, reason=reason)
        uow.publish(reply, key=command.order_id)


@app.subscribe("inventory.release", group="inventory-release", retry=tidings.Retry(attempts=20, backoff=0.01))
async def release(command: ReleaseStock, ctx: tidings.Context) -> None:
    async with ctx.unit_of_work() as uow:
        held = await uow.get(RESERVATIONS, command.order_id, Reservation)
        if held is not None and not held.released:
            stock = await stock_of(uow, held.sku)
            stock.release(command.order_id, held.quantity)
            uow.save(stock)
            uow.put(RESERVATIONS, command.order_id, Reservation(held.sku, held.quantity, released=True))
        uow.publish(
            StockReleased(order_id=command.order_id, sku=command.sku, quantity=command.quantity),
            key=command.order_id,
        )
