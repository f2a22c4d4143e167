"""Datasets that ship with `lsm`: synthetic demo regions."""

from lsm.datasets.demo import ensure_demo, generate_demo

__all__ = ["ensure_demo", "generate_demo"]
