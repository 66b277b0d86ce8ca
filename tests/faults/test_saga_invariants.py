"""The shop's four services as worker processes, 1,000 orders with declines, failed and stalled
shipments and duplicate replies and orders, while services (the saga runner most of all) are
SIGKILLed and restarted at random moments. Whatever happened: every order ends completed or
compensated, stock is never negative, reserved - released = shipped, and every charge of a
cancelled order is refunded exactly once."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from examples.shop.demo import start_service
from examples.shop.demo_contents import SERVICES
from examples.shop.events import OrderPlaced
from examples.shop.inventory import Stock
from examples.shop.summary import SKUS, report

from tidings.app import App

ROOT = Path(__file__).resolve().parents[2]
ORDERS = int(os.environ.get("TIDINGS_SAGA_ORDERS", "1000"))
KILLS = int(os.environ.get("TIDINGS_SAGA_KILLS", "12"))
WORLD = {
    "SHOP_DECLINE_RATE": "0.2",
    "SHOP_SHIPPING_FAILURE_RATE": "0.1",
    "SHOP_SHIPPING_STALL_RATE": "0.01",
    "SHOP_DUPLICATE_RATE": "0.1",
    "SHOP_STEP_TIMEOUT_SECONDS": "4",
}


def _start(service: str, store_url: str, logs: Path) -> subprocess.Popen[bytes]:
    return start_service(service, {**os.environ, **WORLD, "TIDINGS_STORE": store_url}, logs, lease_ttl=2.0)


async def _ended(app: App) -> int:
    return len([s async for s in app.read_log(pattern="tidings.saga.ended")])


@pytest.mark.parametrize("backend", ["sqlite", "nats"])
@pytest.mark.timeout(500)
async def test_every_order_ends_completed_or_compensated_through_kills(
    store_url: str, tmp_path: Path
) -> None:
    rng = random.Random(20261127)
    app = App("driver", store=store_url)
    workers = {service: _start(service, store_url, tmp_path) for service in SERVICES}
    kills = 0
    try:
        async with app:
            for sku, quantity in SKUS.items():
                stock = Stock(sku)
                stock.receive(quantity * 4)
                await app.save(stock)
            placed = []
            for n in range(ORDERS):
                order = OrderPlaced(
                    order_id=f"order-{n:04d}",
                    customer=f"c{rng.randrange(40)}",
                    sku=rng.choice(list(SKUS)),
                    quantity=rng.choice((1, 2, 3)),
                    amount=rng.randrange(100, 5000),
                )
                placed.append(await app.publish(order, key=order.order_id))
                if n % 25 == 0:
                    await app.publish(order, key=order.order_id)  # the same order placed twice
                if n and n % (ORDERS // KILLS) == 0:
                    victim = rng.choice(("orders", "orders", *SERVICES))
                    workers[victim].send_signal(signal.SIGKILL)
                    workers[victim].wait()
                    workers[victim] = _start(victim, store_url, tmp_path)
                    kills += 1
                await asyncio.sleep(0.002)
            deadline = time.monotonic() + 240
            while (done := await _ended(app)) < ORDERS:
                assert time.monotonic() < deadline, f"only {done} of {ORDERS} sagas ended"
                await asyncio.sleep(1.0)
            # Every saga has ended; compensations of late successes may still be on their way
            # (a reply that came after its step timed out has the step undone after the end).
            # On a loaded machine most steps time out, and hundreds of them may be in flight.
            settle_by = time.monotonic() + 150
            found = await report(app, placed)
            while not all(holds for _, holds in found.checks()) and time.monotonic() < settle_by:
                await asyncio.sleep(2.0)
                found = await report(app, placed)
    finally:
        for worker in workers.values():
            worker.send_signal(signal.SIGTERM)
        for worker in workers.values():
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
    assert kills >= KILLS - 1
    assert sum(found.states.values()) == ORDERS
    failed = [check for check, holds in found.checks() if not holds]
    assert not failed, (
        f"{failed}; states {dict(found.states)}; units {dict(found.units)}, shipped "
        f"{sum(found.shipped.values())}; dead letters {dict(found.letters)}"
    )
    assert found.states["completed"] and found.states["compensated"], (
        f"states {dict(found.states)}; units {dict(found.units)}; dead letters {dict(found.letters)}"
    )
