"""Reply templates (jinja2).  Installed as reviewbot.templates."""
