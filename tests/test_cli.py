"""The command line as a user meets it: --help everywhere, settings from
git config and -c, a progress line only on a terminal, the summary table."""
from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from reviewbot.cli import cli

SEEDS = Path(__file__).resolve().parent / "data" / "seeds"


def commands(group: click.Group, path=()):
    for name, cmd in sorted(group.commands.items()):
        yield path + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from commands(cmd, path + (name,))


ALL = [pytest.param(p, c, id=" ".join(p)) for p, c in [((), cli), *commands(cli)]]


def test_known_commands_are_there():
    names = {" ".join(p) for p, _ in commands(cli)}
    assert {"review", "rules", "rules explain", "config", "check"} <= names


@pytest.mark.parametrize("path,cmd", ALL)
def test_help(path, cmd):
    res = CliRunner().invoke(cli, [*path, "--help"], prog_name="reviewbot")
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"Usage: reviewbot {' '.join(path)}".rstrip())
    first = (cmd.help or "").strip().splitlines()[0]
    assert first and first[:40] in " ".join(res.output.split())
    for p in cmd.params:
        if isinstance(p, click.Option) and not p.hidden:
            assert p.help, f"option {p.opts} of `{' '.join(path)}` has no help"
    assert "-h, --help" in res.output


def private_env(tmp_path: Path, gitconfig: str) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / ".gitconfig").write_text(gitconfig, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "XDG_"))}
    env.update(HOME=str(home), GIT_CONFIG_GLOBAL=str(home / ".gitconfig"), GIT_CONFIG_NOSYSTEM="1",
               LC_ALL="C.UTF-8")
    return env


def run(args, env, cwd, **kw):
    return subprocess.run([sys.executable, "-m", "reviewbot.cli", *args], env=env, cwd=cwd,
                          capture_output=True, timeout=120, **kw)


def config_lines(proc) -> dict[str, tuple[str, str]]:
    assert proc.returncode == 0, proc.stderr.decode()
    out = {}
    for line in proc.stdout.decode().splitlines():
        m = re.fullmatch(r"reviewbot\.([a-z-]+)=(.*)\t# (.*)", line)
        assert m, line
        out[m.group(1)] = (m.group(2), m.group(3))
    return out


def test_config_shows_values_and_origins(tmp_path):
    env = private_env(tmp_path, "[user]\n\tname = Jörg Rödel\n\temail = joro@example.org\n"
                                "[reviewbot]\n\tlore-url = http://127.0.0.1:1/\n")
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], env=env, check=True)
    subprocess.run(["git", "-C", str(repo), "config", "reviewbot.min-confidence", "high"], env=env, check=True)
    got = config_lines(run(["config"], env, repo))
    assert got["lore-url"] == ("http://127.0.0.1:1/", "git config reviewbot.lore-url")
    assert got["min-confidence"] == ("high", "git config reviewbot.min-confidence")
    assert got["from"] == ("Jörg Rödel <joro@example.org>", "git config user.name/user.email")
    assert got["format"] == ("text", "default")
    # outside the repository its local setting is gone
    assert config_lines(run(["config"], env, tmp_path))["min-confidence"] == ("medium", "default")
    # sendemail.from wins over user.*, -c over everything (reviewbot. prefix optional)
    subprocess.run(["git", "config", "--global", "sendemail.from", "Reviewer <rev@example.org>"], env=env, check=True)
    got = config_lines(run(["-c", "min-confidence=low", "-c", "reviewbot.format=json", "config"], env, repo))
    assert got["from"] == ("Reviewer <rev@example.org>", "git config sendemail.from")
    assert got["min-confidence"] == ("low", "-c on the command line")
    assert got["format"] == ("json", "-c on the command line")


def test_c_overrides_change_what_review_does(tmp_path):
    env = private_env(tmp_path, "[user]\n\tname = Nobody\n\temail = nobody@example.org\n")
    seed = str(SEEDS / "seed004.mbox")
    plain = run(["review", seed], env, tmp_path)
    assert plain.stdout.startswith(b"=====") and b"\n-- \nNobody\n" in plain.stdout
    js = run(["-c", "format=json", "-c", "from=Jörg Rödel <joro@example.org>", "review", seed], env, tmp_path)
    import json
    data = json.loads(js.stdout)
    assert data["replies"][0]["body"].endswith("-- \nJörg\n")
    # a bad -c value is a one-line error, not a traceback
    bad = run(["-c", "min-confidence=sometimes", "review", seed], env, tmp_path)
    assert bad.returncode != 0 and len(bad.stderr.decode().splitlines()) == 1, bad.stderr
    assert bad.stderr.decode() == ("reviewbot: reviewbot.min-confidence='sometimes' (-c on the command line): "
                                   "expected one of low, medium, high\n")
    # ... while `reviewbot config` still shows it, to find where it came from
    shown = config_lines(run(["-c", "min-confidence=sometimes", "config"], env, tmp_path))
    assert shown["min-confidence"] == ("sometimes", "-c on the command line")


def test_summary_table(tmp_path):
    env = private_env(tmp_path, "")
    tree = tmp_path / "tree"
    sys.path.insert(0, str(Path(__file__).parent))
    from support import ktree
    ktree.make_tree(tree, ktree.kernel_files(["net/xfrm/xfrm_input.c"]))
    proc = run(["review", str(SEEDS / "seed004.mbox"), "--tree", str(tree)], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    i = lines.index(next(l for l in lines if l.startswith("patch ")))
    assert lines[i].split() == ["patch", "applies", "error", "warning", "info", "subject"]
    row = lines[i + 1].split()
    assert row[:5] == ["1/1", "NO", "0", "1", "0"], lines[i + 1]
    assert " ".join(row[5:]) == "xfrm : lock input tasklet skb queue"
    assert lines[-1] == "1 reply drafted"
    assert proc.stderr == b""


def run_in_pty(args, env, cwd) -> tuple[int, bytes, bytes]:
    """stderr on a terminal, stdout on a pipe (as with `reviewbot ... > file`)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "reviewbot.cli", *args], env=env, cwd=cwd,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    err = b""
    while True:
        r, _, _ = select.select([master], [], [], 60)
        if not r:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:      # EIO: the child closed the terminal
            break
        if not chunk:
            break
        err += chunk
    out = proc.stdout.read()
    os.close(master)
    return proc.wait(60), out, err


def test_progress_only_on_a_terminal(tmp_path):
    env = private_env(tmp_path, "")
    tree = tmp_path / "tree"
    subprocess.run(["git", "init", "-q", str(tree)], env=env, check=True)
    (tree / "f").write_text("x\n")
    subprocess.run(["git", "-C", str(tree), "add", "f"], env=env, check=True)
    subprocess.run(["git", "-C", str(tree), "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-qm", "x"],
                   env=env, check=True)
    args = ["review", str(SEEDS / "seed004.mbox"), "--tree", str(tree)]
    code, out, err = run_in_pty(args, env, tmp_path)
    assert code == 0, err
    assert b"fetching " in err and b"applying 1 patch(es)" in err
    assert b"\r\x1b[K" in err and err.endswith(b"\r\x1b[K")       # the line is cleared at the end
    assert b"\x1b" not in out                                      # stdout is a pipe: plain text
    # not a terminal: nothing on stderr at all
    proc = run(args, env, tmp_path)
    assert proc.returncode == 0 and proc.stderr == b""
    assert proc.stdout == out
