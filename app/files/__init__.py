"""Files both ways: Chatwoot attachments become GLPI Documents, technicians' Documents become Chatwoot attachments.

:mod:`app.files.policy` decides (pure: where a file may come from, what each side accepts, how it is named);
:mod:`app.files.transfer` moves bytes (streamed to a temporary file, size-capped, paced per hook).
"""
