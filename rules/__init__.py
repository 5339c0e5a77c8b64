"""reviewbot's rules: one module per rule.  Installed as reviewbot.rules."""
