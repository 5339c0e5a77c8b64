"""The global phase of the knowledge base build (reviewbot.tree.knowledge):
every file's functions walked again with the whole tree's lock wrappers (in
worker processes), then, in this process, calls resolved to definitions
and the fixpoints worked out: may-sleep (a backward search from the
sleeping primitives, one witness chain per function), lock order through
callees (TRANS_DEPTH levels, one witness path per edge), contexts
(registrations, ops members, every caller holding a lock), mined release
pairs and releases on failure.  Everything is written into the SQLite DB.
"""
from __future__ import annotations

import json
import re
import sys
import time
from array import array
from collections import defaultdict

from reviewbot.analysis import facts as F
from reviewbot.analysis import kbseeds as S
from reviewbot.tree.knowledge import ATOMIC, CHUNK, TRANS_CAP, TRANS_DEPTH, _phase2, _run

_NAME_PAIRS = tuple((re.compile(p), r) for p, r in S.NAME_PAIRS)


def run_global(db, env, paths, blobs, wrappers, procs, progress=None):
    """Phase 2 and the fixpoints, written into DB."""
    t0 = time.perf_counter()
    files = [(i, p, blobs[b]) for i, (b, p) in enumerate(paths) if b in blobs]
    chunks = [files[i:i + CHUNK] for i in range(0, len(files), CHUNK)]
    wrappers = {k: v for k, v in wrappers.items() if k not in F.ACQ and k not in F.REL}
    fid = 0
    funcs = []            # (name, path, line, end, flags, ncalls)
    seeds: dict[int, tuple] = {}
    regs = []             # (ctx, callback, via, line, registering fid, path)
    ops = []              # (struct, var, path, line, members)
    mined_asg = defaultdict(int)
    mined_pair = defaultdict(int)
    fail_total = defaultdict(int)
    fail_rel = defaultdict(int)
    frees = defaultdict(int)
    dfree = []
    dguard = []
    held_calls = []       # (fid, callee, line, held)
    # each function's distinct callees, flat: cs_callee[cs_start[f]:cs_start[f + 1]]
    cs_start = array("l", [0])
    cs_callee: list[str] = []
    cs_line = array("l")
    hcache: dict = {}     # held tuple -> (the one kept, its JSON)
    intern = sys.intern
    acquires: dict[int, list] = {}
    direct_edges = {}
    new_wrappers = {}
    call_rows = []
    for res in _run(procs, env, _phase2, chunks, wrappers):
        for i, ff, walked in res:
            path = paths[i][1]
            for fn, (calls, acq, order, w) in zip(ff["funcs"], walked):
                me = fid
                fid += 1
                funcs.append((me, intern(fn["n"]), path, fn["l"], fn["e"], fn["f"], len(calls)))
                seen = set()
                for callee, line, held in calls:
                    callee = intern(callee)
                    if callee not in seen:
                        seen.add(callee)
                        cs_callee.append(callee)
                        cs_line.append(line)
                    if held:
                        got = hcache.get(held)
                        if got is None:
                            got = hcache[held] = (held, json.dumps(held, separators=(",", ":")))
                        held_calls.append((me, callee, line, got[0]))
                        call_rows.append((me, callee, line, got[1]))
                    else:
                        call_rows.append((me, callee, line, None))
                cs_start.append(len(cs_callee))
                if acq:
                    acquires[me] = acq
                for a, b, line, via in order:
                    direct_edges.setdefault((a, b), (me, line, via, path))
                if w and fn["n"] not in wrappers:
                    new_wrappers.setdefault(fn["n"], w)
                if fn["seed"]:
                    seeds[me] = tuple(fn["seed"][0])
                for r in fn["reg"]:
                    regs.append((r[0], r[1], r[2], r[3], me, path))
                for x in fn.get("asg") or ():
                    mined_asg[x] += 1
                for x, y in fn.get("pairs") or ():
                    mined_pair[(x, y)] += 1
                seen_fail = set()
                for x, rel in fn.get("fail") or ():
                    if x in seen_fail:
                        continue
                    seen_fail.add(x)
                    fail_total[x] += 1
                    for y in rel:
                        fail_rel[(x, y)] += 1
                for x, y in fn.get("free") or ():
                    frees[(x, y)] += 1
            for r in ff.get("top", ()):
                regs.append((r[0], r[1], r[2], r[3], -1, path))
            for st, var, line, members in ff.get("ops", ()):
                ops.append((st, var, path, line, members))
            dfree.extend(ff.get("dfree", ()))
            dguard.extend(ff.get("dguard", ()))
            if len(call_rows) > 200000:
                db.executemany("INSERT INTO calls VALUES (?,?,?,?)", call_rows)
                call_rows = []
    db.executemany("INSERT INTO calls VALUES (?,?,?,?)", call_rows)
    call_rows = None
    db.executemany("INSERT INTO funcs VALUES (?,?,?,?,?,?,?)", funcs)
    allw = dict(wrappers)
    allw.update(new_wrappers)
    db.executemany("INSERT INTO wrappers VALUES (?,?)", [(k, json.dumps(v)) for k, v in allw.items()])
    if progress:
        progress(f"functions walked in {time.perf_counter() - t0:.0f} s ({len(funcs)} functions)")
    res = Resolver([(f[0], f[1], f[2], f[5], f[6]) for f in funcs])
    name_of = [f[1] for f in funcs]
    path_of = [f[2] for f in funcs]
    line_of = [f[3] for f in funcs]
    # taken (direct, and through wrappers)
    db.executemany("INSERT INTO taken VALUES (?,?,?,?,?)",
                   [(me, c, k, ln, via) for me, acq in acquires.items() for c, k, ln, via in acq if c])
    # -- may-sleep: backward search from the seeds
    # call graph: the resolved target of each distinct callee, and the
    # callers of each function (numpy CSR, lean on memory)
    import numpy as np
    n = len(funcs)
    dst = np.full(len(cs_callee), -1, dtype=np.int64)
    src = np.repeat(np.arange(n, dtype=np.int64), np.diff(np.frombuffer(cs_start, dtype=np.int64)))
    resolve = res.resolve
    for me in range(n):
        p = path_of[me]
        for j in range(cs_start[me], cs_start[me + 1]):
            t = resolve(cs_callee[j], p)
            if t is not None and t != me:
                dst[j] = t
    ok = np.flatnonzero(dst >= 0)
    order = ok[np.argsort(dst[ok], kind="stable")]
    by_dst_src = src[order]
    by_dst_line = np.frombuffer(cs_line, dtype=np.int64)[order]
    dst_start = np.searchsorted(dst[order], np.arange(n + 1))
    del src, ok, order

    class _Callers:
        def get(self, t, default=()):
            a, b = int(dst_start[t]), int(dst_start[t + 1])
            return list(zip(by_dst_src[a:b].tolist(), by_dst_line[a:b].tolist()))

    callers = _Callers()
    # error reporting, debugging and the RT forms of spinning locks do not
    # make their callers sleep (panic() -> console_lock() is no sleep a
    # caller of WARN() should hear of)
    blocked = S.not_sleep_path
    parent: dict[int, tuple] = {}
    frontier = [s for s in seeds if not blocked(name_of[s])]
    for s in frontier:
        parent[s] = None
    while frontier:
        nxt = []
        for t in frontier:
            for c, line in callers.get(t, ()):
                if c not in parent and not blocked(name_of[c]):
                    parent[c] = (t, line)
                    nxt.append(c)
        frontier = nxt

    def chain(me):
        out = []
        cur = me
        for _ in range(30):
            step = parent.get(cur)
            if step is None:
                sd = seeds[cur]
                out.append(f"{name_of[cur]} ({path_of[cur]}:{line_of[cur]}) calls {sd[0]}() at line {sd[1]}"
                           f" ({sd[2]})")
                break
            t, line = step
            out.append(f"{name_of[cur]} ({path_of[cur]}:{line_of[cur]}) calls {name_of[t]}() at line {line}")
            cur = t
        return json.dumps(out)

    db.executemany("INSERT INTO sleep VALUES (?,?)", ((me, chain(me)) for me in parent))
    if progress:
        progress(f"may-sleep: {len(parent)} functions")
    # -- lock order through callees
    memo: dict[int, dict] = {}

    def trans(me, depth):
        got = memo.get(me)
        if got is not None:
            return got
        memo[me] = {}
        out = {}
        for c, k, ln, via in acquires.get(me, ()):
            if c and k not in ("rcu", "irq", "bh", "preempt") and not c.startswith("@"):
                out.setdefault(c, [f"{name_of[me]} ({path_of[me]}:{ln}) takes it with {via}()"])
        if depth > 0:
            for j in range(cs_start[me], cs_start[me + 1]):
                if len(out) >= TRANS_CAP:
                    break
                t = int(dst[j])
                if t < 0:
                    continue
                callee, line = cs_callee[j], cs_line[j]
                for c, wit in trans(t, depth - 1).items():
                    if c not in out:
                        out[c] = [f"{name_of[me]} ({path_of[me]}:{line}) calls {callee}()"] + wit
        memo[me] = out
        return out

    edges = {}
    for (a, b), (me, line, via, path) in direct_edges.items():
        edges[(a, b)] = (json.dumps([f"{name_of[me]} ({path}:{line}) takes {b} with {via}() while holding {a}"]),
                         path, 1)
    for me, callee, line, held in held_calls:
        t = res.resolve(callee, path_of[me])
        if t is None or t == me:
            continue
        hs = [h[0] for h in held if h[1] not in ("rcu", "irq", "bh", "preempt") and not h[0].startswith("@")]
        if not hs:
            continue
        for c, wit in trans(t, TRANS_DEPTH - 1).items():
            for a in hs:
                if a != c and (a, c) not in edges:
                    edges[(a, c)] = (json.dumps([f"{name_of[me]} ({path_of[me]}:{line}) holds {a} and calls "
                                                 f"{callee}()"] + wit), path_of[me], 0)
    db.executemany("INSERT INTO edges VALUES (?,?,?,?,?)", ((a, b, w, s, d) for (a, b), (w, s, d) in edges.items()))
    if progress:
        progress(f"lock order: {len(edges)} edges")
    # -- contexts
    ctx_rows = []
    for kind, cb, via, line, reg_fid, path in regs:
        t = res.resolve(cb, path)
        if t is None:
            continue
        where = f"{name_of[reg_fid]} ({path}:{line})" if reg_fid >= 0 else f"{path}:{line}"
        ctx_rows.append((t, kind, S.registration_text(kind, via, where), path))
    for st, var, path, line, members in ops:
        for member, value in members:
            for kind, why in S.OPS_CONTEXTS.get((st, member), ()):
                t = res.resolve(value, path)
                if t is not None:
                    ctx_rows.append((t, kind, f".{member} of struct {st} {var} ({path}:{line}): {why}", path))
    # under a lock at every call site (>= 2 callers)
    sites = defaultdict(list)
    for me, callee, line, held in held_calls:
        t = res.resolve(callee, path_of[me])
        if t is not None:
            sites[t].append((me, line, held))
    for t, lst in sites.items():
        ncallers = len({c for c, _ in callers.get(t)})
        if ncallers < 2:
            continue
        locked_callers = {me for me, _, _ in lst}
        if len(locked_callers) < ncallers:
            continue
        common = None
        for me, line, held in lst:
            cls = {(h[0], h[1]) for h in held}
            common = cls if common is None else common & cls
        me, line, held = lst[0]
        for c, k in sorted(common or ()):
            if c == "rtnl_mutex":
                ctx_rows.append((t, "rtnl", f"every caller ({ncallers}) holds rtnl_lock, e.g. "
                                 f"{name_of[me]} ({path_of[me]}:{line})", path_of[me]))
            elif k in ATOMIC:
                ctx_rows.append((t, "atomic", f"every caller ({ncallers}) holds {c} ({k}), e.g. "
                                 f"{name_of[me]} ({path_of[me]}:{line})", path_of[me]))
            else:
                ctx_rows.append((t, "locked", f"every caller ({ncallers}) holds {c} ({k}), e.g. "
                                 f"{name_of[me]} ({path_of[me]}:{line})", path_of[me]))
    db.executemany("INSERT INTO ctx VALUES (?,?,?,?)", ctx_rows)
    # -- release pairs
    names = set(name_of)
    names.update(cs_callee)
    pair_rows = []
    for (x, y), n in mined_pair.items():
        if n >= 2:
            pair_rows.append((x, y, n, mined_asg.get(x, n), "mined"))
    mined = {(r[0], r[1]) for r in pair_rows}
    for x in names:
        for pat, rels in _NAME_PAIRS:
            m = pat.match(x)
            if not m:
                continue
            for tmpl in rels:
                y = tmpl.format(m.group(1))
                if y in names and (x, y) not in mined:
                    pair_rows.append((x, y, mined_pair.get((x, y), 0), mined_asg.get(x, 0), "naming"))
    for name, rel in dfree:
        pair_rows.append((f"__free({name})", rel, 0, 0, "DEFINE_FREE"))
    for name, lock, unlock in dguard:
        pair_rows.append((lock, unlock, 0, 0, "DEFINE_GUARD"))
        pair_rows.append((f"guard({name})", unlock, 0, 0, "DEFINE_GUARD"))
    for (x, y), n in frees.items():
        pair_rows.append((x, f"__free({y})", n, mined_asg.get(x, n), "__free"))
    from reviewbot.analysis.rulekit import RELEASE_PAIRS
    for x, ys in RELEASE_PAIRS.items():
        for y in ys:
            pair_rows.append((x, y, mined_pair.get((x, y), 0), mined_asg.get(x, 0), "rulekit"))
    db.executemany("INSERT INTO pairs VALUES (?,?,?,?,?)", pair_rows)
    db.executemany("INSERT INTO failrel VALUES (?,?,?,?)",
                   [(x, y, n, fail_total[x]) for (x, y), n in fail_rel.items() if n >= 2])
    if progress:
        progress(f"global phase done in {time.perf_counter() - t0:.0f} s")


class Resolver:
    """Which definition a call of NAME from a file reaches: the file's own,
    else the tree's real one (not a stub, .c before .h, most calls)."""

    def __init__(self, rows):
        self.local: dict[tuple, int] = {}
        # a header's stubs (the `#else` of a config option): a call from the
        # header reaches the tree's real definition when there is one
        self.stub_local: set = set()
        best: dict[str, tuple] = {}
        for fid, name, path, flags, ncalls in rows:
            key = (path, name)
            if key not in self.local or (key in self.stub_local and not flags & 4):
                self.local[key] = fid
                if flags & 4 and path.endswith(".h"):
                    self.stub_local.add(key)
                else:
                    self.stub_local.discard(key)
            if flags & 1 and not path.endswith(".h"):
                continue          # static in a .c file: that file only
            rank = (not (flags & 4), not path.endswith(".h"), ncalls)
            if name not in best or rank > best[name][0]:
                best[name] = (rank, fid)
        self.glob = {n: v[1] for n, v in best.items()}

    def resolve(self, name: str, path: str):
        got = self.local.get((path, name))
        if got is None or (path, name) in self.stub_local:
            return self.glob.get(name, got)
        return got
