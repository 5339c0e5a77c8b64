"""Settings: defaults, then git config (`reviewbot.*`, `sendemail.from`,
`user.*`), then `-c key=value` overrides, then command-line options.
Each value remembers where it came from (`reviewbot config` shows it)."""
from __future__ import annotations

import subprocess
from dataclasses import dataclass, field

DEFAULTS = {
    "lore-url": "https://lore.kernel.org/",
    "min-confidence": "medium",
    "from": "",
    "timeout": "30",
    "retries": "3",
    "grace-hours": "6",
    "format": "text",
}


@dataclass
class Settings:
    values: dict[str, str] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.values.get(key, default)

    def set(self, key: str, value: str, origin: str) -> None:
        self.values[key] = value
        self.origins[key] = origin

    def items(self):
        return [(k, self.values[k], self.origins.get(k, "")) for k in sorted(self.values)]


def git_config_get_regexp(pattern: str, cwd: str | None = None) -> list[tuple[str, str]]:
    try:
        proc = subprocess.run(["git", "config", "--null", "--get-regexp", pattern], capture_output=True,
                              cwd=cwd, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    out = []
    for item in proc.stdout.decode(errors="replace").split("\0"):
        if not item:
            continue
        key, _, value = item.partition("\n")
        out.append((key, value))
    return out


def load(overrides: list[str] = (), cwd: str | None = None) -> Settings:
    s = Settings()
    for k, v in DEFAULTS.items():
        s.set(k, v, "default")
    user = {}
    for key, value in git_config_get_regexp(r"^(reviewbot\.|sendemail\.from$|user\.(name|email)$)", cwd):
        if key.startswith("reviewbot."):
            s.set(key[len("reviewbot."):], value, f"git config {key}")
        else:
            user[key] = value
    if s.get("from") == "":
        if user.get("sendemail.from"):
            s.set("from", user["sendemail.from"], "git config sendemail.from")
        elif user.get("user.email"):
            name = user.get("user.name", "")
            s.set("from", f"{name} <{user['user.email']}>" if name else user["user.email"],
                  "git config user.name/user.email")
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if key.startswith("reviewbot."):
            key = key[len("reviewbot."):]
        if not sep:
            value = "true"
        s.set(key, value, "-c on the command line")
    return s


# Settings with a fixed set of values or a number: checked before use, so
# that a bad value is one line naming where it was set.
CHOICES = {"min-confidence": ("low", "medium", "high"), "format": ("text", "json")}
NUMBERS = {"timeout": float, "retries": int, "grace-hours": float}


def validate(s: Settings) -> Settings:
    from reviewbot.errors import ReviewbotError
    for key, allowed in CHOICES.items():
        v = s.get(key)
        if v is not None and v not in allowed:
            raise ReviewbotError(f"reviewbot.{key}={v!r} ({s.origins.get(key, '?')}): "
                                 f"expected one of {', '.join(allowed)}")
    for key, kind in NUMBERS.items():
        v = s.get(key)
        if v is None:
            continue
        try:
            ok = kind(v) >= 0
        except ValueError:
            ok = False
        if not ok:
            raise ReviewbotError(f"reviewbot.{key}={v!r} ({s.origins.get(key, '?')}): "
                                 f"expected a {'whole ' if kind is int else ''}number >= 0")
    return s
