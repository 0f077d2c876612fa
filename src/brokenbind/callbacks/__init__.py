"""Callbacks: retrieval and emergent-binding evaluation."""

from brokenbind.callbacks.emergent import EmergentBinding

__all__ = ["EmergentBinding"]
