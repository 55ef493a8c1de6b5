"""The engine: one pass from billing to every target (``Reconciler``), and what it is
made of. Callers (the CLI, the daemon) import from here."""

from provisiond.engine.assembly import build_source, build_targets, selectors
from provisiond.engine.memory import ScopedMemory
from provisiond.engine.reconciler import Reconciler
from provisiond.engine.results import MAX_WORKERS, PassPlan, PassResult, ProgressFactory

__all__ = ["MAX_WORKERS", "PassPlan", "PassResult", "ProgressFactory", "Reconciler", "ScopedMemory",
           "build_source", "build_targets", "selectors"]
