from tests.cli.helpers import background

__all__ = ["background"]
