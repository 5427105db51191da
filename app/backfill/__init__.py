"""``glpi-sync backfill``: conversations that existed before the hook (or were missed), through Chatwoot's API."""
