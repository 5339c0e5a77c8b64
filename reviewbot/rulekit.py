"""Vocabulary shared by rules: lock families, sleeping calls, paths."""
from __future__ import annotations

import fnmatch

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
    return any(fnmatch.fnmatch(path, g) for g in RT_CORE_GLOBS)


def subsystem_of(path: str) -> str:
    parts = path.split("/")
    return "/".join(parts[:2]) if len(parts) > 2 else parts[0]
