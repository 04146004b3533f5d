"""The ``memlens`` command. Every subcommand is a thin layer over the Python API.

Subcommands register themselves in ``COMMANDS``: ``name -> (add_arguments, run)``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None],
                          Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str):
    def deco(add_arguments):
        def register(run):
            COMMANDS[name] = (add_arguments, run, help)
            return run

        return register

    return deco


def _quickstart_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="memlens-quickstart",
                   help="report folder to write (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


@command("quickstart", "train the three toy models at a small and a large T; print losses")(
    _quickstart_args)
def _quickstart(ns: argparse.Namespace) -> int:
    from memlens.quickstart import run

    run(out=ns.out, seed=ns.seed, progress=not ns.no_progress)
    return 0


def _list_args(p: argparse.ArgumentParser) -> None:
    pass


@command("list", "list registered models and probes, with where each comes from")(_list_args)
def _list(ns: argparse.Namespace) -> int:
    from memlens.registry import MODELS, PROBES

    for reg in (MODELS, PROBES):
        print(f"{reg.kind}s ({reg.group}):")
        for name in reg.names():
            print(f"  {name:16s} {reg.source(name)}")
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one-line reason, exit status 2
        self.exit(2, f"memlens: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="memlens", description="Hookable toy models and probes for "
                     "memorisation, double descent and tempering.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (add_arguments, _, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help()
        return 2
    _, run, _ = COMMANDS[ns.command]
    try:
        return int(run(ns) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"memlens {ns.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
