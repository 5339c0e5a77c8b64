"""Per-file facts for the tree knowledge base (reviewbot.tree.knowledge).

One pass over a C file's text, lexical rather than through tree-sitter:
tree-sitter-c parses and queries the kernel at ~1.9 MB/s per core (measured
on 300 random .c files of 6.1), about 170 s on two cores for the 617 MB of
.c files alone before any fact is read, and the whole-tree build has a
5-minute budget; a regular-expression event scan of each function body runs
several times faster.  Comments, strings and preprocessor lines are blanked
first (newlines kept), function-like ``#define``s are read as functions of
their own (lock and sleep wrappers are often macros), function bodies are
found in kernel style (braces in column 0, as the duplicate index does).

Each function becomes a list of *events* (calls, lock acquires/releases,
block open/close, returns) that ``simulate()`` walks with a held-lock set
per block: a block ending in return/goto/break/continue does not leak its
lock state into the code after it (the `{ unlock(); return -E; }` shape).
The same walk runs again in the global phase once lock wrappers of other
files are known.

Lock classes follow lockdep roughly: ``struct sock.sk_callback_lock`` for a
member of a variable whose struct type the function declares (parameter or
local), ``*.member`` when the base's type is unknown and the member name is
specific, a global lock by its name, ``@N`` / ``@N.member`` for a lock
reached from the Nth parameter of a wrapper (substituted at the call site).
"""
from __future__ import annotations

import re
from bisect import bisect_right
from itertools import accumulate

from reviewbot.analysis import kbseeds as S
from reviewbot.analysis import lockflow as LF
from reviewbot.analysis.cparse import _designated_members_text

VERSION = 2

# -- lock vocabulary -------------------------------------------------------------

ACQ: dict[str, tuple[str, str | None]] = {}     # name -> (kind, fixed class or None: from arg 0)
REL: dict[str, tuple[str, str | None]] = {}
for _n, _k in LF.ACQUIRE.items():
    ACQ[_n] = (_k, LF.NOARG_KEY.get(_k))
for _n, _k in LF.TRYLOCK.items():
    ACQ[_n] = (_k, None)
for _n, _k in LF.ZEROLOCK.items():
    ACQ[_n] = (_k, None)
for _n, _k in LF.RELEASE.items():
    REL[_n] = (_k, LF.NOARG_KEY.get(_k))
for _n, (_c, _k) in S.EXTRA_ACQUIRE.items():
    ACQ[_n] = (_k, _c)
for _n, (_c, _k) in S.EXTRA_RELEASE.items():
    REL[_n] = (_k, _c)
for _n in ("lock_sock", "lock_sock_nested", "lock_sock_fast"):
    ACQ[_n] = ("sock", None)
for _n in ("release_sock", "unlock_sock_fast"):
    REL[_n] = ("sock", None)
for _n in ("local_lock", "local_lock_irq", "local_lock_irqsave", "local_lock_bh"):
    ACQ[_n] = ("spin", None)
for _n in ("local_unlock", "local_unlock_irq", "local_unlock_irqrestore", "local_unlock_bh"):
    REL[_n] = ("spin", None)
GUARD_KINDS = {"spinlock": "spin", "spinlock_irq": "spin", "spinlock_irqsave": "spin", "spinlock_bh": "spin",
               "raw_spinlock": "spin", "raw_spinlock_irq": "spin", "raw_spinlock_irqsave": "spin",
               "read_lock": "spin", "write_lock": "spin", "mutex": "mutex", "rwsem_read": "rwsem",
               "rwsem_write": "rwsem", "rcu": "rcu", "irq": "irq", "irqsave": "irq", "preempt": "preempt",
               "bh": "bh"}

GENERIC = LF.GENERIC_FIELDS
KEYWORDS = frozenset("if else return goto break continue while for switch sizeof do case default "
                     "typeof __typeof__ __typeof _Generic defined __attribute__ asm __asm__ "
                     "volatile __builtin_expect likely unlikely offsetof container_of "
                     "READ_ONCE WRITE_ONCE ARRAY_SIZE BUG_ON WARN_ON WARN_ON_ONCE".split())
# names whose call arguments are kept in the events (possible wrappers)
WRAPPERISH = re.compile(r"lock|acquire|hold|grab|take|enter|begin|down|_get$|^get_")

# -- text preparation ----------------------------------------------------------

_STRIP = re.compile(r"//[^\n]*|/\*.*?\*/|\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'|"
                    r"(?m:^[ \t]*#(?:[^\n\\]|\\.|\\\n)*)", re.S)
_DEFINE = re.compile(r"#\s*define\s+(\w+)\(([^)]*)\)((?:[^\n\\]|\\.|\\\n)*)", re.S)


def _blank(m: re.Match) -> str:
    s = m.group(0)
    c = s[0]
    if c == '"':
        return '""'
    if c == "'":
        return "0"
    if c == "#":
        _MACROS.append((m.start(), s))
    return "\n" * s.count("\n") if "\n" in s else " "


_MACROS: list = []


def prepare(text: str) -> tuple[str, list[tuple[int, str]]]:
    """(text with comments, strings and preprocessor lines blanked, the
    preprocessor lines blanked as (offset, text))."""
    _MACROS.clear()
    out = _STRIP.sub(_blank, text)
    got = list(_MACROS)
    _MACROS.clear()
    return out, got


# -- small parsers ----------------------------------------------------------------

_PARENS = re.compile(r"[(),\[\]{}]")


def split_args(text: str, pos: int) -> tuple[list[str], int]:
    """The arguments of a call whose '(' ends just before POS, and the
    offset after its ')'."""
    depth = 0
    start = pos
    args = []
    for m in _PARENS.finditer(text, pos):
        c = m.group(0)
        if c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                if c == ")":
                    a = text[start:m.start()].strip()
                    if a or args:
                        args.append(a)
                    return args, m.end()
                return args, m.end()
            depth -= 1
        elif depth == 0:
            args.append(text[start:m.start()].strip())
            start = m.end()
    return args, len(text)


_DECL = re.compile(r"\b(?:struct|union)\s+(\w+)\s*((?:\*|\s|const\b|__rcu\b)*)\s*(\w+)\s*(?=[;,=)\[]|__free)")
_PARAM_NAME = re.compile(r"(\w+)\s*(?:\[[^\]]*\])?\s*$")
_WS = re.compile(r"\s+")
_IDX = re.compile(r"\[[^\]]*\]")
_FIELDS = re.compile(r"->|\.")
_CAST = re.compile(r"^\(\s*(?:struct\s+)?\w+\s*\**\s*\)")


def declared_types(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in _DECL.finditer(text):
        out.setdefault(m.group(3), m.group(1))
    return out


def param_names(params: str) -> list[str]:
    if "(" not in params:
        names = []
        for p in params.split(","):
            m = _PARAM_NAME.search(p)
            names.append(m.group(1) if m and m.group(1) not in ("void", "int", "long") else "")
        return names
    out = []
    depth = 0
    cur = []
    for ch in params:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    names = []
    for p in out:
        p = p.strip()
        m = re.search(r"\(\s*\*\s*(\w+)\s*\)", p)     # function pointer parameter
        if m:
            names.append(m.group(1))
            continue
        m = _PARAM_NAME.search(p)
        names.append(m.group(1) if m and m.group(1) not in ("void", "int", "long") else "")
    return names


def strip_expr(e: str) -> str:
    e = _WS.sub("", e)
    while True:
        old = e
        if e.startswith("&"):
            e = e[1:]
        if e.startswith("(") and e.endswith(")") and e.count("(") == 1:
            e = e[1:-1]
        c = _CAST.match(e)
        if c:
            e = e[c.end():]
        if e == old:
            return e


def lock_class(expr: str, types: dict[str, str], params: list[str]) -> str | None:
    """The class of the lock at EXPR (see the module docstring), or None."""
    e = strip_expr(expr)
    if not e:
        return None
    parts = _FIELDS.split(_IDX.sub("", e))
    base = parts[0]
    if not base.isidentifier():
        return None
    fields = [p for p in parts[1:] if p]
    if not fields:
        if base in params:
            return f"@{params.index(base)}"
        if base in types:
            return None           # a local pointer to a lock: class unknown
        return base
    if base in types:
        return f"struct {types[base]}." + ".".join(fields)
    if base in params:
        return f"@{params.index(base)}." + ".".join(fields)
    last = fields[-1]
    if last not in GENERIC and len(last) > 4:
        return "*." + last
    return None


def substitute(template: str, args: list[str], types: dict[str, str], params: list[str]) -> str | None:
    """A wrapper's class template '@N[.member...]' at a call site."""
    if not template.startswith("@"):
        return template
    num, _, rest = template[1:].partition(".")
    try:
        arg = args[int(num)]
    except (ValueError, IndexError):
        return None
    e = strip_expr(arg)
    if rest:
        e = f"{e}->{rest.replace('.', '->')}" if not e.startswith("&") else f"{e}.{rest}"
    return lock_class(e, types, params)


# -- events -----------------------------------------------------------------------

_EV = re.compile(r"\b(if|else|return|goto|break|continue)\b|([A-Za-z_]\w*)\s*\(|([{};])|"
                 r"(?:->|\.)\s*function\s*=\s*&?\s*([A-Za-z_]\w*)\s*;")
_ASSIGN = re.compile(r"([A-Za-z_]\w*(?:(?:->|\.)\w+)*)\s*=\s*(?:\(\s*[\w\s\*]+\)\s*)?$")
_ASSIGN_VAR = re.compile(r"([A-Za-z_]\w*(?:(?:->|\.)\w+)*)\s*$")
_FIRSTARG = re.compile(r"\s*&?\s*\(?\s*([A-Za-z_]\w*)\s*(?=[,)]|->|\.|\[)")
_ARG_ACQ = re.compile(r"(^|_)(get|hold|grab|inc|ref|enable|register|prepare|start|open|"
                      r"map|attach|add|alloc|create|init|request|pin|claim)($|_)")
_RELEASE_RE = re.compile(r"(^|_)" + S.RELEASE_WORDS + r"($|_)")
_FAIL_IF = re.compile(r"\s*if\s*\(\s*(?:unlikely\s*\(\s*)?(!?\s*IS_ERR(?:_OR_NULL)?\s*\(\s*)?(!)?\s*(\w+)\s*"
                      r"(?:<\s*0|!=\s*0)?\s*\)*\s*(?:\{|goto\s+(\w+)\s*;)")
_FREE_ATTR = re.compile(r"__free\s*\(\s*(\w+)\s*\)\s*=\s*(\w+)\s*\(")
_GUARD = re.compile(r"\b(scoped_guard|guard)\s*\(\s*(\w+)\s*\)?\s*[(,]\s*([^;{)]*)")
_OPS = re.compile(r"\bstruct\s+(\w+)\s+(\w+)(?:\s*\[[^\]]*\])?\s*=\s*\{")
_DEFINE_FREE = re.compile(r"\bDEFINE_FREE\s*\(\s*(\w+)\s*,[^,]*,\s*(?:if\s*\([^)]*\)\s*)?(\w+)\s*\(")
_DEFINE_GUARD = re.compile(r"\bDEFINE_GUARD\s*\(\s*(\w+)\s*,[^,]*,\s*(\w+)\s*\([^)]*\)\s*,\s*(\w+)\s*\(")
_STUB_BODY = re.compile(r"^\{\s*(?:return\s*[-\w\s()*]*;\s*)?\}$")


# name classes (bits), worked out once per name
_K_KEYWORD, _K_LOCK, _K_GUARD, _K_WRAP, _K_SLEEP, _K_GFP, _K_REG, _K_REL, _K_ARGACQ = (1 << i for i in range(9))
_CLASS: dict[str, int] = {}


def _classify(name: str) -> int:
    k = 0
    if name in KEYWORDS:
        k |= _K_KEYWORD
    if name in ACQ or name in REL:
        k |= _K_LOCK
    if name in ("guard", "scoped_guard"):
        k |= _K_GUARD
    if WRAPPERISH.search(name):
        k |= _K_WRAP
    if name in S.SLEEPS:
        k |= _K_SLEEP
    if name in S.GFP_ALLOCS:
        k |= _K_GFP
    if name in S.REGISTRATIONS:
        k |= _K_REG
    if _RELEASE_RE.search(name):
        k |= _K_REL
    elif _ARG_ACQ.search(name):
        k |= _K_ARGACQ
    if len(_CLASS) > 200000:
        _CLASS.clear()
    _CLASS[name] = k
    return k


_EV2 = re.compile(r"(?<![\w.>])(?:(if|else)|(return|goto|break|continue))\b|"
                  r"(?<![\w.>])(?:([A-Za-z_]\w*+(?:(?:->|\.)\w++)*+)\s*+=(?!=)\s*+)?([A-Za-z_]\w*+)\s*+\(|"
                  r"([{};])|([A-Za-z_]\w*)\s*(?:->|\.)\s*(" + "|".join(S.MEMBER_NAMES) + r")\s*=\s*&?\s*([A-Za-z_]\w*)\s*;")


def body_events(body: str, base_line: int, line_starts: list[int], off: int, params: list[str],
                types: dict[str, str], fn: dict) -> list:
    """The events of one function body (BODY starts at OFF in the file).
    Fills FN's side facts (registrations, sleep seeds, mining)."""
    ev: list = []
    push = ev.append
    stack = [False]            # per open block: its last statement is terminal
    pending_kw = None          # return/goto/... of the statement being read
    if_seen = False
    assigned: dict[str, tuple[str, int]] = {}   # var -> (call, line)
    asg_calls: list[str] = []
    pairs: set = set()
    fails: list = []
    regs = fn["reg"]
    seeds = fn["seed"]
    starts = line_starts
    classes = _CLASS

    for m in _EV2.finditer(body):
        punct = m.group(5)
        if punct is not None:
            if punct == ";":
                stack[-1] = pending_kw is not None and not if_seen
                if pending_kw == "return":
                    push("R")
                pending_kw = None
                if_seen = False
            elif punct == "{":
                stack.append(False)
                push("{")
                if_seen = False
                pending_kw = None
            else:
                term = stack.pop() if len(stack) > 1 else False
                push("}T" if term else "}")
                stack[-1] = False
                if_seen = False
                pending_kw = None
            continue
        name = m.group(4)
        if name is None:
            if m.group(1) is not None:
                if_seen = True
            elif m.group(2) is not None:
                pending_kw = m.group(2)
            elif m.group(7) is not None:
                # `x->member = fn;`: a callback whose caller gives it a context
                st = types.get(m.group(6))
                got = S.member_context(st, m.group(7))
                if got is not None:
                    via = f".{m.group(7)}" + (f" of struct {st}" if st and (st, m.group(7)) in S.MEMBER_CONTEXTS else "")
                    regs.append((got[0], m.group(8), via, bisect_right(starts, off + m.start())))
            continue
        k = classes.get(name)
        if k is None:
            k = _classify(name)
        if k & _K_KEYWORD:
            continue
        ln = bisect_right(starts, off + m.start(4))
        pos = m.end()
        if k & _K_LOCK:
            kind, fixed = ACQ[name] if name in ACQ else REL[name]
            if fixed is None:
                args, _ = split_args(body, pos)
                if kind == "sock":
                    cls = "struct sock.sk_lock" if args else None
                else:
                    cls = lock_class(args[0], types, params) if args else None
            else:
                cls = fixed
            push(("a" if name in ACQ else "r", cls, kind, ln, name))
            if k & _K_SLEEP:
                seeds.append((name, ln, S.SLEEPS[name]))
            continue
        if k & _K_GUARD:
            g = _GUARD.match(body, m.start(4))
            if g:
                gk = GUARD_KINDS.get(g.group(2), "mutex" if "mutex" in g.group(2) else "spin")
                cls = lock_class(g.group(3), types, params) if g.group(3).strip() else g.group(2)
                if gk in ("rcu", "irq", "bh", "preempt"):
                    cls = gk
                # held to the end of the enclosing (guard) or following (scoped_guard) block
                push(("g" if name == "guard" else "G", cls, gk, ln, f"{name}({g.group(2)})"))
                if gk in ("mutex", "rwsem"):
                    seeds.append((f"{name}({g.group(2)})", ln, "sleeping lock"))
            continue
        # an ordinary call
        args = split_args(body, pos)[0] if k & _K_WRAP else None
        push(("c", name, ln, args))
        if k & (_K_SLEEP | _K_GFP | _K_REG):
            if k & _K_SLEEP:
                seeds.append((name, ln, S.SLEEPS[name]))
            elif k & _K_GFP:
                a = split_args(body, pos)[0] if args is None else args
                i = S.GFP_ALLOCS[name]
                g = a[i] if -len(a) <= i < len(a) else ""
                if any(x in g for x in S.SLEEPING_GFP):
                    seeds.append((name, ln, "allocation with " + _WS.sub(" ", g)))
            if k & _K_REG:
                reg = S.REGISTRATIONS[name]
                a = split_args(body, pos)[0] if args is None else args
                if reg[1] < len(a):
                    cb = strip_expr(a[reg[1]])
                    if cb.isidentifier() and cb not in ("NULL", "0"):
                        regs.append((reg[0], cb, name, ln))
        # release mining: v = X(...); ... Y(v ...)
        if k & (_K_REL | _K_ARGACQ) and assigned is not None:
            fa = _FIRSTARG.match(body, pos)
            if fa is not None:
                v = fa.group(1)
                got = assigned.get(v)
                if got is not None:
                    if got[0] != name and k & _K_REL:
                        pairs.add((got[0], name))
                elif k & _K_ARGACQ:
                    assigned[v] = (name, ln)      # dev_hold(dev) ... dev_put(dev)
                    asg_calls.append(name)
        var = m.group(3)
        if var is not None and var.isidentifier():
            assigned[var] = (name, ln)
            asg_calls.append(name)
            # failure handling right after: if (var) { ... Y(arg0) ... } or goto label
            semi = body.find(";", pos)
            if semi < 0:
                continue
            fi = _FAIL_IF.match(body, semi + 1)
            if fi is None or fi.group(3) != var:
                continue
            args2, end = split_args(body, pos)
            if not args2:
                continue
            fi = _FAIL_IF.match(body, body.find(";", end) + 1)
            if fi is None or fi.group(3) != var:
                continue
            root = _FIRSTARG.match(args2[0] + ")")
            if fi.group(4):         # if (ret) goto err;  err: ... release
                lab = re.search(r"\n\s*" + fi.group(4) + r"\s*:(?!:)", body)
                lo = lab.end() if lab else len(body)
                r_ = body.find("return", lo)
                hi = len(body) if r_ < 0 else r_
            else:
                lo, hi = fi.end(), _block_end(body, fi.end())
            inside = _CALL_ARG0.findall(body, lo, hi)
            rel = sorted({c for c, a0 in inside if root is not None and a0 == root.group(1)
                          and c != name and _RELEASE_RE.search(c)})
            fails.append((name, rel))
    fn["asg"] = sorted(set(asg_calls))
    fn["pairs"] = sorted(pairs)
    fn["fail"] = fails
    return ev


_CALL_ARG0 = re.compile(r"([A-Za-z_]\w*)\s*\(\s*&?\s*\(?\s*(\w+)")


def _block_end(text: str, pos: int) -> int:
    depth = 1
    for m in re.finditer(r"[{}]", text[pos:pos + 4000]):
        depth += 1 if m.group(0) == "{" else -1
        if depth == 0:
            return pos + m.start()
    return min(len(text), pos + 4000)


# -- simulation -------------------------------------------------------------------

_PSEUDO_KINDS = ("rcu", "irq", "bh", "preempt")


def simulate(ev: list, wrappers: dict, types: dict[str, str] | None = None, params: list[str] | None = None):
    """Walk EV.  WRAPPERS: name -> [(op 'a'|'r', class template, kind)].
    Returns (calls [(callee, line, held)], acquires [(class, kind, line, via)],
    order [(held class, class, line, via)], exit sets, unmatched releases)
    where held is a tuple of (class, kind)."""
    types = types or {}
    params = params or []
    held: list = []            # [(class, kind, line, via)]
    blocks: list = []          # held snapshot at each open block; guards to drop at its end
    calls = []
    acq = []
    order = []
    exits = []
    unmatched = []
    scoped_next = []

    def take(cls, kind, line, via):
        if cls is None:
            return
        if kind not in _PSEUDO_KINDS and not cls.startswith("@"):
            for h in held:
                if h[0] != cls and h[1] not in _PSEUDO_KINDS and not h[0].startswith("@"):
                    order.append((h[0], cls, line, via))
        held.append((cls, kind, line, via))
        acq.append((cls, kind, line, via))

    def drop(cls, kind, line, via):
        if cls is None:
            return
        for i in range(len(held) - 1, -1, -1):
            if held[i][0] == cls:
                del held[i]
                return
        unmatched.append((cls, kind, line, via))

    for e in ev:
        if type(e) is str:
            if e == "{":
                blocks.append((list(held), scoped_next))
                scoped_next = []
            elif e == "R":
                exits.append(tuple(h[0] for h in held))
            else:
                if not blocks:
                    continue
                snap, guards = blocks.pop()
                if e == "}T":
                    held[:] = snap
                for g in guards:
                    if g in held:
                        held.remove(g)
            continue
        op = e[0]
        if op == "c":
            _, name, line, args = e
            w = wrappers.get(name)
            if w:
                for wop, tmpl, kind in w:
                    cls = substitute(tmpl, args or [], types, params) if tmpl.startswith("@") else tmpl
                    if wop == "a":
                        calls.append((name, line, tuple((h[0], h[1]) for h in held)))
                        take(cls, kind, line, name)
                    else:
                        drop(cls, kind, line, name)
                        calls.append((name, line, tuple((h[0], h[1]) for h in held)))
                continue
            calls.append((name, line, tuple((h[0], h[1]) for h in held)))
        elif op == "a":
            take(e[1], e[2], e[3], e[4])
        elif op == "r":
            drop(e[1], e[2], e[3], e[4])
        elif op in ("g", "G"):
            take(e[1], e[2], e[3], e[4])
            h = held[-1] if e[1] is not None else None
            if h is not None:
                if op == "g" and blocks:
                    blocks[-1][1].append(h)
                elif op == "G":
                    scoped_next.append(h)
    exits.append(tuple(h[0] for h in held))
    return calls, acq, order, exits, unmatched


RELEASE_NAME = re.compile(r"(^|_)(unlock|release|put|end|exit|leave|up|drop|done|finish|out)($|_)")


def wrapper_ops(name, acq, exits, unmatched) -> list:
    """What a function does to a caller's locks: [('a'|'r', class template, kind)]
    (every exit holds a lock it took; or it releases one it did not take)."""
    out = []
    common = set()
    if exits:
        common = set(exits[0])
        for x in exits[1:]:
            common &= set(x)
        seen = {u[0] for u in unmatched}
        for cls, kind, _, _ in acq:
            if cls in common and cls not in seen and kind not in ("rcu", "irq", "bh", "preempt"):
                seen.add(cls)
                out.append(("a", cls, kind))
    seen = set()
    if not RELEASE_NAME.search(name):
        return out
    for cls, kind, _, _ in unmatched:
        if cls not in seen and cls not in common and kind not in ("rcu", "irq", "bh", "preempt"):
            seen.add(cls)
            out.append(("r", cls, kind))
    return out


# -- a file -----------------------------------------------------------------------

_BRACE = re.compile(r"\n[{}]")
_NL = re.compile(r"\n")
_STATIC = re.compile(r"\bstatic\b")
_INLINE = re.compile(r"\binline\b|__always_inline")
_HEAD_NAME = re.compile(r"([A-Za-z_]\w*)\s*\(")
_NOT_NAMES = frozenset(("__attribute__", "__printf", "__aligned", "__section", "__acquires", "__releases",
                        "__must_hold", "__scanf", "__malloc", "__alloc_size", "__diag_push",
                        "__diag_ignore", "__no_sanitize_address", "__packed", "__cold", "__weak",
                        "__init", "__exit", "__always_inline", "noinline", "__must_check"))


def _functions(text: str):
    """(name, header text, body offset, end offset) of kernel-style functions."""
    out = []
    open_off = None
    prev_end = 0
    for m in _BRACE.finditer(text):
        at = m.start() + 1
        if text[at] == "{":
            open_off = at
            continue
        if open_off is not None:
            lo = max(prev_end, open_off - 800)
            cut = max(text.rfind(";", lo, open_off), text.rfind("}", lo, open_off))
            head = text[(cut + 1 if cut >= 0 else lo):open_off]
            h = head.strip()
            if h.endswith(")") and "=" not in h[:max(h.find("("), 0)]:
                for nm in _HEAD_NAME.finditer(h):
                    name = nm.group(1)
                    if name not in _NOT_NAMES and name not in KEYWORDS:
                        pstart = h.find("(", nm.start())
                        out.append((name, h, h[pstart + 1:-1] if pstart >= 0 else "",
                                    open_off, at + 1, open_off - len(head) + (len(head) - len(head.lstrip()))))
                        break
            open_off = None
        prev_end = at + 1
    return out


def extract(text: str, path: str) -> dict:
    """The facts of one file (JSON-ready)."""
    clean, pre = prepare(text)
    starts = [0]
    starts.extend(accumulate(len(x) + 1 for x in clean.split("\n")))
    funcs = []
    is_header = path.endswith(".h")
    for name, head, params_text, body_off, end_off, head_off in _functions(clean):
        body = clean[body_off:end_off]
        params = param_names(params_text)
        types = declared_types(params_text + ")")
        types.update(declared_types(body))
        fn = {"n": name, "l": bisect_right(starts, head_off), "e": bisect_right(starts, end_off - 1),
              "reg": [], "seed": [], "p": params, "t": types}
        flags = 0
        if _STATIC.search(head):
            flags |= 1
        if _INLINE.search(head):
            flags |= 2
        if len(body) < 160 and _STUB_BODY.match(_WS.sub(" ", body)):
            flags |= 4
        if is_header:
            flags |= 8
        fn["f"] = flags
        fn["ev"] = body_events(body, 0, starts, body_off, params, types, fn)
        frees = _FREE_ATTR.findall(body) if "__free" in body else None
        if frees:
            fn["free"] = [(acq, rel) for rel, acq in frees]
        funcs.append(fn)
    # function-like macros that lock, release or sleep act as functions
    for off, src in pre:
        m = _DEFINE.match(src.lstrip())
        if not m:
            continue
        mbody = m.group(3).replace("\\\n", " ")
        if not any(k in mbody for k in ("lock", "sleep", "wait", "down", "schedule")):
            continue
        params = [p.strip() for p in m.group(2).split(",")]
        fn = {"n": m.group(1), "l": bisect_right(starts, off), "e": bisect_right(starts, off + len(src)),
              "reg": [], "seed": [], "p": params, "t": {}, "f": 16 | (8 if is_header else 0)}
        fn["ev"] = body_events("{" + mbody + ";}", 0, starts, off, params, {}, fn)
        funcs.append(fn)
    # ops tables: struct T v = { .member = fn, ... }
    ops = []
    for m in _OPS.finditer(clean):
        if m.group(1) not in ("net_device_ops", "ethtool_ops"):
            continue
        end = _block_end(clean, m.end())
        members = _designated_members_text(clean[m.end() - 1:end + 1])
        ops.append((m.group(1), m.group(2), bisect_right(starts, m.start()),
                    [(mm, v) for mm, v, _ in members if v.isidentifier()]))
    # file-level registrations (DEFINE_TIMER, DECLARE_TASKLET at top level)
    top = []
    for m in re.finditer(r"^(DEFINE_TIMER|DECLARE_TASKLET(?:_OLD)?)\s*\(\s*\w+\s*,\s*(\w+)", clean, re.M):
        top.append(("softirq", m.group(2), m.group(1), bisect_right(starts, m.start())))
    dfree = [(a, b) for a, b in _DEFINE_FREE.findall(text)] if "DEFINE_FREE" in text else []
    dguard = [(a, b, c) for a, b, c in _DEFINE_GUARD.findall(text)] if "DEFINE_GUARD" in text else []
    # the file's own lock wrappers, to a fixpoint within the file
    local = {}
    for _ in range(4):
        changed = False
        for fn in funcs:
            calls, acq, order, exits, unmatched = simulate(fn["ev"], local, fn["t"], fn["p"])
            w = wrapper_ops(fn["n"], acq, exits, unmatched)
            if w and local.get(fn["n"]) != w and fn["n"] not in ACQ and fn["n"] not in REL:
                local[fn["n"]] = w
                changed = True
        if not changed:
            break
    return {"v": VERSION, "funcs": funcs, "wrap": local, "ops": ops, "top": top, "dfree": dfree, "dguard": dguard}
