#!/usr/bin/python3
"""The layout docs/architecture.md states is the layout of the repository.

Two checks, both reading the page itself so that the page and the code cannot
drift apart:
  includes  No source file includes a header across parts against the table
            under "Include direction": one row per part (a top-level source
            folder), and in its second column the folders (`kernels/`) and
            single headers (`trainer/parallel/placement.h`) of other parts it
            may include. A part always includes its own files; tests/ and
            bench/ include anything and are not checked. A top-level folder
            holding C++ sources that the table does not list fails too, so a
            new part states its place before it lands.
  folders   The table under "Folders" lists every part and every folder
            directly inside a part, and no folder that does not exist or sits
            deeper than that.

Prints one line per problem (`file:line: ...` for an include) and exits 1.

    check_layout.py includes|folders [--root DIR]
    check_layout.py self-test          a wrong include and a stale row are caught
"""
import argparse
import os
import re
import sys
import tempfile

PAGE = "docs/architecture.md"
INCLUDE_HEADING = "## Include direction"
FOLDERS_HEADING = "## Folders"
NOT_PARTS = {"tests", "bench"}  # may include any part
SOURCE_SUFFIXES = (".h", ".cc", ".cu", ".cuh")
INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"')


def table_rows(root, heading):
    """[(first cell, second cell)] of the table in the page's `heading` section."""
    lines = open(os.path.join(root, PAGE), encoding="utf-8").read().splitlines()
    if heading not in lines:
        sys.exit(f"{PAGE}: no '{heading}' section")
    rows = []
    for line in lines[lines.index(heading) + 1:]:
        if line.startswith("#"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 2 and cells[0].startswith("`"):
            rows.append((cells[0], cells[1]))
    if not rows:
        sys.exit(f"{PAGE}: the '{heading}' section has no table rows")
    return rows


def include_rules(root):
    """{part: [folder or header it may include, ...]}."""
    return {first.strip("`").rstrip("/"): re.findall(r"`([^`]+)`", second)
            for first, second in table_rows(root, INCLUDE_HEADING)}


def holds_files(path, suffixes=None):
    for _, _, filenames in os.walk(path):
        if any(suffixes is None or name.endswith(suffixes) for name in filenames):
            return True
    return False


def source_files(root, folder):
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, folder)):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(SOURCE_SUFFIXES):
                yield os.path.join(dirpath, name)


def include_problems(root):
    rules = include_rules(root)
    problems = [f"{entry}/: holds C++ sources but is not a row of {PAGE}'s '{INCLUDE_HEADING[3:]}' table"
                for entry in sorted(os.listdir(root))
                if not entry.startswith((".", "build")) and entry not in NOT_PARTS and entry not in rules
                and os.path.isdir(os.path.join(root, entry))
                and holds_files(os.path.join(root, entry), SOURCE_SUFFIXES)]
    known = set(rules) | NOT_PARTS
    for part in sorted(rules):
        may = rules[part]
        for path in source_files(root, part):
            rel = os.path.relpath(path, root)
            with open(path, encoding="utf-8", errors="replace") as f:
                for number, line in enumerate(f, 1):
                    m = INCLUDE.match(line)
                    header = m.group(1) if m else ""
                    if not m or header.split("/")[0] not in known or header.startswith(part + "/"):
                        continue  # not an include of another part
                    if not any(header == a or (a.endswith("/") and header.startswith(a)) for a in may):
                        problems.append(f'{rel}:{number}: includes "{header}", but {part}/ may include only '
                                        f"{', '.join(may) or 'itself'} ({PAGE}, {INCLUDE_HEADING[3:]})")
    return problems


def folder_problems(root):
    listed = set()
    for first, _ in table_rows(root, FOLDERS_HEADING):
        listed.update(f for f in re.findall(r"`([^`]+)`", first) if f.endswith("/"))
    wanted = set()
    for part in include_rules(root):
        wanted.add(part + "/")
        part_dir = os.path.join(root, part)
        for entry in sorted(os.listdir(part_dir)) if os.path.isdir(part_dir) else []:
            if os.path.isdir(os.path.join(part_dir, entry)) and holds_files(os.path.join(part_dir, entry)):
                wanted.add(f"{part}/{entry}/")
    where = f"{PAGE} ({FOLDERS_HEADING[3:]})"
    problems = [f"{where}: lacks `{f}`" for f in sorted(wanted - listed)]
    for f in sorted(listed - wanted):
        if not os.path.isdir(os.path.join(root, f)):
            problems.append(f"{where}: lists `{f}`, which does not exist")
        elif f.count("/") > 2:
            problems.append(f"{where}: lists `{f}`, deeper than a part's second level")
        elif f.split("/")[0] + "/" in wanted:
            problems.append(f"{where}: lists `{f}`, which holds no files")
        elif f.count("/") > 1:
            problems.append(f"{where}: lists `{f}`, inside {f.split('/')[0]}/, which is not a part")
    return problems


def self_test():
    """A tiny repository with one wrong include and one stale row."""
    page = (f"# A\n\n{FOLDERS_HEADING}\n\n| folder | what |\n|---|---|\n"
            "| `common/` | c |\n| `kernels/` | k |\n| `trainer/` | t |\n| `trainer/run/` | r |\n"
            "| `trainer/dist/` | gone |\n| `tests/` | t |\n\n"
            f"{INCLUDE_HEADING}\n\n| part | may include |\n|---|---|\n"
            "| `common/` | nothing |\n| `kernels/` | `common/` |\n| `trainer/` | `common/`, `kernels/` |\n")
    files = {
        PAGE: page,
        "common/error.h": "#pragma once\n",
        "kernels/gemm.cc": '#include "common/error.h"\n#include <vector>\n#include "trainer/run/x.h"\n',
        "trainer/run/x.h": '#include "kernels/gemm.h"\n',
        "tests/x_test.cc": '#include "trainer/run/x.h"\n',
    }
    with tempfile.TemporaryDirectory() as root:
        for name, text in files.items():
            os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
            with open(os.path.join(root, name), "w", encoding="utf-8") as f:
                f.write(text)
        for got, want in ((include_problems(root), 'kernels/gemm.cc:3: includes "trainer/run/x.h", '
                                                    "but kernels/ may include only common/"),
                          (folder_problems(root), f"{PAGE} (Folders): lists `trainer/dist/`, which does not exist")):
            if len(got) != 1 or not got[0].startswith(want):
                sys.exit(f"self-test: expected one problem starting with\n  {want}\ngot\n  " + "\n  ".join(got))
    print("self-test: a wrong include and a stale folder row are reported")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("check", choices=["includes", "folders", "self-test"])
    ap.add_argument("--root", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    args = ap.parse_args()
    if args.check == "self-test":
        return self_test()
    root = os.path.abspath(args.root)
    problems = include_problems(root) if args.check == "includes" else folder_problems(root)
    for p in problems:
        print(p)
    if problems:
        sys.exit(1)
    print(f"{args.check}: as {PAGE} states")


if __name__ == "__main__":
    main()
