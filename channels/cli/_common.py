"""Helpers shared by ``channels send|tail|bridge|doctor``.

* Broker resolution: a positional ``URL`` is recognised by its ``scheme://``; without one
  the URL comes from ``--broker``, then ``$CHANNELS_BROKER``. Giving both a positional URL
  and ``--broker`` is an error.
* Redaction: every line we print about a broker (summaries, notes, errors, log records)
  goes through :meth:`Redactor.text`, which hides URL passwords and secret options.
* Input and output of message parts: ``k=v`` headers, safe rendering of bytes.
* :func:`run`: runs a command's coroutine with SIGINT/SIGTERM handled and maps errors to
  exit codes (0 ok, 1 runtime failure, 2 bad input or unreachable broker, 130 Ctrl-C,
  143 SIGTERM), printing one line on stderr and no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TextIO
from urllib.parse import quote

from channels.errors import (
    CapabilityNotSupported,
    ChannelsError,
    ConfigurationError,
    ConnectionFailed,
    EncodeError,
    MessageTooLarge,
    TopicNotFound,
)
from channels.url import BrokerURL, parse_url, redact

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "LiveCounter",
    "Redactor",
    "add_broker_option",
    "broker_from_env",
    "exit_code_for",
    "json_safe",
    "parse_headers",
    "render_bytes_json",
    "render_bytes_text",
    "resolve_broker",
    "run",
    "split_url_and_args",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

#: errors that mean "bad input or unreachable broker": exit status 2
_USAGE_ERRORS: tuple[type[BaseException], ...] = (
    ConfigurationError,
    ConnectionFailed,
    TopicNotFound,
    CapabilityNotSupported,
    EncodeError,
    MessageTooLarge,
)

ENV_BROKER = "CHANNELS_BROKER"


# -- broker URLs ------------------------------------------------------------------------


def add_broker_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker",
        metavar="URL",
        help=f"broker URL when none is given as a positional argument (default: ${ENV_BROKER})",
    )
    parser.add_argument(
        "--connect-timeout",
        type=positive_float,
        default=10.0,
        metavar="S",
        help="seconds to wait for the broker to answer (default: 10)",
    )
    parser.add_argument(
        "--wait-for-broker",
        type=positive_float,
        default=0.0,
        metavar="S",
        help="keep trying for up to S seconds while the broker cannot be reached (default: fail at once)",
    )


def broker_from_env() -> str | None:
    return os.environ.get(ENV_BROKER) or None


def looks_like_url(text: str) -> bool:
    return "://" in text


def resolve_broker(positional: str | None, option: str | None) -> str:
    """The broker URL text: positional, else ``--broker``, else ``$CHANNELS_BROKER``."""
    if positional is not None and option is not None:
        raise ConfigurationError("the broker is given twice: as a positional URL and with --broker; give one")
    url = positional or option or broker_from_env()
    if not url:
        raise ConfigurationError(
            f"no broker: give a URL (e.g. kafka://127.0.0.1:9092), --broker URL or set ${ENV_BROKER}"
        )
    return url


def _almost_url(text: str) -> bool:
    """A known scheme followed by ':' but not '://' ("kafka:/host:9092")."""
    from channels.registry import available_schemes

    scheme, colon, _ = text.partition(":")
    return bool(colon) and "://" not in text and scheme.lower() in available_schemes()


def split_url_and_args(
    positionals: Sequence[str], option: str | None, *, minimum: int, maximum: int, usage: str
) -> tuple[str, list[str]]:
    """Split ``[URL] ARG...``: the first positional is the URL when it has a ``scheme://``."""
    args = list(positionals)
    positional_url = args.pop(0) if args and looks_like_url(args[0]) else None
    if positional_url is None and args and _almost_url(args[0]):
        # "kafka:/host:9092" or "kafka:host": a URL with a typo, not a topic name
        raise ConfigurationError(
            f"{redact(args[0])!r} looks like a broker URL without '://' (e.g. kafka://127.0.0.1:9092)"
        )
    url = resolve_broker(positional_url, option)
    if not minimum <= len(args) <= maximum:
        raise ConfigurationError(f"expected {usage}")
    return url, args


# -- redaction --------------------------------------------------------------------------


class Redactor:
    """Hides the secrets of the broker URLs a command uses in any text it prints."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()

    def add(self, url: str | BrokerURL) -> BrokerURL | None:
        """Remember the secrets of ``url``; returns the parsed URL (None if malformed)."""
        if isinstance(url, str):
            self._add_raw(url)
        try:
            parsed = parse_url(url)
        except ConfigurationError:
            return None
        if parsed.password:
            self._secrets.add(parsed.password)
            self._secrets.add(quote(parsed.password, safe=""))
        for name, value in parsed.query.items():
            if any(word in name.lower() for word in ("password", "secret", "token", "passphrase")):
                if value:
                    self._secrets.add(value)
                    self._secrets.add(quote(value, safe=""))
        return parsed

    def _add_raw(self, text: str) -> None:
        # The raw password text, even when the rest of the URL does not parse.
        match = re.match(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://([^@/?#]*)@", text.strip())
        if match and ":" in match[1]:
            secret = match[1].split(":", 1)[1]
            if secret:
                self._secrets.add(secret)

    def text(self, value: Any) -> str:
        text = str(value)
        # URLs with userinfo anywhere in the text
        text = re.sub(
            r"([a-zA-Z][a-zA-Z0-9+.\-]*://)([^:@/\s]*):([^@/\s]*)@",
            lambda m: f"{m[1]}{m[2]}:***@",
            text,
        )
        # Literal secrets (too short ones would garble ordinary text), outside the
        # already redacted userinfo (a user name equal to the password stays readable).
        kept: list[str] = []

        def keep(match: re.Match[str]) -> str:
            kept.append(match[0])
            return f"\x00{len(kept) - 1}\x00"

        text = re.sub(r"[a-zA-Z][a-zA-Z0-9+.\-]*://[^:@/\s]*:\*\*\*@", keep, text)
        for secret in sorted(self._secrets, key=len, reverse=True):
            if len(secret) >= 3:
                text = text.replace(secret, "***")
        return re.sub("\x00(\\d+)\x00", lambda m: kept[int(m[1])], text)

    def url(self, url: str | BrokerURL) -> str:
        try:
            return parse_url(url).redacted()
        except ConfigurationError:
            return self.text(redact(url))

    def install_log_filter(self) -> None:
        """Redact log records (client libraries may log the URL they were given)."""
        redactor = self

        class _Filter(logging.Filter):
            def filter(self, record: logging.LogRecord) -> bool:
                try:
                    message = record.getMessage()
                except Exception:
                    return True
                clean = redactor.text(message)
                if clean != message:
                    record.msg, record.args = clean, None
                return True

        log_filter = _Filter()
        for handler in logging.getLogger().handlers:
            handler.addFilter(log_filter)


# -- message parts ----------------------------------------------------------------------


def parse_headers(items: Iterable[str] | None) -> dict[str, bytes]:
    """``["k=v", ...]`` -> ``{"k": b"v"}``. Splits at the first ``=``; values may be empty."""
    headers: dict[str, bytes] = {}
    for item in items or ():
        name, eq, value = item.partition("=")
        name = name.strip()
        if not eq or not name:
            raise ConfigurationError(f"header {item!r} is not of the form name=value")
        if name in headers:
            raise ConfigurationError(f"header {name!r} given twice")
        headers[name] = value.encode("utf-8")
    return headers


_CONTROL = {i: f"\\x{i:02x}" for i in (*range(0x20), 0x7F)}
_CONTROL.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", ord("\\"): "\\\\"})


def render_bytes_text(data: bytes | None) -> str:
    """One-line human text: UTF-8 with control characters escaped, else ``base64(...)``."""
    if data is None:
        return "(null)"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return f"base64({base64.b64encode(data).decode('ascii')})"
    return text.translate(_CONTROL)


def render_bytes_json(data: bytes | None) -> str | dict[str, str] | None:
    """JSON form: None -> null, UTF-8 -> a string, other bytes -> ``{"base64": "..."}``."""
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def json_safe(obj: Any) -> Any:
    """A decoded value made JSON-able: bytes as in :func:`render_bytes_json`."""
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    if isinstance(obj, bytes | bytearray | memoryview):
        return render_bytes_json(bytes(obj))
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return repr(obj)


# -- argument types ---------------------------------------------------------------------


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


# -- progress ---------------------------------------------------------------------------


class LiveCounter:
    """A counter on stderr: a rich live line on a terminal, else a plain line now and then."""

    def __init__(
        self,
        label: str,
        *,
        total: int | None = None,
        stream: TextIO | None = None,
        plain_every: float | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.count = 0
        self.stream = stream or sys.stderr
        self.plain_every = plain_every
        self._progress: Any = None
        self._task: Any = None
        self._last_plain = time.monotonic()
        self.started = time.monotonic()

    def __enter__(self) -> LiveCounter:
        if self.stream.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}")]
            if self.total is not None:
                columns += [BarColumn(), MofNCompleteColumn()]
            else:
                columns += [TextColumn("{task.completed} message(s)")]
            columns += [TimeElapsedColumn()]
            self._progress = Progress(
                *columns,
                console=Console(file=self.stream),
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=self.total)
        return self

    def advance(self, n: int = 1) -> None:
        self.count += n
        if self._progress is not None:
            self._progress.update(self._task, completed=self.count)
        elif self.plain_every is not None:
            now = time.monotonic()
            if now - self._last_plain >= self.plain_every:
                self._last_plain = now
                print(f"{self.label}: {self.count} message(s)", file=self.stream, flush=True)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def rate(count: int, seconds: float) -> str:
    if seconds <= 0 or count == 0:
        return ""
    return f" ({count / seconds:,.0f} msg/s)"


# -- running a command ------------------------------------------------------------------


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, _USAGE_ERRORS):
        return EXIT_USAGE
    if isinstance(exc, FileNotFoundError | IsADirectoryError | PermissionError):
        return EXIT_USAGE
    if isinstance(exc, ConnectionError):
        return EXIT_USAGE
    return EXIT_FAILURE


def describe(exc: BaseException) -> str:
    if isinstance(exc, _USAGE_ERRORS):
        text = str(exc)
    elif isinstance(exc, ChannelsError):
        text = f"{type(exc).__name__}: {exc}"
    elif isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}" if exc.filename else str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return " ".join(text.split())


def error_line(command: str, exc: BaseException, redactor: Redactor) -> str:
    return redactor.text(f"channels {command}: error: {describe(exc)}")


def fail(command: str, exc: BaseException, redactor: Redactor) -> int:
    print(error_line(command, exc, redactor), file=sys.stderr, flush=True)
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("channels.cli").debug("details", exc_info=exc)
    return exit_code_for(exc)


def quiet_libraries() -> None:
    """Without ``channels -v`` the command reports failures itself, in one line: client
    libraries' and the core's log records would only repeat them (with tracebacks)."""
    root = logging.getLogger()
    if root.getEffectiveLevel() > logging.INFO:
        # On the handlers too: a library logger with its own level still ends up there.
        root.setLevel(logging.CRITICAL + 1)
        for handler in root.handlers:
            handler.setLevel(logging.CRITICAL + 1)


def run(
    command: str,
    main: Callable[[], Awaitable[int]],
    redactor: Redactor,
) -> int:
    """Run ``main()`` in a fresh event loop; Ctrl-C/SIGTERM cancel it (130/143)."""
    quiet_libraries()
    redactor.install_log_filter()
    received: list[int] = []

    async def wrapper() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_signal(signum: int) -> None:
            received.append(signum)
            task.cancel()

        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, on_signal, signum)
        try:
            return await main()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.remove_signal_handler(signum)

    try:
        return asyncio.run(wrapper())
    except (asyncio.CancelledError, KeyboardInterrupt) as exc:
        if isinstance(exc, asyncio.CancelledError) and not received:
            # not ours: a library cancelled something it should not have
            return fail(command, RuntimeError("cancelled unexpectedly"), redactor)
        if received and received[0] == signal.SIGTERM:
            print(f"channels {command}: terminated", file=sys.stderr, flush=True)
            return EXIT_TERMINATED
        print(f"channels {command}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Exception as exc:
        return fail(command, exc, redactor)


async def gather_or_fail(*tasks: asyncio.Task[None]) -> None:
    """Wait until every task finished. At the first one that fails (or is cancelled by
    someone else) cancel the others and raise its error. When the caller is cancelled the
    tasks keep running: the caller decides what to do with them."""
    pending = set(tasks)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task.cancelled():
                error: BaseException | None = RuntimeError(f"{task.get_name()} was cancelled unexpectedly")
            else:
                error = task.exception()
            if error is not None:
                for other in pending:
                    other.cancel()
                for other in pending:
                    with contextlib.suppress(BaseException):
                        await other
                raise error


def note(text: str, redactor: Redactor) -> None:
    """A line on stderr, redacted and flushed (scripts wait for some of these)."""
    print(redactor.text(text), file=sys.stderr, flush=True)


def memory_note(url: BrokerURL, redactor: Redactor) -> None:
    if url.scheme == "memory":
        note(
            "note: memory:// lives inside this process; other processes do not see its messages",
            redactor,
        )
