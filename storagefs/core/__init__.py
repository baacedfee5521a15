"""The core: the registry of pools, volumes and secrets and the parts that work on
them (see registry.py)."""

from .registry import Registry

__all__ = ["Registry"]
