"""The ``memlens`` command. Every subcommand is a thin layer over the Python API.

Subcommands register themselves in :data:`COMMANDS` (``memlens/cli/jobs.py``: quickstart, list,
sweep, report; ``memlens/cli/models.py``: train, probe, temper, calibrate). Nothing heavy is
imported until a subcommand runs, so ``memlens --help`` starts in a fraction of a second.

Every failure ends in one line on stderr, ``memlens COMMAND: error: REASON``, and a non-zero exit
status: 2 for bad arguments or inputs refused before any work, 1 for a failure during the work.
``--debug`` shows the traceback instead. Warnings print as ``memlens: warning: ...``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable

__all__ = ["COMMANDS", "command", "build_parser", "main"]

#: name -> (add_arguments, run, one-line help)
COMMANDS: dict[str, tuple[Callable, Callable, str]] = {}

#: exceptions that mean "refused": bad arguments, inputs or paths (exit status 2)
REFUSALS = (
    ValueError,
    TypeError,
    LookupError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Register ``run(namespace) -> exit status`` as ``memlens NAME``."""

    def register(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (add_arguments, run, help)
        return run

    return register


class HelpFormatter(argparse.HelpFormatter):
    """Adds ``(default: X)`` to an option's help once, and only where a default means something:
    not for required options, flags, or help text that already states its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or action.required
            or default is None
            or default is False
            or default == argparse.SUPPRESS
            or default == []
            or isinstance(action, (argparse._StoreTrueAction, argparse._HelpAction))
            or not action.option_strings
        ):
            return text
        if isinstance(default, (list, tuple)):
            default = ",".join(map(str, default))
        return f"{text} (default: {default})"


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # a one-line reason, exit status 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from memlens.cli import jobs, memorised, models  # noqa: F401  (register the commands)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser = Parser(
        prog="memlens",
        description="Hookable toy models and probes for memorisation, double descent and "
        "tempering. Run `memlens COMMAND --help` for a command's options.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, (add_arguments, _, help_) in COMMANDS.items():
        p = sub.add_parser(
            name, help=help_, description=help_, formatter_class=HelpFormatter, parents=[common]
        )
        add_arguments(p)
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 600 else text[:597] + "..."


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"memlens: warning: {_one_line(message)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help()
        return 2
    _, run, _ = COMMANDS[ns.command]
    where = f"memlens {ns.command}"
    if not ns.debug:
        warnings.showwarning = _show_warning
    try:
        return int(run(ns) or 0)
    except KeyboardInterrupt:
        print(f"{where}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if ns.debug:
            raise
        kind = "" if isinstance(exc, REFUSALS) else f"{type(exc).__name__}: "
        print(f"{where}: error: {kind}{_one_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, REFUSALS) else 1


if __name__ == "__main__":
    sys.exit(main())
