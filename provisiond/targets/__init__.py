"""The things provisiond writes: ``routeros`` (address lists over the RouterOS API),
``radius`` (FreeRADIUS's SQL rows) and ``coa`` (CoA / Disconnect to the NAS), behind the
``base.Target`` protocol the engine calls.
"""
