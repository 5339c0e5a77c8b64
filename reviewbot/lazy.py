"""Modules imported on first use."""
from __future__ import annotations

import importlib


class LazyModule:
    """A module imported on first use.  The duplicated-code rules run in a
    forked process (engine.Prefork): importing numpy and the index there, not
    at rule discovery, keeps that import off the main process's path; the
    mail stack is imported when mail is first read, not when that process
    unpickles the contexts."""

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
