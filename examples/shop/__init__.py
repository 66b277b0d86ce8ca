"""The shop: four services (orders, inventory, payments, shipping) joined by a saga.

Each service is an ``App`` of its own module, runnable alone: ``tidings run examples.shop.orders``.
``python -m examples.shop.demo`` (``make demo``) runs them all as worker processes and drives a
stream of orders through them.
"""
