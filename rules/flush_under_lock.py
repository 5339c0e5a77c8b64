"""flush-under-lock (LCK006): waiting for work whose handler takes a lock held here."""
from __future__ import annotations

import re

from reviewbot.analysis import cparse
from reviewbot.analysis import lockflow as lf
from reviewbot.engine import PatchContext, Rule
from reviewbot.findings import Location

# call that waits for a deferred function -> how the function is set up
# (set-up call, index of the object argument, index of the function argument)
WAITS = {
    "cancel_work_sync": "work", "flush_work": "work", "cancel_delayed_work_sync": "dwork",
    "flush_delayed_work": "dwork", "del_timer_sync": "timer", "timer_shutdown_sync": "timer",
    "hrtimer_cancel": "hrtimer", "tasklet_kill": "tasklet", "kthread_stop": "kthread",
    "kthread_cancel_work_sync": "kwork", "kthread_flush_work": "kwork",
    "kthread_cancel_delayed_work_sync": "kdwork",
    "flush_workqueue": "wq", "drain_workqueue": "wq", "destroy_workqueue": "wq",
}
SETUPS = {
    "work": (("INIT_WORK", 0, 1), ("INIT_WORK_ONSTACK", 0, 1), ("__INIT_WORK", 0, 1)),
    "dwork": (("INIT_DELAYED_WORK", 0, 1), ("INIT_DEFERRABLE_WORK", 0, 1)),
    "timer": (("timer_setup", 0, 1), ("setup_timer", 0, 1)),
    "hrtimer": (),
    "tasklet": (("tasklet_init", 0, 1), ("tasklet_setup", 0, 1)),
    "kthread": (("kthread_run", None, 0), ("kthread_create", None, 0)),
    "kwork": (("kthread_init_work", 0, 1),),
    "kdwork": (("kthread_init_delayed_work", 0, 1),),
}


def _member(expr: str) -> str:
    e = re.sub(r"\s+", "", expr).lstrip("&")
    m = re.search(r"(?:->|\.)(\w+)(?:\.work)?$", e)
    return m.group(1) if m else e


class FlushUnderLock(Rule):
    """Flags a wait for deferred work (`cancel_work_sync()`, `flush_work()`,
    `cancel_delayed_work_sync()`, `del_timer_sync()`, `tasklet_kill()`,
    `kthread_stop()`, ...) made with a lock held that the work's own
    handler takes.

    ## What it does
    For each wait the patch adds or moves under a lock, it finds the
    handler the work was set up with in the same file (`INIT_WORK(&x->w,
    handler)`, `timer_setup()`, `tasklet_setup()`, `kthread_run()`, or
    `hrtimer.function = handler`) and the locks that handler takes, itself
    or through the same-file functions it calls. When the lock held at the
    wait is one of them (the same lock class), it reports the pair; waits
    that the pre-image already made under that lock are not reported.

    ## Why is this bad?
    The wait blocks until the handler has finished, and the handler blocks
    on the lock the waiter holds: a deadlock that lockdep reports only once
    both sides have run.  Teardown paths (`ndo_stop`, `.remove`, close)
    are where it slips in.

    ## Example
         mutex_lock(&conn->lock);
        +cancel_work_sync(&conn->pending_rx_work);
    with
         static void process_pending_rx(struct work_struct *work)
         {
                 ...
                 mutex_lock(&conn->lock);

    ## Use instead
    Cancel or flush the work before taking the lock (and make sure it
    cannot be queued again), or use the non-waiting `cancel_work()`.

    ## References
    Documentation/core-api/workqueue.rst (flushing); lockdep's
    "possible circular locking dependency" reports involving (work_completion).
    """

    code = "LCK006"
    name = "flush-under-lock"
    family = "locking"
    severity = "error"
    confidence = "medium"

    def check_patch(self, ctx: PatchContext):
        kb = None
        for fv, touched, post in lf.touched_files(ctx):
            if kb is None:
                kb = ctx.knowledge or False
            handlers = None
            pre = None
            for fn, changed in touched:
                fl = lf.lock_flow(post, fn.name)
                if fl is None:
                    continue
                for c in fl.calls:
                    kind = WAITS.get(c.name)
                    if kind is None or not c.args:
                        continue
                    held = [h for h in lf.must_held(c.states)
                            if h.key not in lf.PSEUDO and h.how != "cond"]
                    if not held:
                        continue
                    if handlers is None:
                        handlers = _handlers(fv.post_tree)
                    target = _member(c.args[0])
                    found = None
                    for hname in handlers.get((kind, target), ()):
                        if hname == fn.name:
                            continue
                        takes = _takes(post, hname, kb, fv.path)
                        hit = [h for h in held if h.key in takes]
                        if hit:
                            found = (hname, takes, hit)
                            break
                    if found is None:
                        continue
                    hname, takes, hit = found
                    if pre is None:
                        pre = lf.image(fv, "pre")
                    if _was_there(pre, fn.name, c.name, target, {h.key for h in hit}):
                        continue
                    h = max(hit, key=lambda h: h.line)
                    tline = takes[h.key]
                    msg = (f"{fn.name}() calls {c.name}() with {lf.display(h)} held (taken at line "
                           f"{h.line}), but the handler it waits for, {hname}(), takes the same lock"
                           + (f" (line {tline})" if tline else "") + ". Can the two deadlock "
                           "if the handler is running when this is reached?")
                    related = [Location(fv.path, h.line, f"{lf.display(h)} taken here")]
                    if tline:
                        related.append(Location(fv.path, tline, f"{hname}() takes it"))
                    conf = "high" if c.line in fv.added_lines and h.stable else "medium"
                    yield self.finding(fv.path, c.line, msg, related=related, confidence=conf)


def _handlers(tree) -> dict[tuple[str, str], list[str]]:
    """(kind, member of the work/timer/...) -> handler function names, from
    the set-up calls and `.function = fn` assignments of the file; ("wq",
    member of a workqueue) -> the handlers of the works queued on it."""
    out: dict[tuple[str, str], list[str]] = {}
    queued: list[tuple[str, str]] = []      # (workqueue member, work member)
    by_name = {}
    for kind, setups in SETUPS.items():
        for name, obj_i, fn_i in setups:
            by_name.setdefault(name, []).append((kind, obj_i, fn_i))
    for f in cparse.functions(tree):
        if f.call_names.isdisjoint(by_name) and b".function" not in (f.node.text or b"") \
                and b"queue_" not in (f.node.text or b""):
            continue
        for c in cparse.calls(f.node):
            if c.name in ("queue_work", "queue_delayed_work", "mod_delayed_work", "queue_work_on",
                          "queue_delayed_work_on") and len(c.args) >= 2:
                i = 1 if c.name.endswith("_on") else 0
                if len(c.args) > i + 1:
                    queued.append((_member(c.args[i]), _member(c.args[i + 1])))
            for kind, obj_i, fn_i in by_name.get(c.name, ()):
                if len(c.args) <= fn_i:
                    continue
                handler = re.sub(r"\s+", "", c.args[fn_i]).lstrip("&")
                if not re.match(r"^\w+$", handler):
                    continue
                if obj_i is None:       # kthread_run(fn, data, ...): the task is the result
                    par = c.node.parent
                    if par is not None and par.type == "assignment_expression":
                        left = par.child_by_field_name("left")
                        out.setdefault((kind, _member(cparse.node_text(left))), []).append(handler)
                    continue
                out.setdefault((kind, _member(c.args[obj_i])), []).append(handler)
        for m in re.finditer(rb"([\w>.-]+)\.function\s*=\s*(\w+)\s*;", f.node.text or b""):
            out.setdefault(("hrtimer", _member(m.group(1).decode())), []).append(m.group(2).decode())
    for wq, work in queued:
        for kind in ("work", "dwork"):
            for h in out.get((kind, work), ()):
                out.setdefault(("wq", wq), []).append(h)
    return out


def _takes(info, name: str, kb=None, path=None, depth: int = 2) -> dict[str, int]:
    """Lock keys a function takes, itself or through same-file callees
    (DEPTH levels; the rest of the tree through the knowledge base), with
    the line of one acquisition in this file (0 when further away)."""
    out: dict[str, int] = {}
    seen = set()
    frontier = [name]
    for _ in range(depth + 1):
        nxt = []
        for n in frontier:
            if n in seen:
                continue
            seen.add(n)
            fl = lf.flow_of(info, n)
            if fl is None:
                continue
            for h, _ in fl.acquires:
                if h.key not in lf.PSEUDO or h.how == "guard":
                    out.setdefault(h.key, h.line if n == name else 0)
            for c in fl.calls:
                if c.name in info.byname:
                    nxt.append(c.name)
                elif kb and c.name not in seen and c.name not in lf.ACQUIRE and c.name not in lf.RELEASE:
                    seen.add(c.name)
                    try:
                        for t in kb.locks_taken(c.name, path, depth=1):
                            if t.get("kind") not in ("rcu", "irq", "bh", "preempt"):
                                out.setdefault(t["class"], 0)
                    except Exception:
                        pass
        frontier = nxt
    return _with_keys(out)


def _with_keys(out: dict[str, int]) -> dict[str, int]:
    """The knowledge base's classes (`struct t.f`) also under the names the
    lock flow gives them (`t.f`, or `f` for a field named after its lock)."""
    for cls, line in list(out.items()):
        if cls.startswith("struct "):
            short = cls[len("struct "):]
            out.setdefault(short, line)
            out.setdefault(short.rsplit(".", 1)[-1], line)
    return out


def _was_there(pre, fn_name: str, call: str, target: str, keys: set[str]) -> bool:
    fl = lf.flow_of(pre, fn_name)
    if fl is None:
        return False
    for c in fl.calls:
        if c.name == call and c.args and _member(c.args[0]) == target:
            if keys & {h.key for h in lf.must_held(c.states)}:
                return True
    return False
