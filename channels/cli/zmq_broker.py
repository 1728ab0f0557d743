"""``channels zmq-broker``: run the ZeroMQ device that gives zmq:// topics and groups.

``--bind tcp://HOST:PORT`` (repeatable) is the ROUTER for ``zmq://`` clients; the fan-out
(XPUB) port for plain SUB sockets is PORT+1 and the intake port for plain PUB sockets is
PORT+2 unless ``--fanout`` / ``--intake`` say otherwise. ``--ping URL`` asks a running
broker for a HELLO and exits 0 if it answered (for health checks).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "zmq-broker",
        help="run the ZeroMQ broker device (topics and groups for zmq://)",
        description=(
            "Route zmq:// topics and groups: one member per message inside a group, every "
            "group gets every message, per-key affinity, credit flow control, acks. "
            "In memory only."
        ),
        epilog=(
            "Ports: PORT = ROUTER for zmq:// clients, PORT+1 = XPUB fan-out for plain SUB "
            "sockets, PORT+2 = intake for plain PUB sockets (frames [topic, value]). "
            "Example: channels zmq-broker --bind tcp://127.0.0.1:5560"
        ),
    )
    parser.add_argument(
        "--bind",
        action="append",
        metavar="ENDPOINT",
        help="ROUTER endpoint, tcp://HOST:PORT or ipc://PATH (default tcp://127.0.0.1:5560)",
    )
    parser.add_argument(
        "--fanout",
        action="append",
        metavar="ENDPOINT",
        help="XPUB endpoint for plain SUB sockets (default: PORT+1 / PATH.out)",
    )
    parser.add_argument(
        "--intake",
        action="append",
        metavar="ENDPOINT",
        help="intake endpoint for plain PUB sockets (default: PORT+2 / PATH.in)",
    )
    parser.add_argument(
        "--max-queued",
        type=int,
        default=100_000,
        help="messages waiting per group before publishers wait (100000)",
    )
    parser.add_argument(
        "--max-parked",
        type=int,
        default=10_000,
        help="publishes waiting per topic before the broker answers busy (10000)",
    )
    parser.add_argument(
        "--member-timeout",
        type=float,
        default=5.0,
        help="seconds of client silence before its members leave (5)",
    )
    parser.add_argument(
        "--max-message-size",
        type=int,
        default=64 * 1024 * 1024,
        help="largest message in bytes (64 MiB)",
    )
    parser.add_argument(
        "--ping",
        metavar="URL",
        help="check a running broker (zmq://HOST:PORT, tcp://..., ipc://...) and exit",
    )
    parser.set_defaults(func=run)


def _endpoint(url: str) -> str:
    if url.startswith("zmq+ipc://"):
        return "ipc://" + url[len("zmq+ipc://") :]
    if url.startswith("zmq://"):
        rest = url[len("zmq://") :].split("?", 1)[0].rstrip("/")
        return "tcp://" + (rest if ":" in rest else f"{rest}:5560")
    return url


def run(args: argparse.Namespace) -> int:
    from transports._zmq_broker import ZmqBroker, ping, serve

    if args.ping:
        ok = ping(_endpoint(args.ping))
        print(
            "ok" if ok else f"no zmq broker answering at {args.ping}",
            file=sys.stdout if ok else sys.stderr,
        )
        return 0 if ok else 1
    logging.getLogger("channels.zmq_broker").setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        broker = ZmqBroker(
            args.bind or ["tcp://127.0.0.1:5560"],
            args.fanout,
            args.intake,
            max_queued=args.max_queued,
            max_parked=args.max_parked,
            member_timeout=args.member_timeout,
            max_message_size=args.max_message_size,
        )
    except ValueError as exc:
        print(f"channels zmq-broker: error: {exc}", file=sys.stderr)
        return 2
    try:
        serve(broker)
    except Exception as exc:  # zmq.ZMQError on bind: address in use and the like
        print(f"channels zmq-broker: error: {exc}", file=sys.stderr)
        return 1
    return 0
