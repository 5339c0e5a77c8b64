"""C structure with tree-sitter-c: functions, calls, preprocessor blocks.

tree-sitter is error tolerant, which kernel code needs (macros such as
list_for_each_entry(...) { } parse as calls or errors, not failures).
"""
from __future__ import annotations

import bisect
import hashlib
import re
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property, lru_cache

import tree_sitter
import tree_sitter_c

_LANG = tree_sitter.Language(tree_sitter_c.language())


@lru_cache(maxsize=1)
def _parser() -> tree_sitter.Parser:
    return tree_sitter.Parser(_LANG)


_PARSED: "OrderedDict[str, tree_sitter.Tree]" = OrderedDict()
_PARSE_CACHE = 32


def parse(text: str) -> tree_sitter.Tree:
    """Parse C text.  The same text gives the same Tree object (a series
    shows each file's post-image of one patch again as the pre-image of the
    next), so the per-tree memos below are shared too."""
    key = hashlib.blake2b(text.encode("utf-8", errors="replace"), digest_size=16).hexdigest()
    tree = _PARSED.get(key)
    if tree is not None:
        _PARSED.move_to_end(key)
        return tree
    data = _SPARSE.sub(_blank, text.encode("utf-8", errors="replace"))
    tree = _reparse(data)
    _PARSED[key] = tree
    if len(_PARSED) > _PARSE_CACHE:
        _PARSED.popitem(last=False)
    _RECENT.append((data, tree))
    if len(_RECENT) > 4:
        del _RECENT[0]
    return tree


# sparse's annotations, blanked (same length: offsets and lines stay) before
# parsing: tree-sitter knows none of them, and a cast such as
# `iounmap((void __iomem *)base);` then parses as a declaration, not a call
_SPARSE = re.compile(rb"\b__(?:iomem|user|rcu|percpu|force|kernel|bitwise|private|nocast|safe)\b")


def _blank(m: re.Match) -> bytes:
    return b" " * (m.end() - m.start())


# the last few texts parsed: a patch's post-image is its pre-image with a
# few lines changed, so tree-sitter reparses only the edited region of a
# copy of the pre-image's tree (incremental parsing)
_RECENT: list = []


def _reparse(data: bytes) -> tree_sitter.Tree:
    if len(data) < 4096:
        return _parser().parse(data)        # (a small text parses in no time)
    best = None
    for old_data, old_tree in _RECENT:
        if abs(len(old_data) - len(data)) > len(data) // 4:
            continue
        pre = _common_prefix(old_data, data)
        suf = _common_suffix(old_data, data, pre)
        changed = len(data) - pre - suf
        if changed <= len(data) // 4 and (best is None or changed < best[0]):
            best = (changed, old_data, old_tree, pre, suf)
    if best is None:
        return _parser().parse(data)
    _, old_data, old_tree, pre, suf = best
    tree = old_tree.copy()
    old_end, new_end = len(old_data) - suf, len(data) - suf
    tree.edit(start_byte=pre, old_end_byte=old_end, new_end_byte=new_end,
              start_point=_point(data, pre), old_end_point=_point(old_data, old_end),
              new_end_point=_point(data, new_end))
    return _parser().parse(data, tree)


def _point(data: bytes, off: int) -> tuple[int, int]:
    row = data.count(b"\n", 0, off)
    return row, off - (data.rfind(b"\n", 0, off) + 1)


def _common_prefix(a: bytes, b: bytes) -> int:
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:                  # slices compared with memcmp: O(n log n)
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _common_suffix(a: bytes, b: bytes, prefix: int) -> int:
    lo, hi = 0, min(len(a), len(b)) - prefix
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[len(a) - mid:] == b[len(b) - mid:]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def node_text(node: tree_sitter.Node) -> str:
    return node.text.decode("utf-8", errors="replace") if node.text is not None else ""


def line_of(node: tree_sitter.Node) -> int:
    """1-based first line of a node."""
    return node.start_point[0] + 1


def end_line_of(node: tree_sitter.Node) -> int:
    return node.end_point[0] + 1


_MEMO: "OrderedDict[int, dict]" = OrderedDict()
_MEMO_SIZE = 48


def _memo(node: tree_sitter.Node) -> dict:
    """Per-tree memo (keyed by the root node, which it keeps alive so that
    the id cannot be reused while cached)."""
    root = node
    while True:
        parent = root.parent
        if parent is None:
            break
        root = parent
    return _memo_of_root(root)


def _memo_of_root(root: tree_sitter.Node) -> dict:
    m = _MEMO.get(root.id)
    if m is None or m["root"] != root:
        m = {"root": root}
        _MEMO[root.id] = m
        if len(_MEMO) > _MEMO_SIZE:
            _MEMO.popitem(last=False)
    else:
        _MEMO.move_to_end(root.id)
    return m


def _root_and_item(node: tree_sitter.Node):
    """(root, top-level item holding node or None when node is the root)."""
    item = None
    root = node
    while True:
        parent = root.parent
        if parent is None:
            return root, item
        item = root
        root = parent


def _item_preorder(m: dict, item: tree_sitter.Node) -> tuple[list, dict]:
    """Pre-order of one top-level item of a tree, built on first use (a
    rule that looks at the functions a patch touches never pays for the
    rest of a big file)."""
    items = m.setdefault("items", {})
    got = items.get(item.id)
    if got is None or got[0] != item:
        pre = []
        stack = [item]
        while stack:
            n = stack.pop()
            pre.append(n)
            stack.extend(reversed(n.children))
        got = (item, pre, {n.id: i for i, n in enumerate(pre)})
        items[item.id] = got
    return got[1], got[2]


def _preorder(node: tree_sitter.Node) -> tuple[list, dict]:
    """Pre-order of the whole tree (root first, then each item's)."""
    m = _memo(node)
    if "pre" not in m:
        root = m["root"]
        pre = [root]
        for item in root.children:
            pre.extend(_item_preorder(m, item)[0])
        m["pre"] = pre
        m["index"] = {n.id: i for i, n in enumerate(pre)}
    return m["pre"], m["index"]


def _walk_direct(node: tree_sitter.Node) -> list:
    stack = [node]
    out = []
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(reversed(n.children))
    return out


def walk(node: tree_sitter.Node):
    """Pre-order walk of node and its descendants.  Walks are remembered
    per top-level item of the tree (a function, a declaration, an #ifdef
    block), so the many rules walking one function pay once, and walking
    one function does not walk the whole file."""
    root, item = _root_and_item(node)
    m = _memo_of_root(root)
    if item is None:
        if "pre" in m:
            return list(m["pre"])
        return list(_preorder(root)[0])
    pre, index = _item_preorder(m, item)
    i = index.get(node.id)
    if i is None or pre[i] != node:
        return _walk_direct(node)     # not found (should not happen): walk directly
    return pre[i:i + node.descendant_count]


def query_nodes(node: tree_sitter.Node, node_type: str) -> list[tree_sitter.Node]:
    """All descendants (and node itself) of one type (or of several,
    separated by blanks), in document order."""
    if not _in_census(node_type):
        return _query_nodes_other(node, node_type)
    types = node_type.split()
    root, item = _root_and_item(node)
    m = _memo_of_root(root)
    # the node types rules ask for are found together, by one query over
    # the top-level item holding the node (or over the whole file when a
    # whole-file answer was needed): later questions about any of them,
    # on any node of that item, cost a bisect
    got = m.get(("census", root.id))
    if got is None and item is not None:
        got = m.get(("census", item.id))
        if got is None or got[0] != item:
            got = m[("census", item.id)] = (item, _census(item))
    elif got is None:
        got = m[("census", root.id)] = (root, _census(root))
    holder, lists = got
    ready = lists.get(node_type)
    if ready is None:       # sorted on first use (several types: merged), kept
        found = sorted((n for t in types for n in lists["_raw"].get(t, ())), key=_doc_order)
        ready = lists[node_type] = (found, [n.start_byte for n in found])
    return _within(node, holder, *ready)


def _in_census(node_type: str) -> bool:
    """Whether query_nodes() answers NODE_TYPE from the census (a pattern
    in parentheses, or a type outside it, has a query of its own)."""
    return not node_type.startswith("(") and all(t in CENSUS_TYPES for t in node_type.split())


def _found(node: tree_sitter.Node, node_type: str) -> bool:
    """Whether query_nodes(node, node_type) is a lookup already."""
    root, item = _root_and_item(node)
    m = _memo_of_root(root)
    census = _in_census(node_type)
    if (("census", root.id) if census else ("type", node_type)) in m:
        return True
    if item is None:
        return False
    got = m.get(("census", item.id) if census else ("item", node_type, item.id))
    return got is not None and got[0] == item


def _within(node, holder, found: list, starts: list) -> list[tree_sitter.Node]:
    """The nodes of FOUND (those under HOLDER, in document order, starting
    at STARTS) that lie in NODE."""
    if node == holder:
        return list(found)
    lo, hi = node.start_byte, node.end_byte
    i = bisect.bisect_left(starts, lo)
    out = []
    while i < len(found) and found[i].start_byte <= hi:
        n = found[i]
        if n.end_byte <= hi:
            out.append(n)
        i += 1
    return out


# The node types rules look for (cparse.calls(), struct_initializers(),
# the lock flow's expressions and declarations, ...), found in one pass.
CENSUS_TYPES = frozenset((
    "call_expression", "field_expression", "assignment_expression", "declaration",
    "parameter_declaration", "init_declarator", "if_statement", "preproc_ifdef", "preproc_if",
    "preproc_elif", "preproc_else"))


@lru_cache(maxsize=1)
def _census_query() -> tree_sitter.Query:
    return tree_sitter.Query(_LANG, " ".join(f"({t}) @{t}" for t in sorted(CENSUS_TYPES)))


def _doc_order(n: tree_sitter.Node) -> tuple[int, int]:
    return n.start_byte, -n.end_byte


def _census(node: tree_sitter.Node) -> dict:
    """The census types' nodes under NODE: {"_raw": type -> nodes as the
    query found them}; query_nodes() adds type -> (nodes in document
    order, their start bytes) as it is asked."""
    return {"_raw": tree_sitter.QueryCursor(_census_query()).captures(node)}


def _query_nodes_other(node: tree_sitter.Node, node_type: str) -> list[tree_sitter.Node]:
    """query_nodes() of a type outside the census: one query per item."""
    root, item = _root_and_item(node)
    m = _memo_of_root(root)
    key = ("type", node_type)
    if item is None:
        if key not in m:
            m[key] = _captures(root, node_type)
        return m[key]
    ckey = ("item", node_type, item.id)
    got = m.get(ckey)
    if got is None or got[0] != item:
        found = _captures(item, node_type)
        got = m[ckey] = (item, found, [n.start_byte for n in found])
    return _within(node, item, got[1], got[2])


def _captures(node: tree_sitter.Node, node_type: str) -> list[tree_sitter.Node]:
    cur = tree_sitter.QueryCursor(_query(node_type))
    return sorted(cur.captures(node).get("n", []), key=_doc_order)


@lru_cache(maxsize=64)
def _query(node_type: str) -> tree_sitter.Query:
    """A query for one node type, or for several separated by blanks, or a
    pattern (in parentheses) capturing @n."""
    if node_type.startswith("("):
        return tree_sitter.Query(_LANG, node_type)
    types = node_type.split()
    if len(types) == 1:
        return tree_sitter.Query(_LANG, f"({node_type}) @n")
    return tree_sitter.Query(_LANG, "[" + " ".join(f"({t})" for t in types) + "] @n")


@dataclass(frozen=True)
class Function:
    name: str
    start: int      # 1-based lines
    end: int
    node: tree_sitter.Node

    @cached_property
    def call_names(self) -> frozenset[str]:
        """node_call_names(self.node), kept with the function."""
        return node_call_names(self.node)


def _declarator_name(node: tree_sitter.Node | None) -> str:
    while node is not None:
        if node.type == "identifier":
            return node_text(node)
        nxt = node.child_by_field_name("declarator")
        if nxt is None:
            for c in node.children:
                if c.type in ("identifier", "function_declarator", "pointer_declarator",
                              "parenthesized_declarator"):
                    nxt = c
                    break
        node = nxt
    return ""


def functions(tree: tree_sitter.Tree) -> list[Function]:
    m = _memo(tree.root_node)
    if "functions" not in m:
        out = []
        for n in _function_nodes(tree.root_node):
            name = _declarator_name(n.child_by_field_name("declarator"))
            out.append(Function(name, line_of(n), end_line_of(n), n))
        m["functions"] = out
    return list(m["functions"])


# Where function definitions stand: at top level, or inside these (an
# #ifdef, an error-recovery node around a macro, extern "C" blocks).
_FUNCTION_HOLDERS = frozenset({"translation_unit", "preproc_if", "preproc_ifdef", "preproc_else",
                               "preproc_elif", "preproc_elifdef", "ERROR", "linkage_specification",
                               "declaration_list", "compound_statement"})


def _function_nodes(root: tree_sitter.Node) -> list[tree_sitter.Node]:
    """The function_definition nodes of a file, in document order, found by
    walking only the nodes that can hold them (a query over a whole big
    file costs more)."""
    out = []
    stack = [root]
    while stack:
        n = stack.pop()
        if n.type == "function_definition":
            out.append(n)
        elif n.type in _FUNCTION_HOLDERS:
            stack.extend(reversed(n.children))
    return out


def function_at(funcs: list[Function], line: int) -> Function | None:
    best = None
    for f in funcs:
        if f.start <= line <= f.end and (best is None or f.start >= best.start):
            best = f
    return best


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[str, ...]
    line: int
    node: tree_sitter.Node


def calls(node: tree_sitter.Node) -> list[Call]:
    m = _memo(node)
    key = ("calls", node.id)
    if key in m and m[key][0] == node:
        return list(m[key][1])
    out = []
    for n in query_nodes(node, "call_expression"):
        fn = n.child_by_field_name("function")
        argl = n.child_by_field_name("arguments")
        if fn is None:
            continue
        args = tuple(node_text(a) for a in (argl.named_children if argl is not None else [])
                     if a.type != "comment")
        out.append(Call(node_text(fn), args, line_of(n), n))
    m[key] = (node, out)
    return list(out)


_PREPROC_CONDS = "preproc_ifdef preproc_if preproc_elif preproc_else"


def preproc_conditionals(tree: tree_sitter.Tree, lines=None) -> list[tree_sitter.Node]:
    """#if/#ifdef/#elif/#else nodes of a tree, in order; with LINES, only
    those inside the top-level items spanning one of them (a superset of
    the ones starting on those lines)."""
    if lines is None:
        return list(query_nodes(tree.root_node, _PREPROC_CONDS))
    out = []
    for item in items_touching(tree, lines):
        out.extend(query_nodes(item, _PREPROC_CONDS))
    return out


def conditional_condition(node: tree_sitter.Node) -> str:
    if node.type == "preproc_ifdef":
        name = node.child_by_field_name("name")
        op = node.children[0].type if node.children else "#ifdef"
        return f"{op} {node_text(name) if name is not None else ''}".strip()
    cond = node.child_by_field_name("condition")
    return node_text(cond) if cond is not None else ""


@dataclass(frozen=True)
class Initializer:
    """A designated initialiser of a struct variable (an ops table):
    `static const struct bpf_map_ops sock_hash_ops = { .map_alloc = ..., };`
    Lines are stored relative to `shift` (an image of a series reuses the
    tables of the one before, moved)."""
    struct: str                 # struct tag, e.g. "bpf_map_ops"
    name: str                   # variable name
    rel_start: int
    rel_end: int
    rel_members: tuple[tuple[str, str, int], ...]
    shift: int = 0

    @property
    def start(self) -> int:
        """1-based line of the declaration."""
        return self.rel_start + self.shift

    @property
    def end(self) -> int:
        return self.rel_end + self.shift

    @cached_property
    def members(self) -> tuple[tuple[str, str, int], ...]:
        """(member, value text, line), top level only."""
        d = self.shift
        return self.rel_members if not d else tuple((m, v, ln + d) for m, v, ln in self.rel_members)

    def moved(self, shift: int) -> "Initializer":
        return Initializer(self.struct, self.name, self.rel_start, self.rel_end, self.rel_members,
                           self.shift + shift)

    def get(self, member: str) -> str | None:
        for m, v, _ in self.rel_members:
            if m == member:
                return v
        return None

    def line_of(self, member: str) -> int | None:
        for m, _, ln in self.members:
            if m == member:
                return ln
        return None

    @property
    def names(self) -> set[str]:
        return set(self.member_names)

    @cached_property
    def member_names(self) -> frozenset[str]:
        return frozenset(m for m, _, _ in self.rel_members)


def _designated_members(node: tree_sitter.Node) -> tuple[tuple[str, str, int], ...]:
    """`.member = value` pairs at the top level of an initializer_list,
    read from the text (tree-sitter mangles #ifdef inside initialisers)."""
    base = line_of(node)
    return tuple((m, v, base + rel) for m, v, rel in _designated_members_text(node_text(node)))


@lru_cache(maxsize=4096)
def _designated_members_text(text: str) -> tuple[tuple[str, str, int], ...]:
    """_designated_members of an initializer's text, lines relative to its first."""
    import re as _re
    base = 0
    out = []
    depth = 0
    i = 0
    n = len(text)
    pat = _re.compile(r"\.([A-Za-z_]\w*)\s*=\s*")
    while i < n:
        ch = text[i]
        if ch in "{([":
            depth += 1
        elif ch in "})]":
            depth -= 1
        elif ch == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            i = j
        elif ch == "/" and text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 1
        elif ch == "." and depth == 1:
            m = pat.match(text, i)
            if m and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] in "_)]>")):
                j = m.end()
                d = 0
                while j < n:
                    c = text[j]
                    if c in "{([":
                        d += 1
                    elif c in "})]":
                        if d == 0:
                            break
                        d -= 1
                    elif c == "," and d == 0:
                        break
                    elif c == "\n" and d == 0 and text[j:].lstrip().startswith("#"):
                        break
                    j += 1
                out.append((m.group(1), " ".join(text[m.end():j].split()), base + text.count("\n", 0, i)))
                i = j
                continue
        i += 1
    return tuple(out)


def struct_initializers(tree: tree_sitter.Tree) -> list[Initializer]:
    """Every `struct T name = { .a = x, ... };` at any level (not arrays)."""
    m = _memo(tree.root_node)
    if "struct_initializers" not in m:
        out = []
        for chunk, rel in _chunkwise(tree, "struct_initializers", _chunk_initializers):
            if rel:
                base = line_of(chunk) - 1
                out.extend(i.moved(base) for i in rel)
        m["struct_initializers"] = out
    return list(m["struct_initializers"])


def _chunk_initializers(nodes: list[tree_sitter.Node], chunk: tree_sitter.Node) -> tuple[Initializer, ...]:
    """The initialisers among one chunk's init_declarator nodes, lines
    relative to the chunk's first line - 1."""
    base = line_of(chunk) - 1
    out = []
    for n in nodes:
        val = n.child_by_field_name("value")
        decl = n.child_by_field_name("declarator")
        if val is None or val.type != "initializer_list" or decl is None or decl.type != "identifier":
            continue
        parent = n.parent
        typ = parent.child_by_field_name("type") if parent is not None else None
        if typ is None or typ.type != "struct_specifier":
            continue
        tname = typ.child_by_field_name("name")
        if tname is None:
            continue
        members = _designated_members(val)
        if not members:
            continue
        out.append(Initializer(node_text(tname), node_text(decl), line_of(parent) - base,
                               end_line_of(parent) - base,
                               tuple((mm, v, ln - base) for mm, v, ln in members)))
    return tuple(out)


_chunk_initializers.query = "init_declarator"


def call_names(tree: tree_sitter.Tree) -> frozenset[str]:
    """The names of every call in a file: {c.name for c in calls(root)},
    without building the Call objects (memoised per tree, and per chunk of
    it by text)."""
    m = _memo(tree.root_node)
    got = m.get("call_names")
    if got is None:
        got = frozenset().union(*(names for _, names in _chunkwise(tree, "call_names", _chunk_call_names)))
        m["call_names"] = got
    return got


# The called expression of every call (what Call.name is the text of).
CALLEES = "(call_expression function: _ @n)"


def _chunk_call_names(nodes: list[tree_sitter.Node], chunk: tree_sitter.Node) -> frozenset[str]:
    return frozenset(map(node_text, nodes))


_chunk_call_names.query = CALLEES


def node_call_names(node: tree_sitter.Node) -> frozenset[str]:
    """{c.name for c in calls(node)}, memoised by the node's text (shared
    with call_names() when the node is a chunk, as a top-level function is)."""
    key = ("call_names", *_text_key(node))
    got = _CHUNK_DATA.get(key)
    if got is None:
        got = _remember(key, _chunk_call_names(query_nodes(node, CALLEES), node))
    return got


def calls_any(node: tree_sitter.Node, names) -> bool:
    """not node_call_names(node).isdisjoint(NAMES), answered from the
    node's text alone when it holds none of the names (a call's name is
    text of the node): most functions of a big file call none of the few
    names a rule looks for."""
    text = node.text or b""
    if not any(n in text for n in _encoded(frozenset(names))):
        return False
    return not node_call_names(node).isdisjoint(names)


@lru_cache(maxsize=64)
def _encoded(names: frozenset) -> tuple[bytes, ...]:
    return tuple(sorted(n.encode("utf-8") for n in names))


# -- chunks: whole-file facts computed once per distinct piece of text ----------
#
# A series shows a big file again and again (each patch's pre- and
# post-image), mostly unchanged.  Facts about a whole file that rules need
# (the names it calls, its ops tables) are computed per chunk (a top-level
# item, or the items inside a big #ifdef such as a header's include guard)
# and remembered by the chunk's text, so each image pays only for the
# chunks that changed.

_CHUNK_CONTAINERS = frozenset({"preproc_if", "preproc_ifdef", "preproc_else", "preproc_elif",
                               "preproc_elifdef", "linkage_specification", "declaration_list"})
_CHUNK_SPLIT = 32768          # bytes: a container bigger than this is split into its children
_CHUNK_DATA: "OrderedDict[tuple, object]" = OrderedDict()
_CHUNK_DATA_SIZE = 50000


def _text_key(node: tree_sitter.Node) -> tuple[str, int, int]:
    # Python's own hash of the text (keyed per process, 64 bits: an
    # accidental clash among the memo's entries is below one in 10^9) with
    # the length: a third of what a cryptographic digest costs per chunk,
    # and no chunk text is kept alive by the memo
    text = node.text or b""
    return node.type, len(text), hash(text)


def _remember(key: tuple, value):
    _CHUNK_DATA[key] = value
    if len(_CHUNK_DATA) > _CHUNK_DATA_SIZE:
        _CHUNK_DATA.popitem(last=False)
    return value


def _chunks(root: tree_sitter.Node) -> list[tree_sitter.Node]:
    """Nodes covering every node of the tree below the root, in order (big
    preprocessor containers are replaced by their children)."""
    out = []
    stack = list(reversed(root.children))
    while stack:
        n = stack.pop()
        if n.type in _CHUNK_CONTAINERS and n.end_byte - n.start_byte > _CHUNK_SPLIT and n.child_count:
            stack.extend(reversed(n.children))
        else:
            out.append(n)
    return out


def _chunkwise(tree: tree_sitter.Tree, kind: str, compute) -> list[tuple[tree_sitter.Node, object]]:
    """[(chunk, compute(nodes of type compute.query in the chunk, chunk))]
    over the chunks of a tree, memoised by (kind, chunk text).  When many
    chunks are new, one query over the whole tree finds the nodes."""
    m = _memo(tree.root_node)
    got = m.get("chunks")
    if got is None:
        chunks = _chunks(tree.root_node)
        got = m["chunks"] = (chunks, [_text_key(c) for c in chunks])
    chunks = got[0]
    keys = [(kind, *tk) for tk in got[1]]
    values = [_CHUNK_DATA.get(k) for k in keys]
    missing = [i for i, v in enumerate(values) if v is None]
    if missing:
        # one query over the whole file when much of it is new here (unless
        # the items already had theirs: a rule read each function before)
        bare = sum(chunks[i].end_byte - chunks[i].start_byte for i in missing
                   if not _found(chunks[i], compute.query))
        if len(missing) > 8 and 2 * bare > tree.root_node.end_byte:
            starts = [c.start_byte for c in chunks]
            found: dict[int, list] = {i: [] for i in missing}
            for n in query_nodes(tree.root_node, compute.query):
                i = bisect.bisect_right(starts, n.start_byte) - 1
                if i in found and n.end_byte <= chunks[i].end_byte:
                    found[i].append(n)
        else:
            found = {i: query_nodes(chunks[i], compute.query) for i in missing}
        for i in missing:
            values[i] = _remember(keys[i], compute(found[i], chunks[i]))
    return list(zip(chunks, values))


def items_touching(tree: tree_sitter.Tree, lines, containing=None) -> list[tree_sitter.Node]:
    """The top-level items of a tree (children of the root) that span one of
    LINES (1-based), in order.  Every node whose first line is in LINES is
    inside one of them.  CONTAINING (a bytes pattern): only the items whose
    text it finds (a cheap test before a rule reads them node by node)."""
    if not lines:
        return []
    ls = sorted(lines)
    out = []
    for item in tree.root_node.children:
        a, b = item.start_point[0] + 1, item.end_point[0] + 1
        i = bisect.bisect_left(ls, a)
        if i < len(ls) and ls[i] <= b and (containing is None or containing.search(item.text or b"")):
            out.append(item)
    return out
