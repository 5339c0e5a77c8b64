"""flush-under-lock (LCK006): waiting for work whose handler takes a lock held here."""
from __future__ import annotations

import posixpath
import re
import subprocess
from typing import NamedTuple

from reviewbot.analysis import callee_locks as cl
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
    # removing a procfs entry waits for the callbacks in flight on it (and
    # calls .proc_release of the files still open): proc_entry_rundown()
    "proc_remove": "proc", "remove_proc_entry": "proc", "remove_proc_subtree": "proc",
    # ... and so does removing a debugfs file (for the file operations of
    # debugfs_create_file(): __debugfs_file_removed())
    "debugfs_remove": "debugfs", "debugfs_remove_recursive": "debugfs",
    "debugfs_lookup_and_remove": "debugfs",
}
ANY_TARGET = {"proc", "debugfs"}     # the handlers of these do not hang off the argument
DEBUGFS_CREATE = {"debugfs_create_file": 4, "debugfs_create_file_size": 4}
# file-scope macros that define a struct file_operations NAME_fops -> (its callbacks)
FOPS_MACROS = {"DEFINE_SHOW_ATTRIBUTE": lambda a: (f"{a[0]}_fops", [f"{a[0]}_show"]),
               "DEFINE_DEBUGFS_ATTRIBUTE": lambda a: (a[0], a[1:3]),
               "DEFINE_SIMPLE_ATTRIBUTE": lambda a: (a[0], a[1:3])}
WAITED = {"proc": "{call}() waits for the procfs callbacks running on the entry, and {h}(), a struct "
                  "proc_ops callback of this file, takes the same lock",
          "debugfs": "{call}() waits for the debugfs file operations running on the entry, and {h}(), "
                     "a callback of a debugfs file this file creates, takes the same lock"}
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
    For each wait the patch adds or moves, it finds the handler the work
    was set up with in the C files of the patch (`INIT_WORK(&x->w,
    handler)`, `timer_setup()`, `tasklet_setup()`, `kthread_run()`,
    `hrtimer.function = handler`; for `flush_workqueue(wq)` the works
    queued on `wq`, paired with the `INIT_WORK()` beside the
    `queue_work()`) and the locks that handler takes, itself, through the
    same-file functions it calls, or further through the tree's knowledge
    base.  It reports:
    - a wait made with a lock held that the handler takes (the same lock
      class); waits the pre-image already made under it are left alone;
    - a wait the function did not make before, in a function whose
      callers hold such a lock (the knowledge base's call sites, up to four
      calls up, or the same-file callers without one; RTNL for a function
      the networking core calls with it held, `.ndo_stop` and kin), naming
      the chain;
    - a handler the patch makes take a lock that a wait for it (in the
      patch's files) is made under, directly or by its callers;
    - `proc_remove()`/`remove_proc_entry()` under a lock that a `struct
      proc_ops` callback of the file takes, and `debugfs_remove()` under
      one that a callback of a `debugfs_create_file()` file takes:
      removing the entry waits for the callbacks in flight on it;
    - a wait whose `current_work() != &w` guard the patch drops: the work
      would wait for itself when the function runs from its handler;
    - a wait the patch makes conditional on `work_pending(&w)`: a work is
      not pending any more once its handler runs, so a running handler is
      no longer waited for.

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
        files = list(lf.touched_files(ctx))
        if not files:
            return
        kb = ctx.knowledge or None
        setups = _Setups(ctx)
        for fv, touched, post in files:
            for fn, changed in touched:
                if not fn.call_names.isdisjoint(WAITS):
                    yield from self._waits(fv, fn, post, setups, kb)
                if setups.targets_of(fn.name, fv.path):
                    yield from self._handler_takes_more(fv, fn, changed, post, setups, kb)

    # -- a wait the patch adds (or moves under a lock)
    def _waits(self, fv, fn, post, setups, kb):
        fl = lf.flow_of(post, fn.name)
        if fl is None:
            return
        pre = above = None
        for c in fl.calls:
            kind = WAITS.get(c.name)
            if kind is None or not c.args:
                continue
            target = _member(c.args[0])
            handlers = [h for h in setups.handlers(kind, "*" if kind in ANY_TARGET else target)
                        if h[0] != fn.name]
            if not handlers:
                continue
            held = [h for h in lf.must_held(c.states) if h.key not in lf.PSEUDO and h.how != "cond"]
            if pre is None:
                pre = lf.image(fv, "pre")
            if kind in ("work", "dwork", "kwork", "kdwork"):
                guard = _self_guard_dropped(pre, fn, c, target)
                if guard:
                    hname, hfv = handlers[0]
                    chain = _reaches(hfv.info, hname, fn.name) if hfv.path == fv.path else None
                    reach = (f"Its handler reaches it ({' -> '.join(chain)}), so" if chain else
                             f"If {fn.name}() is reached from the work's handler, {hname}(),")
                    msg = (f"Before this change {fn.name}() only called {c.name}() when it was not "
                           f"running from that work itself ({guard}); now it always waits. {reach} "
                           "the work waits for its own completion. Is that path impossible now?")
                    yield self.finding(fv.path, c.line, msg, confidence="medium")
                    continue
                cond = _pending_guard_added(pre, fn, c, target)
                if cond:
                    hname = handlers[0][0]
                    msg = (f"Before this change {fn.name}() always waited with {c.name}(); now it "
                           f"waits only when {cond}. A work is no longer pending once its handler, "
                           f"{hname}(), has started running, so a running handler is not waited for any "
                           f"more. Can {hname}() still be running when {fn.name}() goes on?")
                    yield self.finding(fv.path, c.line, msg, confidence="medium")
                    continue
            for hname, hfv in handlers:
                takes = setups.takes(hname, hfv, kb)
                hit = [h for h in held if cl.find(takes, h.key) is not None]
                if hit:
                    if _was_there(pre, fn.name, c.name, target, {h.key for h in hit}):
                        break
                    h = max(hit, key=lambda h: h.line)
                    t = cl.find(takes, h.key)
                    waited = WAITED.get(kind, "the handler it waits for, {h}(){where}, takes the same lock")
                    where = "" if hfv.path == fv.path else f" ({hfv.path})"
                    msg = (f"{fn.name}() calls {c.name}() with {lf.display(h)} held (taken at line "
                           f"{h.line}), but " + waited.format(call=c.name, h=hname, where=where)
                           + (f" (line {t.line})" if t.line else
                              ": " + " -> ".join(t.steps) if len(t.steps) > 1 else "")
                           + ". Can the two deadlock if the handler is running when this is reached?")
                    related = [Location(fv.path, h.line, f"{lf.display(h)} taken here")]
                    if t.line:
                        related.append(Location(hfv.path, t.line, f"{hname}() takes it"))
                    conf = "high" if c.line in fv.added_lines and h.stable and kind not in ANY_TARGET \
                        else "medium"
                    yield self.finding(fv.path, c.line, msg, related=related, confidence=conf)
                    return
                # the lock may be held by the callers: only for a wait the
                # function did not make before
                if c.line not in fv.added_lines or _waited_before(pre, fn.name, c.name, target):
                    continue
                if above is None:
                    above = cl.held_above(kb, fn.name, fv.path, info=post)
                for cls, ha in above.items():
                    t = cl.find(takes, cls)
                    if t is None or _dropped_before(fl, c.line, cls, kb):
                        continue
                    if kind in ANY_TARGET:
                        waits = (f"now calls {c.name}(), which waits for the callbacks running on the "
                                 f"entry, such as {hname}(),")
                    else:
                        waits = f"now waits for {hname}() with {c.name}(),"
                    where = "" if hfv.path == fv.path else f" ({hfv.path})"
                    msg = (f"{fn.name}() {waits} and is called with {cls} held: " + " -> ".join(ha.steps)
                           + f". {hname}(){where} takes the same lock: " + " -> ".join(t.steps)
                           + ". Can the wait deadlock against a running handler?")
                    related = [Location(ha.path, ha.line, f"{ha.caller}() holds {cls}")]
                    if t.line:
                        related.append(Location(hfv.path, t.line, f"{hname}() takes it"))
                    yield self.finding(fv.path, c.line, msg, related=related, confidence="medium")
                    return

    # -- a handler the patch makes take a lock its waiters hold
    def _handler_takes_more(self, fv, fn, changed, post, setups, kb):
        takes = setups.takes(fn.name, _File(fv.path, post, {}, True), kb)
        if not takes:
            return
        pre = lf.image(fv, "pre")
        before = cl.taken_by(pre, fn.name, kb, fv.path) if fn.name in pre.byname else {}
        new = {k: t for k, t in takes.items() if cl.find(before, k) is None and t.at in changed}
        if not new:
            return
        for kind, member in setups.targets_of(fn.name, fv.path):
            for wfv, wname, c in setups.waits(kind, member):
                if wname == fn.name:
                    continue
                winfo = wfv.info
                wfl = lf.flow_of(winfo, wname)
                held = [h for h in lf.must_held(c.states) if h.key not in lf.PSEUDO and h.how != "cond"]
                for h in held:
                    t = cl.find(new, h.key)
                    if t is not None:
                        yield self._gain_finding(fv, fn.name, t, wfv, wname, c,
                                                 f"with {lf.display(h)} held (line {h.line})",
                                                 Location(wfv.path, h.line, f"{lf.display(h)} taken here"))
                        return
                above = cl.held_above(kb, wname, wfv.path, info=winfo)
                for cls, ha in above.items():
                    t = cl.find(new, cls)
                    if t is None or (wfl is not None and _dropped_before(wfl, c.line, cls, kb)):
                        continue
                    yield self._gain_finding(fv, fn.name, t, wfv, wname, c,
                                             "and is reached with it held: " + " -> ".join(ha.steps),
                                             Location(ha.path, ha.line, f"{ha.caller}() holds {cls}"))
                    return

    def _gain_finding(self, fv, hname, t, wfv, wname, c, how, where):
        line = t.line or t.at
        msg = (f"{hname}() is a deferred handler, and with this change it takes {t.key}"
               + (": " + " -> ".join(t.steps) if len(t.steps) > 1 else f" (line {line})")
               + f". {wname}() waits for it with {c.name}() (line {c.line}) {how}. "
               "Can the wait deadlock against a running handler?")
        related = [Location(wfv.path, c.line, f"{wname}() waits for {hname}() here"), where]
        return self.finding(fv.path, line, msg, related=related, confidence="medium")


GENERIC_MEMBERS = {"work", "dwork", "w", "timer", "task", "tasklet", "wq"}


class _File(NamedTuple):
    path: str
    info: object                # lock-flow analysis of its post-image
    hmap: dict                  # _handlers() of it
    patch: bool                 # a file of the patch (else: beside one, as the base has it)


MAX_DIR_FILES = 120
MAX_FILE_BYTES = 600_000


class _Setups:
    """The deferred functions set up in the C files of the patch (post-
    images) and, for a work none of them sets up, in the other C files of
    their directories; what waits for them, and the locks they take."""

    def __init__(self, ctx: PatchContext):
        self.ctx = ctx
        self._by_file = None
        self._texts = None
        self._parsed: dict[str, _File] = {}
        self._takes: dict = {}

    def _files(self) -> list[_File]:
        if self._by_file is None:
            self._by_file = []
            for fv in self.ctx.c_files():
                if fv.post_tree is not None:
                    self._by_file.append(_File(fv.path, lf.image(fv, "post"), _handlers(fv.post_tree), True))
        return self._by_file

    def _others(self, member: str) -> list[_File]:
        """The other C files of the patch's directories that name MEMBER."""
        if self._texts is None:
            self._texts = _directory_texts(self.ctx, {f.path for f in self._files()})
        pat = re.compile(r"(->|\.)" + re.escape(member) + r"\b")
        out = []
        for path, text in self._texts.items():
            if not pat.search(text):
                continue
            f = self._parsed.get(path)
            if f is None:
                tree = cparse.parse(text)
                f = self._parsed[path] = _File(path, lf.full_image(tree), _handlers(tree), False)
            out.append(f)
        return out

    def handlers(self, kind: str, member: str) -> list[tuple[str, _File]]:
        """(handler, file) pairs set up for KIND/MEMBER; a generic member
        name (`work`) only when one handler goes with it."""
        kinds = ("work", "dwork") if kind in ("work", "dwork") else (kind,)

        def found(files):
            out = []
            for f in files:
                for h in (x for k in kinds for x in f.hmap.get((k, member), ())):
                    if (h, f) not in out:
                        out.append((h, f))
            return out
        out = found(self._files())
        # a workqueue's flush waits for every work queued on it
        if (not out or kind == "wq") and kind not in ANY_TARGET and member not in GENERIC_MEMBERS:
            out += [x for x in found(self._others(member)) if x not in out]
        if member in GENERIC_MEMBERS and len({h for h, _ in out}) > 1:
            return []
        return out

    def targets_of(self, name: str, path: str) -> list[tuple[str, str]]:
        """(kind, member) pairs NAME (of PATH) is the handler of."""
        out = []
        for f in self._files():
            for key, hs in f.hmap.items():
                if name in hs and key not in out and (f.path == path or key[0] == "wq"):
                    if self.handlers(*key):
                        out.append(key)
        return out

    def waits(self, kind: str, member: str):
        """(file, function name, call event) of every wait for KIND/MEMBER
        in the post-images of the patch's C files, and in the other files
        of their directories."""
        files = self._files() + ([] if kind in ANY_TARGET or member in GENERIC_MEMBERS
                                 else self._others(member))
        for file in files:
            info = file.info
            for f in info.functions:
                if f.call_names.isdisjoint(WAITS):
                    continue
                fl = lf.flow_of(info, f.name)
                if fl is None:
                    continue
                for c in fl.calls:
                    if WAITS.get(c.name) == kind and c.args and (kind in ANY_TARGET
                                                                 or _member(c.args[0]) == member):
                        yield file, f.name, c

    def takes(self, name: str, file: _File, kb) -> dict:
        key = (name, file.path)
        if key not in self._takes:
            self._takes[key] = cl.taken_by(file.info, name, kb, file.path)
        return self._takes[key]


def _directory_texts(ctx, skip: set[str]) -> dict[str, str]:
    """path -> text of the .c files, as the base has them, in the
    directories of the patch's C files (not those files themselves)."""
    tree, base = ctx.tree_path, ctx.base
    if not tree or not base:
        return {}
    dirs = sorted({posixpath.dirname(p) for p in skip})
    try:
        names = subprocess.run(["git", "-C", tree, "ls-tree", "--name-only", base, "--"]
                               + [d + "/" for d in dirs if d], capture_output=True, text=True,
                               timeout=30, check=True).stdout.split()
        names = [n for n in names if n.endswith(".c") and n not in skip][:MAX_DIR_FILES]
        if not names:
            return {}
        got = subprocess.run(["git", "-C", tree, "cat-file", "--batch"],
                             input="".join(f"{base}:{n}\n" for n in names).encode(),
                             capture_output=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    out = {}
    pos = 0
    for n in names:
        nl = got.find(b"\n", pos)
        if nl < 0:
            break
        head = got[pos:nl].split()
        pos = nl + 1
        if len(head) < 3 or head[1] != b"blob":
            continue
        size = int(head[2])
        if size <= MAX_FILE_BYTES:
            out[n] = got[pos:pos + size].decode("utf-8", "replace")
        pos += size + 1
    return out


def _handlers(tree) -> dict[tuple[str, str], list[str]]:
    """(kind, member of the work/timer/...) -> handler function names, from
    the set-up calls and `.function = fn` assignments of the file; ("wq",
    member of a workqueue) -> the handlers of the works queued on it."""
    out: dict[tuple[str, str], list[str]] = {}
    queued: list[tuple[str, str, str | None]] = []   # (workqueue member, work member, handler set up beside)
    by_name = {}
    for kind, setups in SETUPS.items():
        for name, obj_i, fn_i in setups:
            by_name.setdefault(name, []).append((kind, obj_i, fn_i))
    debugfs_fops: set[str] = set()
    for f in cparse.functions(tree):
        if f.call_names.isdisjoint(by_name) and b".function" not in (f.node.text or b"") \
                and b"queue_" not in (f.node.text or b"") and f.call_names.isdisjoint(DEBUGFS_CREATE):
            continue
        here: dict[str, str] = {}           # work expression -> handler, set up in this function
        for c in cparse.calls(f.node):
            i = DEBUGFS_CREATE.get(c.name)
            if i is not None and len(c.args) > i:
                debugfs_fops.add(re.sub(r"\s+", "", c.args[i]).lstrip("&"))
            if c.name in ("queue_work", "queue_delayed_work", "mod_delayed_work", "queue_work_on",
                          "queue_delayed_work_on") and len(c.args) >= 2:
                i = 1 if c.name.endswith("_on") else 0
                if len(c.args) > i + 1:
                    work = re.sub(r"\s+", "", c.args[i + 1]).lstrip("&")
                    queued.append((_member(c.args[i]), _member(c.args[i + 1]), here.get(work)))
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
                here[re.sub(r"\s+", "", c.args[obj_i]).lstrip("&")] = handler
        for m in re.finditer(rb"([\w>.-]+)\.function\s*=\s*(\w+)\s*;", f.node.text or b""):
            out.setdefault(("hrtimer", _member(m.group(1).decode())), []).append(m.group(2).decode())
    for ini in cparse.struct_initializers(tree):
        if ini.struct == "proc_ops" or (ini.struct == "file_operations" and ini.name in debugfs_fops):
            lst = out.setdefault(("proc" if ini.struct == "proc_ops" else "debugfs", "*"), [])
            lst.extend(v for _, v, _ in ini.members if re.match(r"^\w+$", v) and v not in lst)
    if debugfs_fops:
        for c in cparse.calls(tree.root_node):
            if c.name in FOPS_MACROS and c.args:
                fops, fns = FOPS_MACROS[c.name](c.args)
                if fops in debugfs_fops:
                    lst = out.setdefault(("debugfs", "*"), [])
                    lst.extend(v for v in fns if re.match(r"^\w+$", v) and v != "NULL" and v not in lst)
    for wq, work, h in queued:
        hs = [h] if h else [x for kind in ("work", "dwork") for x in out.get((kind, work), ())]
        if not h and work in GENERIC_MEMBERS and len(set(hs)) > 1:
            continue        # which of the works named `work` is it?
        lst = out.setdefault(("wq", wq), [])
        lst.extend(x for x in hs if x not in lst)
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


def _waited_before(pre, fn_name: str, call: str, target: str) -> bool:
    """Whether the pre-image of the function already made this wait."""
    fl = lf.flow_of(pre, fn_name)
    return fl is not None and any(c.name == call and c.args and _member(c.args[0]) == target
                                  for c in fl.calls)


def _dropped_before(fl, line: int, cls: str, kb) -> bool:
    """Whether the function releases lock CLS before LINE (the callers'
    lock dropped around the wait: `rtnl_unlock(); flush_work(); rtnl_lock();`)."""
    for c in fl.calls:
        if c.line >= line:
            break
        if c.name in lf.RELEASE:
            key = lf.key_of_call(c.name, lf.RELEASE[c.name], c.args, fl.types)[0]
            if cl.same_lock(key, cls):
                return True
        elif kb:
            ops = kb.lock_wrapper(c.name) or ()
            for op, what, _ in ops:
                if op == "r" and (what.startswith("@") or cl.same_lock(what, cls)):
                    return True
    return False


def _self_guards(fn_node, target: str, before: int) -> list[str]:
    """`current_work() != &x->target...` tests of the work TARGET made in a
    function up to line BEFORE (the wait skipped when running from the work)."""
    out = []
    for c in cparse.calls(fn_node):
        if c.name != "current_work" or c.line > before:
            continue
        par = c.node.parent
        while par is not None and par.type == "parenthesized_expression":
            par = par.parent
        if par is not None and par.type == "binary_expression":
            text = re.sub(r"\s+", " ", cparse.node_text(par))
            if re.search(r"(->|\.)" + re.escape(target) + r"\b", text):
                out.append(text)
    return out


def _self_guard_dropped(pre, fn, c, target: str) -> str | None:
    """The guard of the pre-image's wait for the same work, when the post-
    image waits without one."""
    if _self_guards(fn.node, target, c.line):
        return None
    pf = pre.byname.get(fn.name)
    if pf is None:
        return None
    for pc in cparse.calls(pf.node):
        if pc.name == c.name and pc.args and _member(pc.args[0]) == target:
            got = _self_guards(pf.node, target, pc.line)
            if got:
                return got[0]
    return None


def _reaches(info, start: str, target: str, depth: int = 4) -> list[str] | None:
    """A same-file call chain from START to TARGET ("f() calls g() at line N" steps)."""
    frontier = [(start, [])]
    seen = {start}
    for _ in range(depth):
        nxt = []
        for n, steps in frontier:
            f = info.byname.get(n)
            if f is None:
                continue
            for c in cparse.calls(f.node):
                if c.name == target:
                    return steps + [f"{n}() calls {target}() at line {c.line}"]
                if c.name in info.byname and c.name not in seen:
                    seen.add(c.name)
                    nxt.append((c.name, steps + [f"{n}() calls {c.name}() at line {c.line}"]))
        frontier = nxt
    return None


_PENDING = re.compile(r"\b(delayed_)?work_pending\s*\(")


def _pending_guard(fn_node, call_node, target: str) -> str | None:
    """The condition of an `if` around the call that tests whether the work
    TARGET is pending (`if (work_pending(&x->target))`)."""
    n = call_node
    while n is not None and n != fn_node:
        par = n.parent
        if par is not None and par.type == "if_statement" and n == par.child_by_field_name("consequence"):
            cond = re.sub(r"\s+", " ", cparse.node_text(par.child_by_field_name("condition"))).strip()
            if _PENDING.search(cond) and re.search(r"(->|\.)" + re.escape(target) + r"\b", cond):
                return cond[1:-1].strip() if cond.startswith("(") and cond.endswith(")") else cond
        n = par
    return None


def _pending_guard_added(pre, fn, c, target: str) -> str | None:
    """The work_pending() test the post-image puts around a wait that the
    pre-image made without one."""
    cond = _pending_guard(fn.node, c.node, target)
    if cond is None:
        return None
    pf = pre.byname.get(fn.name)
    if pf is None:
        return None
    for pc in cparse.calls(pf.node):
        if pc.name == c.name and pc.args and _member(pc.args[0]) == target:
            return None if _pending_guard(pf.node, pc.node, target) else cond
    return None
