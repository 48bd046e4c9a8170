#!/usr/bin/env python3
"""Module import graph of a Rust crate and its cycles.

Usage: scripts/rust_use_cycles.py native/macula_nat_core/src [more crate src dirs]

Reads every `.rs` file under each crate's `src` (binaries under `src/bin`
are their own crates and skipped), takes the non-test part of each file
(up to its `#[cfg(test)] mod`, without `#[cfg(test)] use` lines), drops comments, and collects every path
that starts with `crate::`, `super::` or `self::` (in `use` lines and in
code, `{a, b::c}` groups expanded). Each path is resolved to the longest
module prefix that has a file; names re-exported by `lib.rs` (`pub use
x::Y`) resolve to the module that defines them. A child's use of its own
parent module (`super::X` in `a/b.rs` naming `a`) is not an edge: the
parent declares the child. Prints the edges between
files with `-v`, then every strongly connected component of more than one
module (an import cycle), and exits 1 if there is one.
"""
import os
import re
import sys

def modules(src):
    mods = {}
    for root, dirs, files in os.walk(src):
        rel = os.path.relpath(root, src)
        if rel.split(os.sep)[0] == "bin":
            continue
        for f in files:
            if not f.endswith(".rs"):
                continue
            p = os.path.normpath(os.path.join(rel, f))
            parts = p[:-3].split(os.sep)
            if parts[0] == ".":
                parts = parts[1:]
            if parts[-1] == "mod":
                parts = parts[:-1]
            if parts == ["lib"]:
                parts = []
            mods[tuple(parts)] = os.path.join(src, p)
    return mods

def non_test(text):
    m = re.search(r"#\[cfg\(test\)\]\s*mod\s", text)
    text = text if not m else text[:m.start()]
    text = re.sub(r"#\[cfg\(test\)\]\s*use [^;]*;", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(l.split("//")[0] for l in text.splitlines())

def expand(path):
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e]"""
    m = re.match(r"^([\w:]*?)\{(.*)\}$", path, re.S)
    if not m:
        return [path]
    head, body = m.group(1), m.group(2)
    out, depth, cur = [], 0, ""
    for ch in body:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip()); cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    res = []
    for o in out:
        res += expand(head + o)
    return res

PATH = re.compile(r"\b(crate|super|self)::((?:\w+::)*(?:\{[^;]*?\}(?=\s*[;,)])|\w+))", re.S)

def refs(text):
    for m in PATH.finditer(text):
        root, rest = m.group(1), re.sub(r"\s+", "", m.group(2))
        for p in expand(rest):
            p = p.split(" as ")[0].split("as")[0] if False else re.sub(r"as\w+$", "", p)
            yield root, [s for s in p.split("::") if s and s not in ("self", "*")]

def reexports(mods):
    """Root names `pub use a::b::{X, Y}` in lib.rs -> module (a, b)."""
    lib = mods.get(())
    out = {}
    if not lib:
        return out
    for line in non_test(open(lib).read()).split(";"):
        line = line.strip()
        m = re.match(r"pub use (.*)$", line, re.S)
        if not m:
            continue
        for p in expand(re.sub(r"\s+", "", m.group(1))):
            parts = [s for s in p.split("::") if s]
            if parts and parts[0] == "crate":
                parts = parts[1:]
            for k in range(len(parts) - 1, 0, -1):
                if tuple(parts[:k]) in mods:
                    out[parts[-1]] = tuple(parts[:k])
                    break
    return out

def resolve(mods, rex, here, root, segs):
    if root == "crate":
        base = []
    elif root == "super":
        base = list(here[:-1]) if not mods[here].endswith("mod.rs") else list(here[:-1])
        # `super` of a/b.rs and of a/b/mod.rs is a
    else:
        base = list(here)
    full = base + segs
    for k in range(len(full), 0, -1):
        if tuple(full[:k]) in mods:
            if k == 0:
                break
            return tuple(full[:k])
    if root == "crate" and segs and segs[0] in rex:
        return rex[segs[0]]
    return None

def graph(src):
    mods = modules(src)
    rex = reexports(mods)
    edges = {m: set() for m in mods if m != ()}
    for m, f in mods.items():
        if m == ():
            continue
        text = non_test(open(f).read())
        for root, segs in refs(text):
            t = resolve(mods, rex, m, root, segs)
            if t and t != m and t != () and m[:len(t)] != t:
                edges[m].add(t)
    return edges

def sccs(edges):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)
    def go(v):
        index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                go(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            c = []
            while True:
                w = stack.pop(); on.discard(w); c.append(w)
                if w == v:
                    break
            out.append(c)
    for v in edges:
        if v not in index:
            go(v)
    return out

def name(m):
    return "::".join(m)

def main():
    verbose = "-v" in sys.argv
    bad = False
    for src in [a for a in sys.argv[1:] if a != "-v"]:
        edges = graph(src)
        n_edges = sum(len(v) for v in edges.values())
        if verbose:
            for m in sorted(edges):
                print(f"{name(m)} -> {', '.join(sorted(name(t) for t in edges[m]))}")
        cyc = [c for c in sccs(edges) if len(c) > 1]
        print(f"{src}: {len(edges)} modules, {n_edges} edges, {len(cyc)} cycles")
        for c in cyc:
            bad = True
            print("  cycle:", " <-> ".join(sorted(name(m) for m in c)))
    sys.exit(1 if bad else 0)

main()
