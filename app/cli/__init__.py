"""``glpi-sync``, the command line: one module per command group.

- ``common``: exit statuses, :class:`CliError`, Kafka, the workers' HTTP, output and shared flags;
- ``hooks`` (``hook set|enable|disable|pause|resume|skip|test|list``), ``dead_letters`` (``dlq``), ``state``
  (``inspect``, ``trace``, ``repair``, ``resync``, ``reset``), ``publish`` (``publish``, ``backfill``),
  ``services`` (``worker``, ``ingress``, ``demo``), ``doctor``;
- ``main``: the parser and :func:`main`.
"""

from app.cli.main import main

__all__ = ["main"]
