"""Two-way sync: what technicians write in GLPI on the tickets we own, back into their Chatwoot conversations."""
