"""Vocabulary shared by rules: lock families, sleeping calls, paths."""
from __future__ import annotations

import fnmatch
import functools
import re


@functools.lru_cache(maxsize=64)
def _globs(globs: tuple[str, ...]) -> tuple[tuple[str, ...], frozenset[str], "re.Pattern | None"]:
    """(prefixes of the `dir/*` globs, plain names, one pattern for the
    rest): most path globs are directories, and a string test is cheaper
    than compiling them all into a regular expression."""
    prefixes, exact, other = [], set(), []
    for g in globs:
        head = g[:-1] if g.endswith("*") else g
        if any(c in head for c in "*?["):
            other.append(g)
        elif g.endswith("*"):
            prefixes.append(head)
        else:
            exact.add(g)
    pattern = re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in other)) if other else None
    return tuple(prefixes), frozenset(exact), pattern


def matches_any(path: str, globs) -> bool:
    """any(fnmatch.fnmatch(path, g) for g in globs) (case-sensitive; `*`
    crosses `/`), worked out once per set of globs (rules ask for every
    file of every patch)."""
    prefixes, exact, pattern = _globs(tuple(globs))
    return (path.startswith(prefixes) or path in exact
            or (pattern is not None and pattern.match(path) is not None))


# acquire -> release, for the plain lock families
LOCK_PAIRS = {
    "spin_lock": "spin_unlock", "spin_lock_bh": "spin_unlock_bh", "spin_lock_irq": "spin_unlock_irq",
    "spin_lock_irqsave": "spin_unlock_irqrestore", "spin_lock_nested": "spin_unlock",
    "raw_spin_lock": "raw_spin_unlock", "raw_spin_lock_bh": "raw_spin_unlock_bh",
    "raw_spin_lock_irq": "raw_spin_unlock_irq", "raw_spin_lock_irqsave": "raw_spin_unlock_irqrestore",
    "read_lock": "read_unlock", "read_lock_bh": "read_unlock_bh", "read_lock_irq": "read_unlock_irq",
    "read_lock_irqsave": "read_unlock_irqrestore",
    "write_lock": "write_unlock", "write_lock_bh": "write_unlock_bh", "write_lock_irq": "write_unlock_irq",
    "write_lock_irqsave": "write_unlock_irqrestore",
    "mutex_lock": "mutex_unlock", "mutex_lock_nested": "mutex_unlock",
    "down_read": "up_read", "down_write": "up_write",
    "rcu_read_lock": "rcu_read_unlock", "rcu_read_lock_bh": "rcu_read_unlock_bh",
    "lock_sock": "release_sock", "local_lock": "local_unlock", "local_lock_irqsave": "local_unlock_irqrestore",
    "bh_lock_sock": "bh_unlock_sock", "local_irq_save": "local_irq_restore", "local_irq_disable": "local_irq_enable",
    "preempt_disable": "preempt_enable", "local_bh_disable": "local_bh_enable",
}
LOCK_CALLS = set(LOCK_PAIRS) | set(LOCK_PAIRS.values()) | {
    "spin_trylock", "spin_trylock_bh", "spin_trylock_irqsave", "mutex_trylock",
    "mutex_lock_interruptible", "mutex_lock_killable", "down_read_trylock", "down_write_trylock",
}
SPIN_ACQUIRE = {k for k in LOCK_PAIRS if k.startswith(("spin_lock", "raw_spin_lock", "read_lock", "write_lock", "bh_lock_sock"))}
# Code that legitimately depends on PREEMPT_RT.
RT_CORE_GLOBS = (
    "kernel/locking/*", "kernel/sched/*", "kernel/rcu/*", "kernel/irq/*", "kernel/softirq.c",
    "kernel/printk/*", "kernel/time/*", "kernel/trace/*", "kernel/entry/*", "kernel/Kconfig.preempt",
    "include/linux/*lock*", "include/linux/preempt.h", "include/linux/sched*", "include/linux/rcu*",
    "include/linux/interrupt.h", "include/linux/irqflags.h", "include/linux/bottom_half.h",
    "include/linux/local_lock*", "include/linux/mutex*", "include/linux/rwsem.h", "include/linux/ww_mutex.h",
    "include/asm-generic/*", "arch/*", "mm/slub.c", "mm/page_alloc.c", "mm/memcontrol.c", "lib/locking-selftest.c",
)


def is_rt_core(path: str) -> bool:
    return matches_any(path, RT_CORE_GLOBS)


def subsystem_of(path: str) -> str:
    parts = path.split("/")
    return "/".join(parts[:2]) if len(parts) > 2 else parts[0]


# --- release pairs (missing-release family) ---------------------------------
# Explicit acquire -> release names.  A release tuple lists every call that
# undoes the acquire.
RELEASE_PAIRS: dict[str, tuple[str, ...]] = {}
for _a in ("kmalloc", "kzalloc", "kcalloc", "kmalloc_array", "kmalloc_node", "kzalloc_node",
           "kcalloc_node", "kmemdup", "kstrdup", "kstrndup", "krealloc", "kmemdup_nul"):
    RELEASE_PAIRS[_a] = ("kfree", "kfree_sensitive", "kvfree", "kfree_rcu", "kvfree_rcu")
for _a in ("kvmalloc", "kvzalloc", "kvcalloc", "kvmalloc_array", "vmalloc", "vzalloc", "vcalloc",
           "vmalloc_node", "vzalloc_node"):
    RELEASE_PAIRS[_a] = ("kvfree", "vfree", "kvfree_rcu", "kvfree_sensitive")
for _a in ("alloc_skb", "netdev_alloc_skb", "napi_alloc_skb", "__alloc_skb", "skb_clone",
           "skb_copy", "build_skb", "sock_alloc_send_skb", "__netdev_alloc_skb"):
    RELEASE_PAIRS[_a] = ("kfree_skb", "consume_skb", "dev_kfree_skb", "dev_kfree_skb_any",
                         "dev_kfree_skb_irq", "kfree_skb_reason", "__kfree_skb", "dev_consume_skb_any")
RELEASE_PAIRS.update({
    "alloc_netdev": ("free_netdev",), "alloc_netdev_mqs": ("free_netdev",),
    "alloc_etherdev": ("free_netdev",), "alloc_etherdev_mqs": ("free_netdev",),
    "dev_hold": ("dev_put",), "netdev_hold": ("netdev_put",),
    "sock_hold": ("sock_put", "__sock_put", "sock_gen_put"),
    "get_net": ("put_net",), "maybe_get_net": ("put_net",),
    "of_node_get": ("of_node_put",), "of_find_node_by_name": ("of_node_put",),
    "of_find_compatible_node": ("of_node_put",), "of_parse_phandle": ("of_node_put",),
    "of_get_child_by_name": ("of_node_put",), "of_find_node_by_path": ("of_node_put",),
    "of_get_parent": ("of_node_put",), "of_find_matching_node": ("of_node_put",),
    "pm_runtime_enable": ("pm_runtime_disable",),
    "pm_runtime_get": ("pm_runtime_put", "pm_runtime_put_sync", "pm_runtime_put_noidle",
                       "pm_runtime_put_autosuspend", "pm_runtime_put_sync_suspend"),
    "request_irq": ("free_irq",), "request_threaded_irq": ("free_irq",),
    "request_any_context_irq": ("free_irq",),
    "clk_prepare_enable": ("clk_disable_unprepare",), "clk_prepare": ("clk_unprepare",),
    "clk_enable": ("clk_disable",), "clk_get": ("clk_put",),
    "regulator_enable": ("regulator_disable",), "regulator_get": ("regulator_put",),
    "get_device": ("put_device",), "try_module_get": ("module_put",),
    "kref_get": ("kref_put",), "kobject_get": ("kobject_put",),
    "bpf_prog_get": ("bpf_prog_put",), "bpf_prog_inc": ("bpf_prog_put",),
    "bpf_map_get": ("bpf_map_put", "bpf_map_put_with_uref"), "bpf_map_inc": ("bpf_map_put",),
    "dget": ("dput",), "fget": ("fput",), "fdget": ("fdput",),
    "ioremap": ("iounmap",), "dma_alloc_coherent": ("dma_free_coherent",),
    "alloc_workqueue": ("destroy_workqueue",), "create_workqueue": ("destroy_workqueue",),
    "create_singlethread_workqueue": ("destroy_workqueue",),
    "alloc_ordered_workqueue": ("destroy_workqueue",),
    "kmem_cache_create": ("kmem_cache_destroy",), "kmem_cache_alloc": ("kmem_cache_free",),
    "kmem_cache_zalloc": ("kmem_cache_free",),
    "kthread_run": ("kthread_stop",), "kthread_create": ("kthread_stop",),
    "proc_create": ("remove_proc_entry", "proc_remove", "remove_proc_subtree"),
    "proc_create_data": ("remove_proc_entry", "proc_remove", "remove_proc_subtree"),
    "proc_create_net": ("remove_proc_entry", "proc_remove", "remove_proc_subtree"),
    "proc_create_net_single": ("remove_proc_entry", "proc_remove", "remove_proc_subtree"),
    "proc_create_seq": ("remove_proc_entry", "proc_remove", "remove_proc_subtree"),
    "proc_mkdir": ("remove_proc_entry", "proc_remove", "remove_proc_subtree"),
    "misc_register": ("misc_deregister",),
    "genl_register_family": ("genl_unregister_family",),
    "rhashtable_init": ("rhashtable_destroy", "rhashtable_free_and_destroy"),
    "ida_alloc": ("ida_free",), "ida_simple_get": ("ida_simple_remove", "ida_free"),
    "idr_alloc": ("idr_remove",),
    "sk_alloc": ("sk_free", "sk_common_release"),
    "iio_device_alloc": ("iio_device_free",),
    "input_allocate_device": ("input_free_device",),
    "usb_alloc_urb": ("usb_free_urb",),
})
# Functions whose release is a `_put` of the same stem are matched by name
# (X_get -> X_put, register_X -> unregister_X, X_register -> X_unregister,
# X_alloc -> X_free/X_destroy/X_put) when the file itself uses that release.
# Acquires that report success as an int status (the resource is the argument).
STATUS_ACQUIRES = {"request_irq", "request_threaded_irq", "request_any_context_irq",
                   "clk_prepare_enable", "clk_prepare", "clk_enable", "regulator_enable",
                   "pm_runtime_enable", "misc_register", "genl_register_family",
                   "rhashtable_init", "dev_hold", "netdev_hold", "sock_hold", "kref_get",
                   "get_device", "pm_runtime_get"}
# Acquire prefixes that manage themselves.
SELF_RELEASING_PREFIXES = ("devm_", "pcim_", "drmm_", "dmam_")


def release_names(acquire: str, known_calls: set[str] | frozenset = frozenset()) -> tuple[str, ...]:
    """The calls that undo `acquire`, or () when it is not an acquire.
    Name-derived pairs (register_X/unregister_X, X_get/X_put, X_alloc/X_free)
    count only when the release appears in `known_calls` (the file uses it)."""
    fixed, cands = _release_candidates(acquire)
    if fixed is not None:
        return fixed
    return tuple(c for c in cands if c in known_calls) if cands else ()


@functools.lru_cache(maxsize=16384)
def _release_candidates(acquire: str) -> tuple[tuple[str, ...] | None, tuple[str, ...]]:
    """(the releases of a known pair, or None; the name-derived candidates)."""
    if acquire.startswith(SELF_RELEASING_PREFIXES):
        return (), ()
    if acquire.startswith("pm_runtime_get") or acquire == "pm_runtime_resume_and_get":
        return RELEASE_PAIRS["pm_runtime_get"], ()
    if acquire in RELEASE_PAIRS:
        return RELEASE_PAIRS[acquire], ()
    cands: list[str] = []
    if acquire.startswith("register_"):
        cands = ["unregister_" + acquire[len("register_"):]]
    elif acquire.startswith("__register_"):
        cands = ["unregister_" + acquire[len("__register_"):], "__unregister_" + acquire[len("__register_"):]]
    elif acquire.endswith("_register") and not acquire.endswith("_unregister"):
        stem = acquire[: -len("_register")]
        cands = [stem + "_unregister", stem + "_deregister"]
    elif acquire.endswith("_get") and len(acquire) > 4:
        cands = [acquire[:-4] + "_put"]
    elif acquire.endswith("_alloc") and len(acquire) > 6:
        stem = acquire[:-6]
        cands = [stem + "_free", stem + "_destroy", stem + "_put", stem + "_release"]
    elif acquire.endswith("_create") and len(acquire) > 7:
        cands = [acquire[:-7] + "_destroy"]
    return None, tuple(cands)


# Ops-table members: acquire side -> members that undo it.
OPS_MEMBER_PAIRS: dict[str, tuple[str, ...]] = {
    "open": ("release", "close"),
    "ndo_open": ("ndo_stop",),
    "proc_open": ("proc_release",),
    "ndo_init": ("ndo_uninit",),
    "init": ("exit", "destroy", "uninit", "cleanup", "fini", "deinit", "release", "free",
             "exit_batch", "pre_exit", "exit_batch_rtnl"),
    "map_alloc": ("map_free",),
    "hash": ("unhash",),
    "probe": ("remove", "remove_new", "disconnect"),
}
# Pairs that only hold for one struct type.
OPS_TYPED_PAIRS: dict[str, dict[str, tuple[str, ...]]] = {
    "seq_operations": {"start": ("stop",)},
    "component_ops": {"bind": ("unbind",)},
}
# Members whose presence always means something must be undone.
OPS_ALWAYS_ACQUIRE = {"map_alloc", "hash"}
# Release-side (lifecycle) members compared between twin tables.
LIFECYCLE_MEMBERS = {"release", "close", "destroy", "exit", "uninit", "cleanup", "fini", "deinit",
                     "free", "unhash", "remove", "remove_new", "disconnect", "put", "stop",
                     "unbind", "map_free", "map_release_uref", "ndo_stop", "ndo_uninit",
                     "exit_batch", "pre_exit", "free_inode", "destroy_inode", "evict_inode",
                     "put_super", "kill_sb", "detach", "release_sock", "shutdown", "dealloc"}
# Values for an acquire member that acquire nothing themselves.
OPS_NOOP_VALUES = {"simple_open", "nonseekable_open", "stream_open", "generic_file_open",
                   "NULL", "0", "noop_open"}
