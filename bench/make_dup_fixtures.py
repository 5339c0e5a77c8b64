"""Rebuild the duplicated-helper fixtures of DUP003 and DUP004
(rules/fixtures/DUP00{3,4}/) from the linux-6.1 tarball: real files, a
realistic change, `git format-patch`.

    python bench/make_dup_fixtures.py
"""
from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from make_release_fixtures import chain, fixture, sub  # noqa: E402

NFSD = "fs/nfsd/nfs4state.c"
W1 = "drivers/w1/slaves/w1_therm.c"
RTL = "drivers/net/wireless/realtek/rtlwifi/wifi.h"


def dup003():
    # the reverse of "NFSD: Use struct_size() helper in alloc_session()"
    fixture("DUP003", "bad-nfsd-struct-size", [NFSD], ("nfsd: size the session by hand", {NFSD: chain(
        sub("\tstruct nfsd4_session *new;\n\tint i;\n",
            "\tstruct nfsd4_session *new;\n\tint mem, i;\n"),
        sub("\tnew = kzalloc(struct_size(new, se_slots, numslots), GFP_KERNEL);\n",
            "\tmem = numslots * sizeof(struct nfsd4_slot *);\n"
            "\tnew = kzalloc(sizeof(*new) + mem, GFP_KERNEL);\n"))}))
    # the helper stays (the allocator changes)
    fixture("DUP003", "ok-nfsd-struct-size", [NFSD], ("nfsd: allocate the session with kvzalloc", {NFSD: sub(
        "\tnew = kzalloc(struct_size(new, se_slots, numslots), GFP_KERNEL);\n",
        "\tnew = kvzalloc(struct_size(new, se_slots, numslots), GFP_KERNEL);\n")}))
    # the reverse of "w1: w1_therm: use clamp() in int_to_short()"
    fixture("DUP003", "bad-w1-therm-clamp", [W1], ("w1: w1_therm: bound the temperature by hand", {W1: sub(
        "\ti = clamp(i, MIN_TEMP, MAX_TEMP);\n",
        "\ti = i > MAX_TEMP ? MAX_TEMP : i;\n\ti = i < MIN_TEMP ? MIN_TEMP : i;\n\ti = min(MAX_TEMP, max(MIN_TEMP, i));\n")}))
    fixture("DUP003", "ok-w1-therm-clamp", [W1], ("w1: w1_therm: clamp as int", {W1: sub(
        "\ti = clamp(i, MIN_TEMP, MAX_TEMP);\n",
        "\ti = clamp_t(int, i, MIN_TEMP, MAX_TEMP);\n")}))


def dup004():
    # the reverse of "rtlwifi: remove rtl_get_tid_h"
    fixture("DUP004", "bad-rtlwifi-get-tid", [RTL], ("rtlwifi: read the TID from the QoS control", {RTL: sub(
        "static inline u16 rtl_get_tid(struct sk_buff *skb)\n{\n"
        "\treturn ieee80211_get_tid(rtl_get_hdr(skb));\n}\n",
        "static inline u16 rtl_get_tid_h(struct ieee80211_hdr *hdr)\n{\n"
        "\treturn (ieee80211_get_qos_ctl(hdr))[0] & IEEE80211_QOS_CTL_TID_MASK;\n}\n\n"
        "static inline u16 rtl_get_tid(struct sk_buff *skb)\n{\n"
        "\treturn rtl_get_tid_h(rtl_get_hdr(skb));\n}\n")}))
    # a wrapper that calls the shared helper is not a copy of it
    fixture("DUP004", "ok-rtlwifi-get-tid", [RTL], ("rtlwifi: a helper for the TID of a header", {RTL: sub(
        "static inline u16 rtl_get_tid(struct sk_buff *skb)\n{\n"
        "\treturn ieee80211_get_tid(rtl_get_hdr(skb));\n}\n",
        "static inline u16 rtl_get_tid_h(struct ieee80211_hdr *hdr)\n{\n"
        "\treturn ieee80211_get_tid(hdr);\n}\n\n"
        "static inline u16 rtl_get_tid(struct sk_buff *skb)\n{\n"
        "\treturn rtl_get_tid_h(rtl_get_hdr(skb));\n}\n")}))


def share_trees():
    """One NAME.tree per pair of fixtures (fixture() writes one per mbox)."""
    import shutil
    for code in ("DUP003", "DUP004"):
        d = ROOT / "rules" / "fixtures" / code
        for t in d.glob("bad-*.tree"):
            stem = t.name[len("bad-"):]
            shutil.rmtree(d / stem, ignore_errors=True)
            t.rename(d / stem)
            shutil.rmtree(d / f"ok-{stem}", ignore_errors=True)


if __name__ == "__main__":
    dup003()
    dup004()
    share_trees()
