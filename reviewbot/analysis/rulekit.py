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
    known = _releases_by_acquire().get(acquire)
    if known:
        return known, ()
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


# --- the release side --------------------------------------------------------

# Reference-counting iterators: leaving one early (break, return, goto)
# keeps a reference to the current node, which the loop would have put.
ITERATOR_PUTS: dict[str, tuple[str, ...]] = {}
for _m in ("for_each_child_of_node", "for_each_available_child_of_node", "for_each_compatible_node",
           "for_each_matching_node", "for_each_matching_node_and_match", "for_each_node_by_name",
           "for_each_node_by_type", "for_each_node_with_property", "for_each_endpoint_of_node",
           "for_each_of_cpu_node", "for_each_node_by_phandle", "for_each_of_allnodes",
           "for_each_of_allnodes_from", "for_each_child_of_node_scoped"):
    ITERATOR_PUTS[_m] = ("of_node_put",)
for _m in ("device_for_each_child_node", "fwnode_for_each_child_node",
           "fwnode_for_each_available_child_node", "fwnode_graph_for_each_endpoint",
           "fwnode_for_each_parent_node"):
    ITERATOR_PUTS[_m] = ("fwnode_handle_put",)
ITERATOR_PUTS["for_each_pci_dev"] = ("pci_dev_put",)
ITERATOR_PUTS["for_each_netdev_feature"] = ()
del ITERATOR_PUTS["for_each_netdev_feature"]
# the iterator's scoped form puts by itself
SCOPED_ITERATORS = frozenset({"for_each_child_of_node_scoped"})

_RELEASE_RE = re.compile(
    r"(^|_)(put|free|unregister|deregister|destroy|release|unmap|unprepare|kill)(_[a-z0-9]+){0,2}$|"
    r"^(kfree\w*|kvfree\w*|vfree|iounmap|free_irq|free_netdev|unregister_\w+|put_\w+|"
    r"dev_kfree_skb\w*|kfree_skb\w*|consume_skb|dput|fput|fdput|sock_put|dev_put|netdev_put|put_net|"
    r"tasklet_kill|del_timer_sync|timer_shutdown_sync|cancel_work_sync|cancel_delayed_work_sync|"
    r"kthread_stop|clk_disable_unprepare|clk_disable|clk_unprepare|regulator_disable|"
    r"pm_runtime_disable|pm_runtime_put\w*|pm_runtime_dont_use_autosuspend|"
    r"of_node_put|fwnode_handle_put|module_put|ida_free|ida_simple_remove|idr_remove|"
    r"misc_deregister|remove_proc_entry|proc_remove|debugfs_remove\w*|"
    r"usb_free_urb|usb_put_\w+|put_device|kobject_put|kref_put|bpf_prog_put|bpf_map_put\w*|"
    r"sk_free|sock_release|crypto_free_\w+|dma_free_coherent|dma_unmap_\w+|"
    r"destroy_workqueue|kmem_cache_destroy|kmem_cache_free|mempool_destroy|"
    r"input_free_device|input_unregister_device|iio_device_free|"
    r"gpiod_put|gpio_free|i2c_unregister_device|i2c_put_adapter|platform_device_unregister|"
    r"platform_device_put|pci_dev_put|pci_disable_device|pci_release_regions|pci_iounmap|"
    r"nvmem_device_put|mbox_free_channel|dma_release_channel|phy_disconnect|phy_device_free|"
    r"mdiobus_unregister|mdiobus_free|bitmap_free|free_percpu|free_page|free_pages|__free_pages|"
    r"fwnode_handle_put|software_node_unregister|sysfs_remove_\w+|device_remove_file|"
    r"release_firmware|release_mem_region|release_region|put_task_struct|mmput|put_pid|"
    r"rhashtable_destroy|rhashtable_free_and_destroy|kset_unregister|class_destroy|"
    r"device_destroy|cdev_del|unregister_chrdev_region|blk_mq_free_tag_set|"
    r"put_disk|blk_cleanup_queue|scsi_host_put|scsi_remove_host|snd_card_free)$")
# never a release of the argument's ownership, whatever the name says
_NOT_RELEASE = frozenset({"spin_unlock", "mutex_unlock", "read_unlock", "write_unlock", "up_read",
                          "up_write", "up", "rcu_read_unlock", "release_sock", "free_irq_cpu_rmap"})


def is_release(name: str) -> bool:
    """A call that gives something back (frees, puts, unregisters, kills)."""
    return name not in _NOT_RELEASE and bool(_RELEASE_RE.search(name))


@functools.lru_cache(maxsize=1)
def _acquires_by_release() -> dict[str, frozenset[str]]:
    out: dict[str, set[str]] = {}
    for acq, rels in RELEASE_PAIRS.items():
        for r in rels:
            out.setdefault(r, set()).add(acq)
    for m, rels in ITERATOR_PUTS.items():
        for r in rels:
            out.setdefault(r, set()).add(m)
    extra = {
        "of_node_put": ("of_get_next_child", "of_get_next_available_child", "of_graph_get_next_endpoint",
                        "of_graph_get_port_by_id", "of_graph_get_remote_port_parent",
                        "of_graph_get_remote_endpoint", "of_graph_get_remote_port", "of_get_cpu_node",
                        "of_find_node_with_property", "of_find_node_opts_by_path", "of_find_node_by_phandle",
                        "of_find_node_by_type", "of_get_compatible_child", "of_cpu_device_node_get",
                        "of_parse_phandle", "of_graph_get_endpoint_by_regs", "of_get_next_parent"),
        "fwnode_handle_put": ("fwnode_get_named_child_node", "device_get_named_child_node",
                              "fwnode_get_next_child_node", "device_get_next_child_node",
                              "fwnode_graph_get_next_endpoint", "fwnode_graph_get_remote_endpoint",
                              "fwnode_graph_get_remote_port_parent", "fwnode_get_parent",
                              "fwnode_find_reference", "fwnode_handle_get", "fwnode_get_next_available_child_node",
                              "fwnode_graph_get_endpoint_by_id", "fwnode_get_next_parent"),
        "put_device": ("get_device", "bus_find_device", "bus_find_device_by_name", "class_find_device",
                       "device_find_child", "driver_find_device", "of_find_device_by_node",
                       "bus_find_device_by_of_node", "bus_find_device_by_fwnode", "device_register",
                       "device_add", "device_initialize"),
        "platform_device_put": ("platform_device_alloc",),
        "pci_dev_put": ("pci_get_device", "pci_get_domain_bus_and_slot", "pci_get_slot", "pci_dev_get",
                        "pci_get_class", "pci_get_subsys"),
        "pm_runtime_put_noidle": ("pm_runtime_get_sync", "pm_runtime_get_noresume", "pm_runtime_get",
                                  "pm_runtime_resume_and_get"),
        "tasklet_kill": ("tasklet_init", "tasklet_setup"),
        "kobject_put": ("kobject_init_and_add", "kobject_create_and_add", "kobject_get", "kobject_init"),
        "i2c_unregister_device": ("i2c_new_dummy_device", "i2c_new_client_device", "i2c_new_ancillary_device"),
        "usb_put_dev": ("usb_get_dev",), "usb_put_intf": ("usb_get_intf",),
        "mmput": ("get_task_mm",), "put_task_struct": ("get_task_struct", "get_pid_task"),
        "put_pid": ("get_pid", "find_get_pid", "get_task_pid"),
        "kfree_skb": ("skb_dequeue", "skb_dequeue_tail", "__skb_dequeue"),
        "cancel_work_sync": ("INIT_WORK", "queue_work", "schedule_work"),
        "cancel_delayed_work_sync": ("INIT_DELAYED_WORK", "queue_delayed_work", "schedule_delayed_work"),
        "del_timer_sync": ("timer_setup", "setup_timer", "mod_timer", "add_timer"),
        "release_firmware": ("request_firmware", "request_firmware_direct", "firmware_request_nowarn"),
        "nvmem_device_put": ("of_nvmem_device_get", "nvmem_device_get"),
        "gpiod_put": ("gpiod_get", "gpiod_get_optional", "gpiod_get_index"),
        "i2c_put_adapter": ("i2c_get_adapter", "of_find_i2c_adapter_by_node", "of_get_i2c_adapter_by_node"),
        "dma_release_channel": ("dma_request_chan", "dma_request_channel", "dma_request_slave_channel"),
        "mbox_free_channel": ("mbox_request_channel", "mbox_request_channel_byname"),
        "free_percpu": ("alloc_percpu", "__alloc_percpu", "alloc_percpu_gfp"),
        "bitmap_free": ("bitmap_zalloc", "bitmap_alloc"),
    }
    for r, acqs in extra.items():
        out.setdefault(r, set()).update(acqs)
    for r in list(out):
        if r.startswith("pm_runtime_put"):
            out[r] |= set(extra["pm_runtime_put_noidle"])
    return {r: frozenset(a) for r, a in out.items()}


def acquires_of(release: str) -> frozenset[str]:
    """The calls RELEASE undoes (known pairs and name-derived ones:
    X_put -> X_get, X_free -> X_alloc, unregister_X -> register_X, ...)."""
    known = _acquires_by_release().get(release, frozenset())
    derived = set()
    for suf, acqs in (("_put", ("_get",)), ("_free", ("_alloc", "_create", "_new", "_init")),
                      ("_destroy", ("_create", "_alloc", "_init")), ("_unregister", ("_register",)),
                      ("_deregister", ("_register",)), ("_release", ("_request", "_get", "_acquire", "_alloc")),
                      ("_unmap", ("_map",)), ("_disable", ("_enable",)), ("_exit", ("_init",)),
                      ("_cleanup", ("_init", "_setup")), ("_stop", ("_start",)),
                      ("_disconnect", ("_connect", "_attach")), ("_detach", ("_attach",)),
                      ("_deinit", ("_init",)), ("_uninit", ("_init",)), ("_fini", ("_init",)),
                      ("_teardown", ("_setup",))):
        if release.endswith(suf) and len(release) > len(suf):
            stem = release[: -len(suf)]
            derived.update(stem + a for a in acqs)
    for pre, acqs in (("unregister_", ("register_",)), ("put_", ("get_",)), ("free_", ("alloc_", "request_")),
                      ("release_", ("request_", "acquire_")), ("destroy_", ("create_", "alloc_"))):
        if release.startswith(pre):
            stem = release[len(pre):]
            derived.update(a + stem for a in acqs)
    for mid, acqs in (("_put_", ("_get_",)), ("_free_", ("_alloc_", "_new_")), ("_unregister_", ("_register_",)),
                      ("_release_", ("_get_", "_acquire_", "_request_")), ("_destroy_", ("_create_", "_alloc_")),
                      ("_cleanup_", ("_init_", "_setup_")), ("_deinit_", ("_init_",)), ("_uninit_", ("_init_",)),
                      ("_exit_", ("_init_",)), ("_teardown_", ("_setup_",))):
        if mid in release:
            derived.update(release.replace(mid, a, 1) for a in acqs)
    return known | frozenset(derived)


@functools.lru_cache(maxsize=1)
def _releases_by_acquire() -> dict[str, tuple[str, ...]]:
    """The table above read the other way (acquire -> its releases), for
    the acquires RELEASE_PAIRS does not list; iterators and work/timer
    set-up are not acquires of a value."""
    out: dict[str, list[str]] = {}
    for rel, acqs in _acquires_by_release().items():
        for a in acqs:
            if a in RELEASE_PAIRS or a in ITERATOR_PUTS or a.isupper() or a in (
                    "queue_work", "schedule_work", "queue_delayed_work", "schedule_delayed_work",
                    "mod_timer", "add_timer", "device_add", "device_initialize", "skb_dequeue",
                    "skb_dequeue_tail", "__skb_dequeue", "kobject_init"):
                continue
            out.setdefault(a, []).append(rel)
    return {a: tuple(sorted(set(r))) for a, r in out.items()}


def release_names_known(acquire: str, knowledge=None, min_support: int = 3,
                        min_ratio: float = 0.5) -> tuple[str, ...]:
    """The hand-written releases of ACQUIRE (release_names()), then those the
    tree knowledge base (ctx.knowledge, reviewbot.tree.kbquery.View) mined
    from the tree's callers with enough support, and its DEFINE_FREE /
    DEFINE_GUARD / __free pairs."""
    out = list(release_names(acquire))
    if knowledge is not None:
        for rel, support, total, source in knowledge.release_for(acquire):
            if rel in out:
                continue
            if source in ("DEFINE_FREE", "DEFINE_GUARD", "__free") or (
                    support >= min_support and total and support / total >= min_ratio):
                out.append(rel)
    return tuple(out)
