"""``python -m cortex_fsm.verify {verify,export} ...``: the same commands as
``cortex-fsm verify`` and ``cortex-fsm export``, without the rest of the CLI."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .commands import add_export_arguments, add_verify_arguments, export_main, verify_main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cortex_fsm.verify")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    vp = sub.add_parser("verify", help="model-check the engine (exit 0 ok, 1 violation, 2 usage)")
    add_verify_arguments(vp)
    vp.set_defaults(func=verify_main)
    ep = sub.add_parser("export", help="generate the Promela model")
    add_export_arguments(ep)
    ep.set_defaults(func=export_main)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
