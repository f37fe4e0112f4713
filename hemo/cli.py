"""The ``hemo`` command line: one subcommand per module in :mod:`hemo.commands`.

Contract (see docs/CONTRACTS.md and the README): with ``--json`` stdout carries only JSON, logs and
progress go to stderr; a failure prints one line ``hemo: error: ...`` (no traceback) and the
exit status is non-zero. Subcommand modules import heavy libraries (TensorFlow) inside ``run``
only, so ``hemo inspect`` and friends start fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import pkgutil
import re
import sys
import warnings
from collections.abc import Sequence
from typing import Any, NoReturn

from hemo import __version__
from hemo.errors import HemoError

log = logging.getLogger("hemo")

#: Exit status when an input or option was bad (HemoError), and when some inputs of a batch failed.
EXIT_ERROR = 2
EXIT_PARTIAL = 1
#: Libraries whose log records and warnings only repeat what a HemoError already says (pydicom logs
#: every failed decoder plugin at ERROR with a traceback, and warns on each odd value it reads):
#: silenced unless ``--verbose``, so a bad input gives one line on stderr.
QUIET_LIBRARIES = ("pydicom",)


def emit_json(payload: Any) -> None:
    """Write ``payload`` as JSON to stdout (the only thing ``--json`` prints there)."""
    json.dump(payload, sys.stdout, indent=2, default=_json_default, allow_nan=False)
    sys.stdout.write("\n")
    sys.stdout.flush()


def _json_default(value: Any) -> Any:
    """Serialise numpy scalars/arrays and paths that ``json`` does not know."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "__fspath__"):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class _Parser(argparse.ArgumentParser):
    """argparse's parser (usage message on stderr, exit status 2), which with ``--json`` also
    puts ``{"error": ...}`` on stdout: a --json reader never gets an empty stdout. Subcommand
    parsers are of the same class (``add_subparsers`` uses the parent's)."""

    #: Whether the command line being parsed asked for ``--json`` (set by :func:`main`).
    json_output = False

    def error(self, message: str) -> NoReturn:
        if _Parser.json_output:
            emit_json({"error": f"{self.prog}: {message} (usage: {self.prog} --help)"})
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    """The ``hemo`` parser with every subcommand found in :mod:`hemo.commands`."""
    parser = _Parser(
        prog="hemo",
        description="Brain-hemorrhage detection on head CT: data, training, evaluation, "
        "prediction and Grad-CAM. Research tool, not a medical device.",
    )
    parser.add_argument("--version", action="version", version=f"hemo {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    import hemo.commands as commands

    modules = sorted(m.name for m in pkgutil.iter_modules(commands.__path__))
    for name in modules:
        module = importlib.import_module(f"hemo.commands.{name}")
        module.register(subparsers)
    return parser


def _not_quiet(record: logging.LogRecord) -> bool:
    """Logging filter: False for records of :data:`QUIET_LIBRARIES`."""
    return record.name.partition(".")[0] not in QUIET_LIBRARIES


def _quiet_libraries() -> None:
    """Drop the log records and warnings of :data:`QUIET_LIBRARIES` (see there).

    A filter on the root handlers rather than a logger level: pydicom resets its logger's level
    when it is imported, which happens later, inside a subcommand.
    """
    for handler in logging.getLogger().handlers:
        if _not_quiet not in handler.filters:
            handler.addFilter(_not_quiet)
    for name in QUIET_LIBRARIES:
        warnings.filterwarnings("ignore", module=rf"{name}(\.|$)")


#: Characters a terminal acts on instead of showing: C0/C1 controls (escape sequences, newlines
#: that would forge a line), zero-width and bidirectional overrides (text that reads backwards).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2028\u2029\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with every control character written as its escape (``\\x1b``, ``\\n``), so a
    file or zip-member name cannot colour, retitle or forge lines of a terminal."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def printable_data(value: Any) -> Any:
    """:func:`printable` applied to every string inside dicts, lists and tuples (text output of
    a command's ``--json`` data; JSON itself escapes them)."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable_data(k): printable_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(printable_data(v) for v in value)
    return value


class _PrintableFormatter(logging.Formatter):
    """Log lines whose message is :func:`printable` (a traceback, with ``-v``, keeps its lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 some inputs failed, 2 error)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    _Parser.json_output = "--json" in argv
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PrintableFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    if not args.verbose:
        _quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except HemoError as exc:
        print(f"hemo: error: {printable(str(exc))}", file=sys.stderr)
        if getattr(args, "json", False):
            # a --json reader gets a document saying why, not an empty stdout
            emit_json({"error": str(exc)})
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("hemo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover - exercised through the console script
    sys.exit(main())
