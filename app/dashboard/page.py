"""The dashboard app's page: one HTML document with its script and style inline, nothing loaded from elsewhere.

Chatwoot (Settings → Integrations → Dashboard apps) loads it in a frame beside the conversation and posts the
context to it as a JSON string, ``{"event": "appContext", "data": {"conversation": …, "contact": …,
"currentAgent": …}}``, when the frame loads and again whenever the frame posts
``chatwoot-dashboard-app:fetch-info`` (``Frame.vue`` in Chatwoot's source). The script takes only the
conversation's id from it, and only from the parent frame at the hook's Chatwoot origin; everything shown comes
from this page's own origin (``/dashboard/<hook>/conversation/<id>``, with the key the page was opened with), and
is written with ``textContent`` (never as HTML). The ingress fills in the nonce and the expected origin and sends
the page with a Content-Security-Policy that allows nothing else.
"""

from __future__ import annotations

import html

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<meta name="cwglpi-chatwoot-origin" content="__ORIGIN__">
<title>GLPI</title>
<style nonce="__NONCE__">
body { font: 13px/1.45 system-ui, sans-serif; margin: 0; padding: 12px; color: #1f2d3d; background: #fff; }
h1 { font-size: 15px; margin: 0 0 8px; }
h2 { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: #6b7c93; margin: 16px 0 6px; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 10px; margin: 0; }
dt { color: #6b7c93; } dd { margin: 0; }
a { color: #1f93ff; }
.entry { border-left: 3px solid #d6dde6; padding: 2px 8px; margin: 0 0 8px; white-space: pre-wrap; }
.entry.glpi { border-color: #1f93ff; } .entry.solution { border-color: #44ce4b; }
.meta { color: #6b7c93; font-size: 11px; white-space: normal; }
.problem { color: #b3261e; } .muted { color: #6b7c93; }
</style>
</head>
<body>
<main id="app"><p class="muted" id="status">Waiting for the conversation…</p></main>
<script nonce="__NONCE__">
(() => {
  "use strict";
  const origin = document.querySelector('meta[name="cwglpi-chatwoot-origin"]').content;
  const key = new URLSearchParams(location.search).get("key") || "";
  const hook = location.pathname.split("/")[2];
  const app = document.getElementById("app");
  let shown = null;

  const el = (tag, text, cls) => {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  };
  const link = (href, text) => {
    const a = el("a", text);
    if (/^https?:\\/\\//.test(href)) { a.href = href; a.target = "_blank"; a.rel = "noopener noreferrer"; }
    return a;
  };
  const pair = (dl, name, value) => {
    dl.append(el("dt", name));
    const dd = el("dd");
    if (value instanceof Node) dd.append(value); else dd.textContent = value || "—";
    dl.append(dd);
  };
  const say = (text) => { app.replaceChildren(el("p", text, "muted")); };

  function render(view) {
    const parts = [];
    const ticket = view.ticket;
    if (ticket) {
      parts.push(el("h1", "Ticket #" + ticket.id + ": " + ticket.title));
      const dl = el("dl");
      pair(dl, "Status", ticket.status + (ticket.deleted ? " (in GLPI's trash)" : ""));
      pair(dl, "Priority", ticket.priority);
      pair(dl, "Technician", ticket.technician || "nobody yet");
      if (view.requester) pair(dl, "Requester", link(view.requester.url, view.requester.name));
      pair(dl, "In GLPI", link(ticket.url, "open ticket #" + ticket.id));
      parts.push(dl);
    } else {
      parts.push(el("h1", "No GLPI ticket"));
    }
    if (view.glpi && view.glpi !== "ok") parts.push(el("p", view.glpi, "muted"));
    if ((view.timeline || []).length) {
      parts.push(el("h2", "Latest in the ticket"));
      for (const entry of view.timeline) {
        const box = el("div", null, "entry " + entry.from + (entry.kind === "solution" ? " solution" : ""));
        const who = entry.from === "glpi" ? "GLPI" : "Chatwoot";
        box.append(el("div", [entry.author, who, entry.kind, entry.at].filter(Boolean).join(" · "), "meta"));
        box.append(el("div", entry.text));
        parts.push(box);
      }
    }
    const sync = view.sync || {};
    parts.push(el("h2", "Sync"));
    const dl = el("dl");
    pair(dl, "Hook", sync.hook);
    pair(dl, "Last message synced", sync.last_synced_message_id ? "#" + sync.last_synced_message_id : "none yet");
    if (sync.parked_on_hook) pair(dl, "Waiting on the hook", sync.parked_on_hook + " event(s)");
    parts.push(dl);
    for (const problem of sync.problems || []) {
      const line = problem.at + " " + problem.event + ": " + problem.outcome + " — " + problem.reason;
      parts.push(el("p", line, "problem"));
    }
    app.replaceChildren(...parts);
  }

  async function load(id) {
    shown = id;
    try {
      const response = await fetch("/dashboard/" + hook + "/conversation/" + id, {
        headers: { "X-Dashboard-Key": key }, cache: "no-store", credentials: "omit",
      });
      if (shown !== id) return;
      if (!response.ok) {
        say(response.status === 404 ? "Not available." : "The sync service did not answer.");
        return;
      }
      render(await response.json());
    } catch (error) {
      if (shown === id) say("The sync service did not answer.");
    }
  }

  window.addEventListener("message", (event) => {
    if (event.source !== window.parent || event.origin !== origin || typeof event.data !== "string") return;
    let message;
    try { message = JSON.parse(event.data); } catch (error) { return; }
    const conversation = message && message.event === "appContext" && message.data && message.data.conversation;
    const id = conversation ? Number(conversation.id) : NaN;
    if (Number.isInteger(id) && id > 0) load(id);
  });
  if (window.parent !== window) window.parent.postMessage("chatwoot-dashboard-app:fetch-info", origin);
  setInterval(() => { if (shown !== null && !document.hidden) load(shown); }, 30000);
})();
</script>
</body>
</html>
"""


def render_page(nonce: str, chatwoot_origin: str) -> str:
    """The page with its script's nonce and the Chatwoot origin it accepts the context from."""
    return _PAGE.replace("__NONCE__", nonce).replace("__ORIGIN__", html.escape(chatwoot_origin, quote=True))
