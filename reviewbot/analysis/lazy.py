"""Modules imported on first use."""
from __future__ import annotations

import importlib


class LazyModule:
    """A module imported on first use (numpy and the duplicate index only
    when a rule asks for them; the mail stack when mail is first read)."""

    def __init__(self, name: str):
        self.__dict__["_lazy_name"] = name

    def __getattr__(self, attr):
        mod = importlib.import_module(self.__dict__["_lazy_name"])
        value = getattr(mod, attr)
        self.__dict__[attr] = value     # next time a plain attribute lookup
        return value


class LazyPattern:
    """re.compile(pattern, flags), done on first use: rule modules define
    many patterns, and a review uses about half of them (each costs ~0.5 ms
    to compile, at rule discovery otherwise)."""

    def __init__(self, pattern, flags: int = 0):
        self.__dict__["_lazy"] = (pattern, flags)

    def __getattr__(self, attr):
        import re
        value = getattr(re.compile(*self.__dict__["_lazy"]), attr)
        self.__dict__[attr] = value     # search, match, ... bound once
        return value
