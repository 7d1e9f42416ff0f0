#!/usr/bin/env python3
"""Writes the emulator's register model: for every CUDA kernel, the most
registers ptxas gives one of its threads (over the given architectures and
every template instantiation), from `nvcc -Xptxas -v` output.

    register_model.py --out kernels.regs REPORT...

REPORT files hold ptxas's stderr ("Compiling entry function '<mangled>' for
'sm_80'" followed by "Used N registers, ..."). The output has one line per
kernel, "<name> <registers>", the name without namespaces or template
arguments, as the emulator's launches name kernels. The emulator
(HETERMOE_EMULATED_REGISTERS=<file>) then fails a launch whose block needs
more registers than an SM has, as a GPU does (cudaErrorLaunchOutOfResources).
"""
import argparse
import re
import subprocess
import sys

ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+)'")
USED = re.compile(r"Used (\d+) registers")


def base_name(demangled: str) -> str:
    """'void a::b::Kernel<X, 3>(int, ...)' -> 'Kernel'."""
    name = demangled.replace("(anonymous namespace)::", "")
    if name.startswith("void "):
        name = name[len("void "):]
    depth, cut = 0, len(name)
    for i, ch in enumerate(name):  # the first '<' or '(' outside template brackets
        if ch in "<(" and depth == 0:
            cut = i
            break
    name = name[:cut]
    return name.rsplit("::", 1)[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("reports", nargs="+")
    args = ap.parse_args()
    pairs = []
    for path in args.reports:
        entry = None
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                m = ENTRY.search(line)
                if m:
                    entry = m.group(1)
                    continue
                m = USED.search(line)
                if m and entry is not None:
                    pairs.append((entry, int(m.group(1))))
                    entry = None
    if not pairs:
        print(f"register_model.py: no 'Used N registers' lines in {args.reports}", file=sys.stderr)
        return 1
    demangled = subprocess.run(["c++filt"], input="\n".join(p[0] for p in pairs), capture_output=True,
                               text=True, check=True).stdout.splitlines()
    model = {}
    for (_, regs), name in zip(pairs, demangled):
        base = base_name(name)
        model[base] = max(model.get(base, 0), regs)
    with open(args.out, "w", encoding="utf-8") as f:
        for name in sorted(model):
            f.write(f"{name} {model[name]}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
