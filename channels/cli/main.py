"""``channels``: one command for every broker.

Each subcommand lives in its own module under ``channels.cli`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (a callable taking the
parsed arguments and returning an exit status). Modules are imported only to build the
parser, and a broken or missing one never hides the others.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

from channels import __version__
from channels.errors import ChannelsError, ConfigurationError, ConnectionFailed, TopicNotFound

#: subcommand modules, in the order --help lists them
COMMANDS = (
    "demo",
    "send",
    "tail",
    "bridge",
    "doctor",
    "conformance",
    "bench",
    "zmq_broker",
)

#: exit status for bad input or an unreachable broker
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="channels",
        description="One Channel/Topic API over Kafka, RabbitMQ, MQTT, NSQ, ZeroMQ and memory.",
        epilog="Example: channels demo --broker memory://",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    parser.add_argument("--version", action="version", version=f"%(prog)s (anychannel) {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"channels.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"channels.cli.{name}":
                continue
            _register_unavailable(sub, name.replace("_", "-"), exc.name or str(exc))
            continue
        module.register(sub)
    return parser


def _register_unavailable(sub: Any, command: str, missing: str) -> None:
    """A command whose module needs a library that is not installed says so when used."""
    parser = sub.add_parser(command, help=f"(needs {missing}: pip install 'anychannel[testing]')")
    parser.add_argument("rest", nargs=argparse.REMAINDER)

    def unavailable(args: argparse.Namespace) -> int:
        print(f"channels {command}: error: needs {missing}, which is not installed", file=sys.stderr)
        return EXIT_USAGE

    parser.set_defaults(func=unavailable)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse ends a list of positionals at the first option: `send URL TOPIC --create
        # VALUE` leaves VALUE over. Positionals given after options join the list.
        if not isinstance(getattr(args, "args", None), list) or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.args.extend(extra)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        status: int = func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ConfigurationError, ConnectionFailed, TopicNotFound) as exc:
        print(f"channels {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ChannelsError as exc:
        print(f"channels {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
