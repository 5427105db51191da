"""``glpi-sync doctor``: the whole health checklist (``app/doctor.py`` makes the lines)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from app.cli.common import (
    EXIT_PROBLEMS,
    add_worker_url,
    print_json,
)
from app.settings import ToolSettings


def cmd_doctor(args: argparse.Namespace, env: ToolSettings) -> int:
    from app import doctor

    ingress = args.ingress or [u.strip() for u in env.ingress_url.split(",") if u.strip()]
    lines = asyncio.run(doctor.run(env, args.worker or env.worker_url, args.hook_id or None, ingress))
    failed = sum(line.level == "fail" for line in lines)
    if args.json:
        print_json({"ok": not failed, "checks": doctor.as_json(lines)})
    else:
        for line in lines:
            print(line.render())
        print(f"{len(lines)} checks: {failed} failed" if failed else f"{len(lines)} checks: all good")
    return EXIT_PROBLEMS if failed else 0


def register(sub: Any) -> None:
    """The ``doctor`` command."""
    doc = sub.add_parser("doctor", help="the whole health checklist: broker, topics, group, workers, hooks, GLPI")
    doc.add_argument("--hook-id", type=int, action="append", default=[], help="only these hooks, e.g. --hook-id 7")
    add_worker_url(doc)
    doc.add_argument(
        "--ingress", action="append", default=[], help="a webhook ingress to check, e.g. --ingress http://ingress:8080"
    )
    doc.add_argument("--json", action="store_true", help="machine-readable output")
    doc.set_defaults(func=cmd_doctor)
