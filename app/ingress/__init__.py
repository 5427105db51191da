"""``glpi-sync ingress``: Chatwoot's signed account webhooks in, envelopes on the input topic out (stateless)."""
