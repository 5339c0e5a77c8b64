"""Errors the user sees as one line on stderr (never a traceback)."""


class ReviewbotError(Exception):
    """A failure with a message fit for one line on stderr."""

    exit_code = 1


class SourceError(ReviewbotError):
    """SOURCE could not be read or fetched (bad file, unknown Message-ID)."""


class LoreError(ReviewbotError):
    """The lore server was unreachable, slow, or answered with garbage."""


class TreeError(ReviewbotError):
    """--tree is not a usable git tree or --base does not resolve."""
