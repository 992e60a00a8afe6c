"""The `healthmon` command: one entry point, subcommands contributed by each package.

Each package with commands has a `cli.py` with `register(subparsers)`; a parser it
adds sets `func=` to a callable taking (args, settings) and returning an exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from importlib import import_module

from pydantic import ValidationError

from healthmon.settings import Settings

logger = logging.getLogger(__name__)

# Packages whose cli.register() contributes subcommands, in help order.
_COMMAND_MODULES = ("ingest.cli", "alerts.cli", "api.cli", "simulators.cli", "healthmon.up")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="healthmon", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # that package contributes no commands yet
        register: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]
        register = module.register
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"healthmon: bad configuration:\n{exc}", file=sys.stderr)
        return 2
    try:
        code: int = args.func(args, settings)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
