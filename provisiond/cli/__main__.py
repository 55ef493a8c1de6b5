"""``python -m provisiond.cli``: the ``provisiond`` console script."""

from provisiond.cli.main import entry

entry()
