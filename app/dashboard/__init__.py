"""The Chatwoot dashboard app: what agents see of GLPI inside Chatwoot, next to the conversation.

- :mod:`~app.dashboard.shape`: pure; GLPI rows and our records → the view an agent may see (public followups only);
- :mod:`~app.dashboard.view`: the worker's side; reads the conversation's ticket from GLPI, briefly cached, for
  ``/state/hook/{id}/conversation/{id}/agent`` and ``/state/hook/{id}/dashboard`` (the admin token or
  ``GLPI_SYNC_DASHBOARD_TOKEN`` opens them);
- :mod:`~app.dashboard.page`: the page Chatwoot embeds (HTML and script, no external resources);
- the ingress serves the page and the view behind each hook's dashboard key (:mod:`app.ingress.dashboard`).
"""
