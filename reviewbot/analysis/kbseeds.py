"""The knowledge base's seed tables (reviewbot.analysis.facts and
reviewbot.tree.knowledge read them): sleeping primitives, what a may-sleep
chain must not go through, context registrations and callback members, ops
members with a known calling context, extra lock primitives, name patterns
of release pairs.
"""
from __future__ import annotations

import re

# Calls that may sleep, whatever their arguments: name -> why.
SLEEPS = {
    **{n: "mutex" for n in ("mutex_lock", "mutex_lock_nested", "mutex_lock_io", "mutex_lock_interruptible",
                            "mutex_lock_killable", "mutex_lock_interruptible_nested",
                            "mutex_lock_killable_nested", "mutex_lock_io_nested")},
    **{n: "rwsem/semaphore" for n in ("down", "down_interruptible", "down_killable", "down_timeout",
                                     "down_read", "down_write", "down_read_nested", "down_write_nested",
                                     "down_read_interruptible", "down_read_killable",
                                     "down_write_killable")},
    **{n: "wait" for n in ("wait_event", "wait_event_interruptible", "wait_event_timeout",
                           "wait_event_interruptible_timeout", "wait_event_killable",
                           "wait_event_freezable", "wait_event_idle", "wait_event_idle_timeout",
                           "wait_event_interruptible_exclusive", "wait_event_killable_timeout",
                           "wait_for_completion", "wait_for_completion_timeout",
                           "wait_for_completion_interruptible", "wait_for_completion_interruptible_timeout",
                           "wait_for_completion_killable", "wait_for_completion_killable_timeout",
                           "wait_for_completion_io", "wait_for_completion_io_timeout",
                           "wait_on_bit", "wait_on_bit_io", "wait_on_bit_timeout", "wait_on_page_locked",
                           "wait_on_buffer", "wait_var_event", "wait_var_event_timeout",
                           "wait_var_event_killable")},
    **{n: "sleep" for n in ("msleep", "msleep_interruptible", "ssleep", "usleep_range", "usleep_range_state",
                            "fsleep", "schedule", "schedule_timeout", "schedule_timeout_interruptible",
                            "schedule_timeout_uninterruptible", "schedule_timeout_killable",
                            "schedule_timeout_idle", "schedule_hrtimeout", "schedule_hrtimeout_range",
                            "io_schedule", "io_schedule_timeout", "cond_resched", "might_sleep",
                            "might_sleep_if", "yield")},
    **{n: "user copy" for n in ("copy_to_user", "copy_from_user", "get_user", "put_user",
                                "__copy_to_user", "__copy_from_user", "strncpy_from_user", "clear_user",
                                "copy_to_user_iter", "memdup_user", "memdup_user_nul", "strndup_user",
                                "vmemdup_user")},
    **{n: "synchronous work flush" for n in ("cancel_work_sync", "cancel_delayed_work_sync", "flush_work",
                                            "flush_delayed_work", "flush_workqueue", "drain_workqueue",
                                            "destroy_workqueue", "flush_scheduled_work",
                                            "kthread_stop", "kthread_flush_work", "tasklet_kill")},  # not del_timer_sync: it spins
    **{n: "RCU/irq synchronisation" for n in ("synchronize_rcu", "synchronize_net", "synchronize_irq",
                                             "synchronize_srcu", "synchronize_rcu_expedited",
                                             "synchronize_sched", "rcu_barrier", "free_irq",
                                             "disable_irq", "napi_disable")},
    **{n: "sleeping lock" for n in ("rtnl_lock", "lock_sock", "lock_sock_nested", "lock_sock_fast",
                                    "mutex_lock_io", "console_lock", "lock_page", "folio_lock",
                                    "lock_buffer", "inode_lock", "inode_lock_shared", "i_mmap_lock_write",
                                    "mmap_read_lock", "mmap_write_lock", "device_lock", "cpus_read_lock",
                                    "get_online_cpus", "rtnl_lock_killable", "pci_lock_rescan_remove")},
    **{n: "sleeps: vmalloc, device or firmware setup" for n in ("request_firmware", "request_firmware_direct",
                                     "firmware_request_nowarn", "request_module",
                                     "vmalloc", "vzalloc", "vmalloc_node", "vzalloc_node",
                                     "alloc_netdev_mqs", "register_netdev",
                                     "unregister_netdev", "device_add", "device_register",
                                     "kthread_create", "kthread_run", "call_usermodehelper",
                                     "regulator_enable", "clk_prepare",
                                     "clk_prepare_enable", "clk_unprepare", "clk_disable_unprepare")},
}

# Allocators that sleep only with a sleeping gfp mask: name -> index of the
# gfp argument (-1: the last one).
GFP_ALLOCS = {
    "kmalloc": 1, "kzalloc": 1, "kcalloc": 2, "kmalloc_array": 2, "kmalloc_node": 1, "kzalloc_node": 1,
    "kcalloc_node": 2, "kmalloc_array_node": 2, "krealloc": 2, "kmemdup": 2, "kstrdup": 1, "kstrndup": 2,
    "kvmalloc": 1, "kvzalloc": 1, "kvcalloc": 2, "kvmalloc_array": 2, "kvmalloc_node": 1,
    "kvzalloc_node": 1, "kvrealloc": 3,
    "kmem_cache_alloc": 1, "kmem_cache_zalloc": 1, "kmem_cache_alloc_node": 1,
    "alloc_skb": 1, "__alloc_skb": 1, "alloc_skb_fclone": 1, "skb_clone": 1, "skb_copy": 1,
    "pskb_copy": 1, "skb_copy_expand": 3, "pskb_expand_head": 3,
    "__netdev_alloc_skb": 2, "__napi_alloc_skb": 2, "sock_alloc_send_skb": -1,
    "alloc_pages": 0, "__get_free_pages": 0, "get_zeroed_page": 0, "__get_free_page": 0,
    "alloc_page": 0, "dma_alloc_coherent": 3, "dma_pool_alloc": 1, "dma_pool_zalloc": 1,
    "mempool_alloc": 1, "idr_alloc": 4, "idr_alloc_cyclic": 4, "ida_alloc": 1, "ida_alloc_range": 3,
    "ida_alloc_min": 2, "ida_alloc_max": 2, "xa_alloc": 4, "xa_store": 3, "radix_tree_preload": 0,
    "usb_alloc_urb": 1, "usb_submit_urb": 1, "usb_alloc_coherent": 2,
    "devm_kmalloc": 2, "devm_kzalloc": 2, "devm_kcalloc": 3, "devm_kmalloc_array": 3,
    "kasprintf": 0, "kvasprintf": 0, "devm_kasprintf": 1, "genlmsg_new": 1, "nlmsg_new": 1,
    "sk_alloc": 2, "kmalloc_track_caller": 1, "kmemdup_nul": 2, "bitmap_zalloc": 1, "bitmap_alloc": 1,
}
SLEEPING_GFP = ("GFP_KERNEL", "GFP_USER", "GFP_NOIO", "GFP_NOFS", "GFP_KERNEL_ACCOUNT", "GFP_HIGHUSER",
                "GFP_HIGHUSER_MOVABLE")

# Context registrations: call -> (context, index of the callback argument).
REGISTRATIONS = {
    "request_irq": ("hardirq", 1), "request_threaded_irq": ("hardirq", 1),
    "devm_request_irq": ("hardirq", 2), "devm_request_threaded_irq": ("hardirq", 2),
    "request_any_context_irq": ("hardirq", 1), "request_percpu_irq": ("hardirq", 1),
    "request_nmi": ("hardirq", 1),
    "timer_setup": ("softirq", 1), "setup_timer": ("softirq", 1), "timer_setup_on_stack": ("softirq", 1),
    "setup_deferrable_timer": ("softirq", 1), "DEFINE_TIMER": ("softirq", 1),
    "tasklet_init": ("softirq", 1), "tasklet_setup": ("softirq", 1), "DECLARE_TASKLET": ("softirq", 1),
    "DECLARE_TASKLET_OLD": ("softirq", 1), "tasklet_hrtimer_init": ("softirq", 1),
    "netif_napi_add": ("softirq", 2), "netif_napi_add_weight": ("softirq", 2),
    "netif_napi_add_tx": ("softirq", 2), "netif_napi_add_tx_weight": ("softirq", 2),
    "netif_tx_napi_add": ("softirq", 2),
    "call_rcu": ("softirq", 1), "call_rcu_bh": ("softirq", 1), "call_rcu_sched": ("softirq", 1),
}
REG_WHAT = {"hardirq": "hard-irq handler", "softirq": "softirq callback"}
# `x->member = fn;` in a function body gives FN the context its caller
# gives that member: (struct of x, or None for any, member) -> (context, what).
MEMBER_CONTEXTS = {
    (None, "function"): ("softirq", "hrtimer callback (hard-irq unless a _SOFT mode)"),
    ("sk_buff", "destructor"): ("atomic", "skb destructor (called when the skb is freed, which may be "
                                          "in softirq or with interrupts off)"),
    ("urb", "complete"): ("atomic", "URB completion handler (called in interrupt context)"),
    ("usb_request", "complete"): ("atomic", "USB request completion (called from the controller's "
                                            "interrupt handler)"),
}
MEMBER_NAMES = sorted({m for _, m in MEMBER_CONTEXTS})


def member_context(struct: str | None, member: str):
    """(context, what) of a callback assigned to STRUCT's MEMBER, or None."""
    return MEMBER_CONTEXTS.get((struct, member)) or MEMBER_CONTEXTS.get((None, member))


def registration_text(kind: str, via: str, where: str) -> str:
    """The witness of a context registration: a registering call (`via` its
    name) or a member assignment (`via` '.member of struct s')."""
    if via.startswith("."):
        member, _, st = via[1:].partition(" of struct ")
        got = member_context(st or None, member)
        return f"{got[1] if got else kind}: assigned to {via} in {where}"
    return f"{REG_WHAT.get(kind, kind)}: registered with {via}() in {where}"


# Functions a may-sleep chain must not go through: what they call on the
# way to sleeping is error reporting or debugging (panic(), printk's console
# lock, KASAN reports, lockdep, page owner's stack depot), the PREEMPT_RT
# form of a spinning lock, or an allocator that sleeps only as its caller's
# gfp mask says (the call sites that pass a sleeping mask are seeds
# themselves, GFP_ALLOCS).
NOT_SLEEP_PATH = (r"^(?:_*alloc_pages?\w*|_*folio_alloc\w*|_*get_free_pages?|_*get_zeroed_page|"
                  r"_*kmalloc\w*|_*kmem_cache_alloc\w*|_*slab_alloc\w*|"
                  r"stack_depot_\w+|__stack_depot_\w+|\w*page_owner\w*|kmemleak_\w+|"
                  r"panic|_?printk\w*|vprintk\w*|console_unblank|console_flush\w*|dump_\w+|__?warn\w*|warn\w*|report_bug|"
                  r"oops_\w+|die|bust_spinlocks|kasan_\w+|__kasan_\w+|kcsan_\w+|kmsan_\w+|kfence_\w+|"
                  r"lockdep_\w+|__lockdep_\w+|lock_acquire\w*|lock_release|lock_contended|lock_acquired|"
                  r"debug_\w+|trace_\w+|__trace_\w+|ftrace_\w+|"
                  r"rt_spin_\w+|rt_read_\w+|rt_write_\w+|__rt_spin_\w+|rtlock_\w+|"
                  r"_?raw_spin_\w+|_?raw_read_\w+|_?raw_write_\w+|spin_lock\w*|spin_unlock\w*|"
                  r"read_lock\w*|read_unlock\w*|write_lock\w*|write_unlock\w*|local_lock\w*|"
                  r"local_unlock\w*)$")
_NOT_SLEEP_PATH = re.compile(NOT_SLEEP_PATH).match


def not_sleep_path(name: str) -> bool:
    """Whether a may-sleep chain must not go through NAME (NOT_SLEEP_PATH,
    or an allocator of GFP_ALLOCS: its callers' masks decide)."""
    return name in GFP_ALLOCS or _NOT_SLEEP_PATH(name) is not None

# Ops members and the context their callers give them: (struct, member) -> [(context, why)].
_RTNL = "rtnl"
OPS_CONTEXTS = {
    ("net_device_ops", m): [(_RTNL, "called with RTNL held by the networking core")]
    for m in ("ndo_open", "ndo_stop", "ndo_init", "ndo_uninit", "ndo_change_mtu", "ndo_set_mac_address",
              "ndo_set_features", "ndo_fix_features", "ndo_vlan_rx_add_vid", "ndo_vlan_rx_kill_vid",
              "ndo_setup_tc", "ndo_bpf", "ndo_set_vf_mac", "ndo_set_vf_vlan", "ndo_set_vf_rate",
              "ndo_set_vf_spoofchk", "ndo_set_vf_trust", "ndo_get_vf_config", "ndo_set_vf_link_state",
              "ndo_add_slave", "ndo_del_slave", "ndo_bridge_setlink", "ndo_bridge_getlink",
              "ndo_bridge_dellink", "ndo_change_carrier", "ndo_change_proto_down", "ndo_eth_ioctl",
              "ndo_siocdevprivate", "ndo_udp_tunnel_add", "ndo_fdb_add", "ndo_fdb_del", "ndo_change_rx_flags")
}
OPS_CONTEXTS[("net_device_ops", "ndo_set_rx_mode")] = [
    (_RTNL, "called with RTNL held by dev_set_rx_mode()'s callers"),
    ("atomic", "called under netif_addr_lock_bh() (a spinlock, BH off) by __dev_set_rx_mode()")]
OPS_CONTEXTS[("net_device_ops", "ndo_start_xmit")] = [
    ("softirq", "called with BH disabled (and the tx queue lock held) by the xmit path")]
OPS_CONTEXTS[("net_device_ops", "ndo_get_stats64")] = [
    ("atomic", "may be called under RCU or dev_base_lock (dev_get_stats())")]
for _m in ("get_link_ksettings", "set_link_ksettings", "get_drvinfo", "get_ringparam", "set_ringparam",
           "get_channels", "set_channels", "get_pauseparam", "set_pauseparam", "get_coalesce",
           "set_coalesce", "get_strings", "get_sset_count", "get_ethtool_stats", "set_wol", "get_wol",
           "nway_reset", "get_eeprom", "set_eeprom", "get_rxnfc", "set_rxnfc", "get_rxfh", "set_rxfh",
           "set_phys_id", "get_regs", "get_regs_len", "self_test", "set_priv_flags", "get_priv_flags",
           "get_ts_info", "get_module_info", "get_module_eeprom", "get_fecparam", "set_fecparam"):
    OPS_CONTEXTS[("ethtool_ops", _m)] = [(_RTNL, "ethtool ops are called with RTNL held")]

# Well-known locks: class -> (kind, name shown).  rtnl_lock() takes rtnl_mutex.
EXTRA_ACQUIRE = {"rtnl_lock": ("rtnl_mutex", "mutex"), "rtnl_lock_killable": ("rtnl_mutex", "mutex"),
                 "rtnl_trylock": ("rtnl_mutex", "mutex"), "__rtnl_lock": ("rtnl_mutex", "mutex"),
                 "netif_addr_lock_bh": ("struct net_device.addr_list_lock", "spin"),
                 "netif_addr_lock": ("struct net_device.addr_list_lock", "spin"),
                 "netif_tx_lock": ("struct net_device.tx_global_lock", "spin"),
                 "netif_tx_lock_bh": ("struct net_device.tx_global_lock", "spin"),
                 "write_lock_bh_dev_base": ("dev_base_lock", "spin")}
EXTRA_RELEASE = {"rtnl_unlock": ("rtnl_mutex", "mutex"), "__rtnl_unlock": ("rtnl_mutex", "mutex"),
                 "netif_addr_unlock_bh": ("struct net_device.addr_list_lock", "spin"),
                 "netif_addr_unlock": ("struct net_device.addr_list_lock", "spin"),
                 "netif_tx_unlock": ("struct net_device.tx_global_lock", "spin"),
                 "netif_tx_unlock_bh": ("struct net_device.tx_global_lock", "spin")}
# Lock kinds in which sleeping is a bug.
ATOMIC_KINDS = ("spin", "rcu", "irq", "bh", "preempt")

# Naming patterns of release pairs: (acquire regex with a stem group, release templates).
NAME_PAIRS = (
    (r"^(\w+)_get$", ("{0}_put",)),
    (r"^(\w+)_hold$", ("{0}_put", "{0}_release")),
    (r"^(\w+)_alloc$", ("{0}_free", "{0}_destroy", "{0}_put", "{0}_release")),
    (r"^alloc_(\w+)$", ("free_{0}", "{0}_free")),
    (r"^register_(\w+)$", ("unregister_{0}",)),
    (r"^(\w+)_register$", ("{0}_unregister", "{0}_deregister")),
    (r"^(\w+)_enable$", ("{0}_disable",)),
    (r"^(\w+)_create$", ("{0}_destroy", "{0}_remove", "{0}_free")),
    (r"^(\w+)_init$", ("{0}_exit", "{0}_cleanup", "{0}_fini", "{0}_deinit", "{0}_uninit", "{0}_destroy")),
    (r"^(\w+)_open$", ("{0}_close", "{0}_release")),
    (r"^(\w+)_start$", ("{0}_stop",)),
    (r"^(\w+)_map$", ("{0}_unmap",)),
    (r"^request_(\w+)$", ("release_{0}", "free_{0}")),
    (r"^(\w+)_request$", ("{0}_release", "{0}_free")),
    (r"^(\w+)_add$", ("{0}_del", "{0}_remove")),
    (r"^(\w+)_attach$", ("{0}_detach",)),
    (r"^(\w+)_lock$", ("{0}_unlock",)),
)
# What a mined release looks like (a call named like this).
RELEASE_WORDS = r"(put|free|release|destroy|unregister|deregister|del|remove|close|stop|exit|disable|" \
                r"unmap|unlock|deinit|cleanup|fini|dec|unref|drop|kill|uninit|detach|unprepare|dispose)"
