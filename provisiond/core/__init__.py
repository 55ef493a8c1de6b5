"""The pure core of a pass: values in, values out, no I/O.

``model`` (Account, Snapshot) -> ``ipam`` (the allocator: Pool, Lease, Allocation) ->
``desire`` (address lists) and ``radius`` (RADIUS rows, FreeRADIUS's reply) -> ``diff``
(Create / Update / Delete, from ``changes``) -> ``plan`` (safety, checksum) -> ``render``
(text and JSON). ``addresses`` normalises addresses as RouterOS stores them. Nothing
here touches a socket, a database, a thread or a file; it needs no fakes to test.
"""
