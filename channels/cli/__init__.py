"""The ``channels`` command."""
