#!/usr/bin/env python3
"""Module-level import cycles of the outboxd library, from cargo-modules' item graph.

cargo-modules (`cargo modules dependencies`) draws "uses" edges between items; its own
`--acyclic` check works on items (a type and its own method count as a cycle), so this
folds every item into the module that holds it and looks for cycles between modules
(strongly connected components). Reads the DOT graph on stdin; prints each cycle and
exits 1 if there is one.
"""
import re
import sys
from collections import defaultdict

node_re = re.compile(r'^\s*"([^"]+)" \[label="([^"|]*)\|')
edge_re = re.compile(r'^\s*"([^"]+)" -> "([^"]+)" \[label="uses"')

kinds = {}
edges = []
for line in sys.stdin:
    m = edge_re.match(line)
    if m:
        edges.append((m.group(1), m.group(2)))
        continue
    m = node_re.match(line)
    if m:
        kinds[m.group(1)] = m.group(2)

modules = {n for n, k in kinds.items() if k.endswith("mod") or k == "crate"}


def module_of(path):
    while path not in modules and "::" in path:
        path = path.rsplit("::", 1)[0]
    return path


graph = defaultdict(set)
for a, b in edges:
    ma, mb = module_of(a), module_of(b)
    if ma != mb:
        graph[ma].add(mb)

# Tarjan's strongly connected components.
index, low, on_stack, stack, sccs = {}, {}, set(), [], []
counter = [0]


def strongconnect(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
        if w not in index:
            strongconnect(w)
            low[v] = min(low[v], low[w])
        elif w in on_stack:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        scc = []
        while True:
            w = stack.pop()
            on_stack.discard(w)
            scc.append(w)
            if w == v:
                break
        if len(scc) > 1:
            sccs.append(sorted(scc))


sys.setrecursionlimit(10000)
for v in list(modules):
    if v not in index:
        strongconnect(v)

print(f"{len(modules)} modules, {sum(len(s) for s in graph.values())} module-to-module edges")
for scc in sccs:
    members = set(scc)
    print(f"cycle among {len(scc)} modules:")
    for m in scc:
        inside = sorted(graph[m] & members)
        print(f"  {m} -> {', '.join(inside)}")
sys.exit(1 if sccs else 0)
