"""Billing reads: a ``Source`` (``base``) returns a ``core.model.Snapshot`` or raises
``SourceError`` (``sql``: the operator's query over SQLAlchemy). A failed read stops
the pass before any write.
"""
