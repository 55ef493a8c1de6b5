"""provisiond's own database: leases, the RADIUS ownership ledger, runs and the change
journal (``store``), with its Alembic migrations (``migrations``). ``base.Store`` is the
seam the engine is typed against.
"""
