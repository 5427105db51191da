"""The long-running commands: ``worker``, ``ingress`` and the ``demo``."""

from __future__ import annotations

import argparse
from typing import Any

from app.cli.common import (
    CliError,
)
from app.settings import SettingsError, ToolSettings, load


def cmd_worker(args: argparse.Namespace, env: ToolSettings) -> int:
    from app.settings import WorkerSettings
    from app.worker import run_worker

    try:
        worker_env = load(WorkerSettings)
    except SettingsError as exc:
        raise CliError("invalid configuration:\n  " + "\n  ".join(exc.lines)) from None
    return run_worker(worker_env)


def cmd_ingress(args: argparse.Namespace, env: ToolSettings) -> int:
    from app import logs
    from app.ingress.server import run_ingress
    from app.settings import IngressSettings

    try:
        ingress_env = load(IngressSettings)
    except SettingsError as exc:
        raise CliError("invalid configuration:\n  " + "\n  ".join(exc.lines)) from None
    logs.configure(ingress_env.log_level, ingress_env.log_format)
    return run_ingress(ingress_env, args.port)


def cmd_demo(args: argparse.Namespace, env: ToolSettings) -> int:
    from app.demo import main as demo_main

    return demo_main(once=args.once)


WORKER_ENVIRONMENT = """environment (see README "Configuration" for all of them):
  KAFKA_BOOTSTRAP_SERVERS        e.g. kafka-0.kafka:9092,kafka-1.kafka:9092
  KAFKA_SECURITY_PROTOCOL        PLAINTEXT (default), SSL, SASL_PLAINTEXT, SASL_SSL
  KAFKA_SASL_MECHANISM           SCRAM-SHA-512 (default), SCRAM-SHA-256, PLAIN
  KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE, KAFKA_SSL_CA_FILE
  GLPI_SYNC_TOPIC                input topic (default chatwoot.events; DLQ and control topics follow it)
  GLPI_SYNC_DATA_DIR             RocksDB state, one per worker (default ./data)
  GLPI_SYNC_HTTP_PORT            metrics, health and state (default 6066); GLPI_SYNC_HTTP_HOST binds it
  GLPI_SYNC_ADMIN_TOKEN[_FILE]   bearer token for /state and admin endpoints (off without one)
  GLPI_SYNC_HOOK_SECRET_*        tokens hooks may reference; GLPI_SYNC_HOOK_SECRETS_DIR for files
  GLPI_SYNC_LOG_LEVEL, GLPI_SYNC_LOG_FORMAT   info|debug|warning, json|text
"""


INGRESS_ENVIRONMENT = """environment (see README "Connecting a stock Chatwoot"):
  KAFKA_BOOTSTRAP_SERVERS, KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, KAFKA_SSL_*   as for the worker
  GLPI_SYNC_TOPIC                      input topic (default chatwoot.events)
  GLPI_SYNC_INGRESS_HOST, _PORT        bind address (default 0.0.0.0:8080)
  GLPI_SYNC_WEBHOOK_SECRET_<HOOK_ID>   the Chatwoot webhook's secret (or a file <hook id> in the directory below)
  GLPI_SYNC_WEBHOOK_SECRETS_DIR        default /run/secrets/glpi-sync-webhooks
  GLPI_SYNC_WEBHOOK_URL_TOKEN_<ID>     unsigned deliveries (Chatwoot < 4.11.2) at /webhooks/chatwoot/<id>/<token>
  GLPI_SYNC_GLPI_WEBHOOK_SECRET_<ID>   two-way: GLPI 11 webhooks at /webhooks/glpi/<id>
"""


def register(sub: Any) -> None:
    """The ``worker`` and ``ingress`` commands."""
    worker = sub.add_parser(
        "worker",
        help="run the sync worker (configured by environment)",
        epilog=WORKER_ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    worker.set_defaults(func=cmd_worker)

    ingress = sub.add_parser(
        "ingress",
        help="receive Chatwoot's signed webhooks and produce them to the input topic (stateless, scale out)",
        epilog=INGRESS_ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ingress.add_argument(
        "--port", type=int, help="listen port (default GLPI_SYNC_INGRESS_PORT, 8080), e.g. --port 8080"
    )
    ingress.set_defaults(func=cmd_ingress)


def register_demo(sub: Any) -> None:
    """The ``demo`` command (``make run``)."""
    demo = sub.add_parser("demo", help="embedded broker + GLPI emulator + worker + a demo conversation (make run)")
    demo.add_argument("--once", action="store_true", help="exit after printing the result, e.g. glpi-sync demo --once")
    demo.set_defaults(func=cmd_demo)
