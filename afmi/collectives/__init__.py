"""Collective algorithms and the registry that picks one per call."""

from afmi.collectives.base import Algorithm, CollectiveContext, Step
from afmi.collectives.registry import algorithms, register, select

__all__ = ["Algorithm", "CollectiveContext", "Step", "algorithms", "register", "select"]
