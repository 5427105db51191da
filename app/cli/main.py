"""``glpi-sync``: the parser that assembles every command group, and the entry point."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from app.cli import dead_letters, doctor, hooks, publish, services, state
from app.cli.common import (
    EXIT_INPUT,
    CliError,
    product_version,
)
from app.settings import SettingsError, ToolSettings, load


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glpi-sync",
        description="Chatwoot → GLPI sync: the worker and its tools.",
        epilog=(
            "exit status: 0 done, 1 problems found, 2 invalid input, 3 a service unreachable, "
            "4 GLPI (or Chatwoot) refused"
        ),
    )
    parser.add_argument("--version", action="version", version=f"glpi-sync {product_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    services.register(sub)
    publish.register_backfill(sub)
    services.register_demo(sub)
    publish.register_publish(sub)
    dead_letters.register(sub)
    hooks.register(sub)
    doctor.register(sub)
    state.register(sub)
    comp = sub.add_parser("completion", help="print a shell completion script, e.g. glpi-sync completion bash")
    comp.add_argument("shell", choices=["bash", "zsh", "tcsh"])
    comp.set_defaults(func=cmd_completion)
    return parser


def cmd_completion(args: argparse.Namespace, env: ToolSettings) -> int:
    import shtab

    print(shtab.complete(build_parser(), shell=args.shell))
    return 0


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        # argparse would only say that a COMMAND is required, without naming what it did not understand.
        print(f"glpi-sync: unknown option {argv[0]}: a COMMAND comes first (glpi-sync --help)", file=sys.stderr)
        return EXIT_INPUT
    args = build_parser().parse_args(argv)
    # SIGTERM (kill, a container stopping) ends a command as Ctrl-C does; the worker and the ingress install their
    # own handlers, which stop them gracefully.
    signal.signal(signal.SIGTERM, _interrupted)
    # aiokafka logs every failed connection attempt; a command says it once, in its own words.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        env = load(ToolSettings)
    except SettingsError as exc:
        print("glpi-sync: invalid configuration:\n  " + "\n  ".join(exc.lines), file=sys.stderr)
        return EXIT_INPUT
    try:
        return int(args.func(args, env))
    except CliError as exc:
        print(f"glpi-sync: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print("glpi-sync: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
