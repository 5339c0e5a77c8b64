"""Read side of the tree knowledge base (reviewbot.tree.knowledge): the
stored answers of a full base, with an overlay (a delta's changed files,
and a series' post-images) whose functions are answered from their facts at
query time.  Read-only, in-process.
"""
from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import zlib
from collections import OrderedDict
from pathlib import Path

from reviewbot.analysis import facts as F
from reviewbot.analysis import kbseeds as S

PSEUDO = ("rcu", "irq", "bh", "preempt")
_STEP_PATH = re.compile(r"\(([^\s:()]+):\d+\)")
_FACTS: "OrderedDict[str, dict]" = OrderedDict()


def facts_of_text(path: str, text: str) -> dict:
    """F.extract(text, path), remembered by content (a series shows the
    same post-image again and again)."""
    key = hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=16).hexdigest() + path[-2:]
    got = _FACTS.get(key)
    if got is None:
        from reviewbot.tree.knowledge import extract_bytes
        got = _FACTS[key] = extract_bytes(path, text.encode("utf-8", "replace"))
        if len(_FACTS) > 64:
            _FACTS.popitem(last=False)
    else:
        _FACTS.move_to_end(key)
    return got


def _ro(p: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{p}?mode=ro&immutable=1", uri=True, check_same_thread=False)
    return conn


class Knowledge:
    """One tree's knowledge: a full base and, for a delta, its changed files."""

    def __init__(self, base: sqlite3.Connection, meta: dict, delta_facts: dict[str, dict], path: Path):
        self.db = base
        self.meta = meta
        self.delta_facts = delta_facts        # path -> facts ({} funcs for a deleted file)
        self.path = path
        self._wrap: dict = {}

    @classmethod
    def load(cls, p: Path, cache: Path) -> "Knowledge":
        conn = _ro(p)
        meta = dict(conn.execute("SELECT k, v FROM meta").fetchall())
        if not meta.get("parent"):
            return cls(conn, meta, {}, p)
        base = _ro(cache / meta["parent"])
        delta = {}
        blobs = dict(conn.execute("SELECT blob, facts FROM blobs").fetchall())
        for path, blob in conn.execute("SELECT path, blob FROM files").fetchall():
            z = blobs.get(blob)
            delta[path] = json.loads(zlib.decompress(z)) if z else {"funcs": []}
        conn.close()
        return cls(base, meta, delta, p)

    @property
    def commit(self) -> str:
        return self.meta["commit"]

    def view(self, texts: dict[str, str] | None = None) -> "View":
        over = dict(self.delta_facts)
        for path, text in (texts or {}).items():
            over[path] = facts_of_text(path, text) if text else {"funcs": []}
        return View(self, over)

    @property
    def wrapper_names(self) -> frozenset:
        got = self._wrap.get(None)
        if got is None:
            got = self._wrap[None] = frozenset(r[0] for r in self.db.execute("SELECT name FROM wrappers"))
        return got

    def wrapper(self, name: str):
        if name not in self.wrapper_names:
            return None
        got = self._wrap.get(name, 0)
        if got == 0:
            row = self.db.execute("SELECT ops FROM wrappers WHERE name=?", (name,)).fetchone()
            got = self._wrap[name] = json.loads(row[0]) if row else None
        return got


class _Wrappers:
    """The dict simulate() asks: the base's wrappers, the overlay's first."""

    def __init__(self, kb: Knowledge, local: dict):
        self.kb = kb
        self.local = local

    def get(self, name, default=None):
        got = self.local.get(name)
        if got is not None:
            return got
        got = self.kb.wrapper(name)
        return got if got is not None else default


def _flags(flags: int) -> dict:
    return {"static": bool(flags & 1), "inline": bool(flags & 2), "stub": bool(flags & 4),
            "header": bool(flags & 8), "macro": bool(flags & 16)}


class View:
    """What rules query (see the method docstrings).  Function NAMEs are
    plain C names; PATH picks one definition when a name has several."""

    def __init__(self, kb: Knowledge, overlay: dict[str, dict]):
        self.kb = kb
        self.db = kb.db
        self.overlay = overlay
        self.hidden = set(overlay)
        self.over_funcs: dict[str, list] = {}
        local_wrap = {}
        for path, ff in overlay.items():
            for fn in ff.get("funcs", ()):
                self.over_funcs.setdefault(fn["n"], []).append((path, fn))
            local_wrap.update(ff.get("wrap", {}))
        self.wrappers = _Wrappers(kb, local_wrap)
        self._sim: dict = {}
        self._memo: dict = {}
        self._index = None
        self._defs: dict[str, list] = {}

    def _overlay_index(self):
        """(callee -> overlay functions calling it, callback -> registrations,
        overlay functions that take or drop a lock), built on first use."""
        if self._index is None:
            callers: dict[str, list] = {}
            regs: dict[str, list] = {}
            lockers = []
            wnames = self.kb.wrapper_names
            local = self.wrappers.local
            for path, ff in self.overlay.items():
                for fn in ff.get("funcs", ()):
                    d = {"name": fn["n"], "path": path, "line": fn["l"], "fn": fn}
                    locks = False
                    for e in fn["ev"]:
                        if type(e) is str:
                            continue
                        if e[0] == "c":
                            lst = callers.setdefault(e[1], [])
                            if not lst or lst[-1] is not d:
                                lst.append(d)
                            if e[1] in wnames or e[1] in local:
                                locks = True
                        else:
                            locks = True
                    if locks:
                        lockers.append(d)
                    for r in fn.get("reg", ()):
                        regs.setdefault(r[1], []).append((path, fn["n"], r))
                for st, var, line, members in ff.get("ops", ()):
                    for member, value in members:
                        regs.setdefault(value, []).append((path, None, (st, var, line, member)))
            self._index = (callers, regs, lockers)
        return self._index

    # -- definitions
    def definitions(self, name: str) -> list[dict]:
        """Every definition of NAME: the real one first, then stubs, config
        variants, macros.  Each: name, path, line, end, static, inline,
        stub, header, macro, ncalls, source ('base' or 'overlay')."""
        got = self._defs.get(name)
        if got is None:
            got = self._defs[name] = self._definitions(name)
        return list(got)

    def _definitions(self, name: str) -> list[dict]:
        out = []
        for fid, path, line, end, flags, ncalls in self.db.execute(
                "SELECT id, path, line, end, flags, ncalls FROM funcs WHERE name=?", (name,)):
            if path in self.hidden:
                continue
            out.append({"name": name, "path": path, "line": line, "end": end, "ncalls": ncalls,
                        "source": "base", "id": fid, **_flags(flags)})
        for path, fn in self.over_funcs.get(name, ()):
            ncalls = sum(1 for e in fn["ev"] if type(e) is not str and e[0] == "c")
            out.append({"name": name, "path": path, "line": fn["l"], "end": fn["e"], "ncalls": ncalls,
                        "source": "overlay", "fn": fn, **_flags(fn["f"])})
        out.sort(key=lambda d: (d["macro"], d["stub"], d["header"], -d["ncalls"], d["path"]))
        return out

    def _def(self, name: str, path: str | None = None):
        defs = self.definitions(name)
        if path is not None:
            same = [d for d in defs if d["path"] == path]
            real = [d for d in same if not (d["stub"] and d["header"])]
            if real:
                return real[0]
            if same and not any(not d["stub"] for d in defs):
                return same[0]      # (a header's stub reaches the real definition)
            defs = [d for d in defs if not (d["static"] and not d["header"])]
        return defs[0] if defs else None

    def _resolve_from(self, callee: str, path: str):
        return self._def(callee, path)

    def _simulate(self, d: dict):
        key = (d["path"], d["name"], d["line"])
        got = self._sim.get(key)
        if got is None:
            fn = d["fn"]
            got = self._sim[key] = F.simulate(fn["ev"], self.wrappers, fn["t"], fn["p"])
        return got

    @staticmethod
    def _where(d: dict) -> str:
        return f"{d['name']} ({d['path']}:{d['line']})"

    # -- may-sleep
    def may_sleep(self, name: str, path: str | None = None) -> list[str] | None:
        """A witness chain (caller first, the sleeping primitive last) when
        NAME may sleep, else None."""
        return self._may_sleep(name, path, 0, set())

    def _may_sleep(self, name, path, depth, seen):
        if S.not_sleep_path(name):
            return None
        d = self._def(name, path)
        if d is None:
            return None
        key = ("sleep", d["path"], name)
        if key in self._memo:
            return self._memo[key]
        if d["source"] == "base":
            row = self.db.execute("SELECT chain FROM sleep WHERE id=?", (d["id"],)).fetchone()
            got = json.loads(row[0]) if row else None
            if self.hidden and depth < 8 and key not in seen and self._stale(got, d):
                # the stored answer goes through (or may now reach) a file
                # the overlay replaced: work it out again from the calls
                seen.add(key)
                got = got if got and len(got) == 1 else None
                if got is None:
                    for callee, line in self.db.execute(
                            "SELECT callee, MIN(line) FROM calls WHERE caller=? GROUP BY callee ORDER BY 2",
                            (d["id"],)):
                        sub = self._may_sleep(callee, d["path"], depth + 1, seen) if callee != name else None
                        if sub:
                            got = [f"{self._where(d)} calls {callee}() at line {line}"] + sub
                            break
            self._memo[key] = got
            return got
        fn = d["fn"]
        got = None
        if fn["seed"]:
            s = fn["seed"][0]
            got = [f"{self._where(d)} calls {s[0]}() at line {s[1]} ({s[2]})"]
        elif depth < 8 and key not in seen:
            seen.add(key)
            done = set()
            for e in fn["ev"]:
                if type(e) is str or e[0] != "c" or e[1] in done or e[1] == name:
                    continue
                done.add(e[1])
                sub = self._may_sleep(e[1], d["path"], depth + 1, seen)
                if sub:
                    got = [f"{self._where(d)} calls {e[1]}() at line {e[2]}"] + sub
                    break
        self._memo[key] = got
        return got

    def _stale(self, chain, d) -> bool:
        """Whether a stored may-sleep answer of base function D may be
        changed by the overlay: its chain passes through a replaced file, or
        (no chain) it calls a function the overlay defines."""
        if chain:
            return any(m.group(1) in self.hidden for m in _STEP_PATH.finditer(" ".join(chain[1:])))
        names = self._memo.get("over_names")
        if names is None:
            names = self._memo["over_names"] = list(self.over_funcs)
        if not names:
            return False
        q = ",".join("?" * min(len(names), 500))
        return self.db.execute(f"SELECT 1 FROM calls WHERE caller=? AND callee IN ({q}) LIMIT 1",
                               (d["id"], *names[:500])).fetchone() is not None

    # -- contexts
    def contexts(self, name: str, path: str | None = None) -> list[tuple[str, str]]:
        """(context, witness) pairs: hardirq, softirq, atomic (every caller
        holds a spinlock, or an ops member called so), rtnl, locked."""
        d = self._def(name, path)
        if d is None:
            return []
        ids = [d["id"]] if d["source"] == "base" else [
            r[0] for r in self.db.execute("SELECT id FROM funcs WHERE name=? AND path=?", (name, d["path"]))]
        out = []
        for fid in ids:
            for c, w, src in self.db.execute("SELECT ctx, witness, src FROM ctx WHERE id=?", (fid,)):
                if src not in self.hidden and (c, w) not in out:
                    out.append((c, w))
        for opath, fname, r in self._overlay_index()[1].get(name, ()):
            if fname is None:
                st, var, line, member = r
                for kind, why in S.OPS_CONTEXTS.get((st, member), ()):
                    out.append((kind, f".{member} of struct {st} {var} ({opath}:{line}): {why}"))
                continue
            kind, cb, via, line = r
            if opath == d["path"] or self._def(cb, opath) == d:
                out.append((kind, S.registration_text(kind, via, f"{fname} ({opath}:{line})")))
        return out

    def atomic_caller(self, name: str, path: str | None = None, depth: int = 3, budget: int = 80):
        """How NAME may be called in atomic context, up to DEPTH callers up:
        the nearest caller that calls towards it with a spinlock held (or in
        an RCU section, with IRQs or BH off), or that itself runs in
        hard-irq, softirq or atomic context.  Returns (chain, why): CHAIN
        the function names from that caller down to NAME, WHY what makes the
        caller atomic.  None when no caller within reach is atomic; at most
        BUDGET call sites are looked at."""
        d0 = self._def(name, path)
        if d0 is None:
            return None
        frontier = [(name, d0["path"], (name,))]
        seen = {(name, d0["path"])}
        for _ in range(depth):
            nxt = []
            for fname, fpath, chain in frontier:
                for caller, cpath, line, held in self.callers(fname, fpath, limit=40):
                    if (caller, cpath) in seen:
                        continue
                    # the call resolves to this definition (not a same-named one)
                    dd = self._def(fname, cpath)
                    if dd is None or dd["path"] != fpath:
                        continue
                    seen.add((caller, cpath))
                    budget -= 1
                    at = [h for h in held if h[1] in S.ATOMIC_KINDS]
                    if at:
                        cls, kind = at[-1]
                        what = "in an RCU read-side section" if kind == "rcu" else \
                            f"with {cls} off" if kind in PSEUDO else f"with {cls} held"
                        return (caller,) + chain, f"{caller}() ({cpath}:{line}) calls {fname}() {what}"
                    ctx = [(c, w) for c, w in self.contexts(caller, cpath) if c in ("hardirq", "softirq", "atomic")]
                    if ctx:
                        where = {"hardirq": "hard-interrupt", "softirq": "softirq"}.get(ctx[0][0], "atomic")
                        return (caller,) + chain, f"{caller}() runs in {where} context ({ctx[0][1]})"
                    if budget <= 0:
                        return None
                    nxt.append((caller, cpath, (caller,) + chain))
            frontier = nxt
            if not frontier:
                break
        return None

    # -- locks
    def locks_taken(self, name: str, path: str | None = None, depth: int = 2) -> list[dict]:
        """Lock classes NAME takes, itself or through callees (DEPTH levels):
        [{class, kind, path: [witness steps]}]."""
        out: dict[str, dict] = {}
        self._taken(name, path, depth, [], out, set())
        return list(out.values())

    def _taken(self, name, path, depth, prefix, out, seen):
        d = self._def(name, path)
        if d is None or (d["path"], name) in seen:
            return
        seen.add((d["path"], name))
        if d["source"] == "base":
            rows = self.db.execute("SELECT class, kind, line, via FROM taken WHERE id=?", (d["id"],)).fetchall()
            callees = self.db.execute("SELECT callee, MIN(line) FROM calls WHERE caller=? GROUP BY callee",
                                      (d["id"],)).fetchall() if depth > 0 else []
        else:
            calls, acq, _, _, _ = self._simulate(d)
            rows = acq
            first = {}
            for c, ln, _ in calls:
                first.setdefault(c, ln)
            callees = list(first.items()) if depth > 0 else []
        for c, k, ln, via in rows:
            if c and c not in out and not c.startswith("@"):
                out[c] = {"class": c, "kind": k,
                          "path": prefix + [f"{self._where(d)} takes it with {via}() at line {ln}"]}
        for callee, ln in callees:
            if len(out) > 60:
                break
            self._taken(callee, d["path"], depth - 1,
                        prefix + [f"{self._where(d)} calls {callee}() at line {ln}"], out, seen)

    def calls(self, name: str, path: str | None = None) -> list[tuple[str, int, tuple]]:
        """NAME's calls in order: (callee, line, locks held [(class, kind)])."""
        d = self._def(name, path)
        if d is None:
            return []
        if d["source"] == "base":
            return [(c, ln, tuple(tuple(h) for h in json.loads(held)) if held else ())
                    for c, ln, held in self.db.execute(
                        "SELECT callee, line, held FROM calls WHERE caller=? ORDER BY rowid", (d["id"],))]
        return [(c, ln, tuple(h)) for c, ln, h in self._simulate(d)[0]]

    def lock_wrapper(self, name: str) -> list[tuple[str, str, str]] | None:
        """What calling NAME does to the caller's locks, when it is a lock
        wrapper: [('a' acquire | 'r' release, class or '@N[.member]'
        template of its Nth argument, kind)]."""
        got = self.wrappers.get(name)
        return [tuple(x) for x in got] if got else None

    def held_by_callers(self, name: str, limit: int = 500) -> list[dict]:
        """Call sites of NAME made with locks held: [{caller, path, line,
        held: [(class, kind)]}] (at most LIMIT from the base)."""
        out = []
        for caller, path, line, held in self.db.execute(
                "SELECT f.name, f.path, c.line, c.held FROM calls c JOIN funcs f ON f.id = c.caller "
                "WHERE c.callee=? AND c.held IS NOT NULL LIMIT ?", (name, limit)):
            if path not in self.hidden:
                out.append({"caller": caller, "path": path, "line": line,
                            "held": [tuple(h) for h in json.loads(held)]})
        for d in self._overlay_index()[0].get(name, ()):
            for c, ln, held in self._simulate(d)[0]:
                if c == name and held:
                    out.append({"caller": d["name"], "path": d["path"], "line": ln, "held": list(held)})
        return out

    def callers(self, name: str, path: str | None = None, limit: int = 200) -> list[tuple]:
        """Call sites of NAME: (caller, path, line, locks held [(class,
        kind)]).  When NAME at PATH is a static function of a .c file, only
        the call sites in that file."""
        d = self._def(name, path) if path else None
        only = d["path"] if d is not None and d["static"] and not d["header"] else None
        out = []
        q = ("SELECT f.name, f.path, c.line, c.held FROM calls c JOIN funcs f ON f.id = c.caller "
             "WHERE c.callee=?" + (" AND f.path=?" if only else "") + " LIMIT ?")
        for caller, cpath, line, held in self.db.execute(q, (name, only, limit) if only else (name, limit)):
            if cpath not in self.hidden:
                out.append((caller, cpath, line, [tuple(h) for h in json.loads(held)] if held else []))
        for od in self._overlay_index()[0].get(name, ()):
            if only and od["path"] != only:
                continue
            for c, ln, held in self._simulate(od)[0]:
                if c == name:
                    out.append((od["name"], od["path"], ln, [tuple(h) for h in held]))
        return out

    # -- lock order
    def _overlay_edges(self):
        got = self._memo.get("edges")
        if got is None:
            got = []
            for d in self._overlay_index()[2]:
                for a, b, ln, via in self._simulate(d)[2]:
                    got.append((a, b, [f"{d['name']} ({d['path']}:{ln}) takes {b} with {via}() while holding {a}"]))
            self._memo["edges"] = got
        return got

    def order_edge_for_keys(self, a: str, b: str) -> list[str] | None:
        """order_edge() for two lock-flow keys (analysis.lockflow names a
        lock by its field alone when the field's name says which lock it is,
        `sk_callback_lock`, and by `type.field` otherwise; the base always
        says `struct type.field`)."""
        if a.startswith("?") or b.startswith("?"):
            return None
        for x, y, w in self._overlay_edges():
            if key_matches(a, x) and key_matches(b, y):
                return w
        ca, cb = _key_sql(a, "a"), _key_sql(b, "b")
        rows = self.db.execute(f"SELECT a, b, witness, src FROM edges WHERE ({ca[0]}) AND ({cb[0]}) LIMIT 20",
                               ca[1] + cb[1]).fetchall()
        for x, y, w, src in rows:
            if src not in self.hidden and key_matches(a, x) and key_matches(b, y):
                return json.loads(w)
        return None

    def order_edge(self, a: str, b: str) -> list[str] | None:
        """A witness path for "B taken while A is held", or None."""
        for x, y, w in self._overlay_edges():
            if x == a and y == b:
                return w
        for w, src in self.db.execute("SELECT witness, src FROM edges WHERE a=? AND b=?", (a, b)):
            if src not in self.hidden:
                return json.loads(w)
        return None

    def edges_from(self, a: str) -> list[tuple[str, str, list[str]]]:
        out = [(x, y, w) for x, y, w in self._overlay_edges() if x == a]
        out += [(a, b, json.loads(w)) for b, w, src in
                self.db.execute("SELECT b, witness, src FROM edges WHERE a=?", (a,)) if src not in self.hidden]
        return out

    def edges_to(self, b: str) -> list[tuple[str, str, list[str]]]:
        out = [(x, y, w) for x, y, w in self._overlay_edges() if y == b]
        out += [(a, b, json.loads(w)) for a, w, src in
                self.db.execute("SELECT a, witness, src FROM edges WHERE b=?", (b,)) if src not in self.hidden]
        return out

    # -- release pairs
    def release_for(self, acquire: str) -> list[tuple[str, int, int, str]]:
        """(release, support, total, source) for ACQUIRE, best supported
        first; source: mined, naming, rulekit, DEFINE_FREE, __free."""
        rows = self.db.execute("SELECT release, support, total, source FROM pairs WHERE acquire=?",
                               (acquire,)).fetchall()
        best: dict[str, tuple] = {}
        for r in rows:
            if r[0] not in best or r[1] > best[r[0]][1]:
                best[r[0]] = r
        return sorted(best.values(), key=lambda r: (-r[1], r[0]))

    def acquire_for(self, release: str) -> list[tuple[str, int, int, str]]:
        """The pairs RELEASE undoes: (acquire, support, total, source)."""
        rows = self.db.execute("SELECT acquire, support, total, source FROM pairs WHERE release=?",
                               (release,)).fetchall()
        return sorted(rows, key=lambda r: (-r[1], r[0]))

    def release_on_failure(self, name: str) -> list[tuple[str, int, int]]:
        """(release, support, total): how often callers of NAME release with
        it inside their `if (ret)` failure branch (kobject_init_and_add ->
        kobject_put)."""
        return sorted(self.db.execute("SELECT release, support, total FROM failrel WHERE acquire=?",
                                      (name,)).fetchall(), key=lambda r: -r[1])

    # -- one function, for `reviewbot facts`
    def describe(self, name: str) -> list[dict]:
        out = []
        for d in self.definitions(name):
            taken = self.locks_taken(name, d["path"])
            classes = [t["class"] for t in taken if t["kind"] not in PSEUDO]
            out.append({
                "name": name, "path": d["path"], "line": d["line"], "end": d["end"],
                "kind": ("macro" if d["macro"] else "stub" if d["stub"] else
                         "static inline" if d["inline"] and d["header"] else "function"),
                "static": d["static"], "source": d["source"],
                "locks_taken": taken,
                "may_sleep": self.may_sleep(name, d["path"]),
                "contexts": [{"context": c, "witness": w} for c, w in self.contexts(name, d["path"])],
                "held_by_callers": self.held_by_callers(name)[:10],
                "order_edges_in": [{"a": a, "b": b, "witness": w} for c in classes for a, b, w in
                                   self.edges_to(c)[:5]],
                "order_edges_out": [{"a": a, "b": b, "witness": w} for c in classes for a, b, w in
                                    self.edges_from(c)[:5]],
                "pairs": {"releases": [list(r) for r in self.release_for(name)[:10]],
                          "acquires": [list(r) for r in self.acquire_for(name)[:10]],
                          "release_on_failure": [list(r) for r in self.release_on_failure(name)[:10]]},
            })
        return out


def key_matches(key: str, cls: str) -> bool:
    """Whether a lock-flow key (`sk_callback_lock`, `bpf_stab.lock`, a
    global's name) names the base's lock class CLS (`struct sock.sk_callback_lock`)."""
    c = cls[len("struct "):] if cls.startswith("struct ") else cls
    if c == key:
        return True
    return "." not in key and c.rsplit(".", 1)[-1] == key


def _key_sql(key: str, col: str) -> tuple[str, list]:
    if "." in key:
        return f"{col} = ? OR {col} = ?", ["struct " + key, key]
    return f"{col} = ? OR {col} LIKE ?", [key, "%." + key]
