"""Adapters: one per engine, chosen by URL scheme in ``tidings.adapters.registry``."""
