"""How the demo's world behaves, from the environment (each service process reads it)."""

from __future__ import annotations

import os
import random

#: Share of orders whose payment is declined.
DECLINE_RATE = float(os.environ.get("SHOP_DECLINE_RATE", "0.15"))
#: Share of shipments that fail.
SHIPPING_FAILURE_RATE = float(os.environ.get("SHOP_SHIPPING_FAILURE_RATE", "0.05"))
#: Share of shipments that make the shipping service stall (commands queued behind expire).
SHIPPING_STALL_RATE = float(os.environ.get("SHOP_SHIPPING_STALL_RATE", "0.02"))
SHIPPING_STALL_SECONDS = float(os.environ.get("SHOP_SHIPPING_STALL_SECONDS", "1.5"))
#: A shipping command older than this is dead-lettered unhandled (and its step times out).
SHIPPING_DEADLINE_SECONDS = float(os.environ.get("SHOP_SHIPPING_DEADLINE_SECONDS", "1.0"))
#: Share of replies that payments and shipping send twice (as a retrying producer might).
DUPLICATE_RATE = float(os.environ.get("SHOP_DUPLICATE_RATE", "0"))
STEP_TIMEOUT_SECONDS = float(os.environ.get("SHOP_STEP_TIMEOUT_SECONDS", "3.0"))


def chance(order_id: str, what: str) -> float:
    """The same number for the same order and question in every process and run."""
    return random.Random(f"{order_id}:{what}").random()
