"""A fake Sonar: the subset of Sonar's GraphQL API provisiond reads, and its webhooks.

For the demo (``provisiond demo --source sonar``), the tests, and operators trying a
``[source] type = "sonar"`` config without a Sonar instance: ``python -m
provisiond.sim.sonar``. ``world`` holds the objects, ``schema`` executes GraphQL over
them with graphql-core, ``server`` answers HTTP as Sonar does (token, request limit,
capped pages) and sends webhooks. Like the rest of ``provisiond.sim`` it imports
nothing of provisiond.
"""

from .server import FakeSonar, SonarSimSettings, is_loopback
from .world import World

__all__ = ["FakeSonar", "SonarSimSettings", "World", "is_loopback"]
