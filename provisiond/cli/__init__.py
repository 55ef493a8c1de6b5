"""The command line: ``main`` (arguments and dispatch), ``commands`` (check-config, plan,
apply), ``history``, ``ipam`` and ``demo``. The top of the layers: nothing imports it.
"""
