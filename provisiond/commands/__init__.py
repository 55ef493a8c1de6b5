"""CLI subcommands that live in their own module (``provisiond ipam``)."""
