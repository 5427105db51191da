"""Chatwoot's side of the product: its signed webhooks (pure) and its application API (an aiohttp client)."""
