#!/usr/bin/python3
"""The house's layering, checked (docs/architecture.md):

- no folder includes a header of a folder above its floor;
- inside a folder, the files call each other in one direction only: file
  a.c uses b.c when a.o refers to a symbol that b.o defines (read with nm
  from the build tree), and those uses form no circle. A call up through a
  function pointer that was handed down is no reference, so it is allowed.

Run by `make lint` with the build folder; exits 1 with each include above
its floor and each circle."""
import glob
import os
import re
import subprocess
import sys

FLOORS = {"proto": set(), "core": set(), "crypto": {"proto", "core"}, "queue": {"core"},
          "discovery": {"core", "crypto"},
          "ingress": {"proto", "core", "crypto", "queue", "discovery"},
          "delivery": {"proto", "core", "crypto", "queue"},
          "cmd": {"proto", "core", "crypto", "queue", "discovery", "ingress", "delivery"}}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([a-z]+)/([a-z_]+)\.h"', re.M)


def floors(top):
    problems = []
    for folder, allowed in FLOORS.items():
        for path in sorted(glob.glob(os.path.join(top, folder, "*.[ch]"))):
            with open(path, encoding="utf-8") as f:
                for other, header in INCLUDE.findall(f.read()):
                    if other != folder and other not in allowed:
                        problems.append(f"{os.path.relpath(path, top)} includes "
                                        f"{other}/{header}.h, above its floor")
    return problems


def symbols(obj):
    out = subprocess.run(["nm", "-P", obj], capture_output=True, text=True, check=True).stdout
    defined, used = set(), set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        name, kind = parts[0], parts[1]
        if kind == "U":
            used.add(name)
        elif kind.isupper():
            defined.add(name)
    return defined, used


def circles(build, folder):
    objs = sorted(glob.glob(os.path.join(build, "CMakeFiles", f"*.dir/{folder}/*.c.o")))
    files = {os.path.basename(o)[:-4]: symbols(o) for o in objs}
    owner = {sym: name for name, (defined, _) in files.items() for sym in defined}
    uses = {name: {owner[s] for s in used if s in owner and owner[s] != name}
            for name, (_, used) in files.items()}
    problems, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(uses[node]):
            if state.get(nxt) == "open":
                problems.append(f"{folder}/: a circle of calls: "
                                + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(uses):
        if node not in state:
            visit(node)
    return problems, len(objs)


def main(top, build):
    problems = floors(top)
    for folder in FLOORS:
        found, n = circles(build, folder)
        if n == 0 and folder != "cmd":
            problems.append(f"{folder}/: no objects under {build}: build first")
        problems += found
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: layers.py SOURCE-TOP BUILD-DIR")
    sys.exit(main(sys.argv[1], sys.argv[2]))
