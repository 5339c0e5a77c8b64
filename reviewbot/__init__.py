"""reviewbot: review Linux kernel patch series from lore and draft replies."""

__version__ = "0.1.0"
