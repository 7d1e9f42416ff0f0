#!/usr/bin/env python3
"""The engine's deduplicated dispatch against the planner's prediction.

A freshly initialised model with 8 experts, top-2 and top-4, trains 3 steps
on uniformly random token ids (routing close to uniform) with 1 attention
rank and 2 or 4 expert ranks. The rows the engine sends per routed row
(dispatch_rows_sent / dispatch_rows in metrics.jsonl, summed over layers and
steps) must equal 1 - the duplicate share the planner prices with
(hetermoe-plan dedup, planner/dedup.h) within 4 points: the router is
random, not uniform, so a few points of skew remain (measured 0.1-2.7). With
parallel.dedup off every routed row is sent.

Node level (parallel.dedup node): 2 attention ranks and 4 expert ranks on
nodes of 2 ranks (attention on node 0, the experts on 2 nodes of 2 ranks,
4 experts each). The rows that cross nodes per routed row must equal 1 - the
planner's share over 2 destination groups (the nodes), within 4 points, and
be fewer than rank-level dedup sends across nodes. And the depth choice
(parallel.dedup auto) on emulated links: check_depth_choice.
"""
import argparse
import json
import os
import random
import shutil
import struct
import subprocess
import sys

RUN = """model: {{config: {work}/config{k}.json}}
data: {{train: {work}/tokens.bin}}
train: {{steps: 3, global_batch: 24, micro_batches: 12, seq_len: 16, lr: 1.0e-2, threads: 1}}
parallel: {{attention_ranks: {m}, expert_ranks: {n}, schedule: zebra, timeout_seconds: 30, dedup: {dedup}{extra}}}
output: {{dir: {out}}}
"""


def sent_per_routed(trainer, work, k, n, dedup, m=1, extra="", key="dispatch_rows_sent"):
    out = os.path.join(work, f"out-k{k}-m{m}-n{n}-{dedup}")
    run_file = out + ".yaml"
    with open(run_file, "w") as f:
        f.write(RUN.format(work=work, k=k, m=m, n=n, out=out, dedup=dedup, extra=extra))
    p = subprocess.run([trainer, "--config", run_file, "--no-progress"], capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"{run_file} failed ({p.returncode}):\n{p.stderr}")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f]
    sent = sum(sum(m[key]) for m in metrics)
    routed = sum(sum(m["dispatch_rows"]) for m in metrics)
    return sent / routed


def check_depth_choice(trainer, work):
    """parallel.dedup auto, 8 experts top-4 (hidden 256) on 2 attention + 4 expert ranks in
    nodes of 2: with emulated slow links between nodes and fast ones inside,
    every block of every layer takes node level, from the first step (each
    attention rank chooses per block from its routing); with equal links
    every block stays at rank level. The losses are the same as with
    rank-level dedup either way."""
    problems = []
    runs = {}
    # Rows of 1 KiB (hidden 256), 1 MiB per message at rank level (sequences
    # of 128), so that the links' bandwidth, not the host's per-message
    # overhead (which the start-up fit measures with ~0.1 ms of noise), decides.
    with open(os.path.join(work, "config4.json")) as f:
        wide = dict(json.load(f), hidden_size=256, intermediate_size=64, max_position_embeddings=128)
    with open(os.path.join(work, "config-wide.json"), "w") as f:
        json.dump(wide, f)
    for name, links in (("slow across nodes", "inter_node_gbps: 0.1, intra_node_gbps: 10"),
                        ("equal links", "inter_node_gbps: 1, intra_node_gbps: 1"),
                        ("rank", "inter_node_gbps: 1, intra_node_gbps: 1")):
        out = os.path.join(work, "depth-" + name.replace(" ", "-"))
        run_file = out + ".yaml"
        with open(run_file, "w") as f:
            f.write(RUN.format(work=work, k="-wide", m=2, n=4, out=out, dedup="rank" if name == "rank" else "auto",
                               extra=", ranks_per_node: 2") + f"emulate: {{links: {{{links}}}}}\n")
        p = subprocess.run([trainer, "--config", run_file, "--no-progress", "--set", "train.seq_len=128"],
                           capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            raise RuntimeError(f"{run_file} failed ({p.returncode}):\n{p.stderr}")
        with open(os.path.join(out, "metrics.jsonl")) as f:
            runs[name] = [json.loads(line) for line in f]
        fitted = next((l for l in p.stderr.splitlines() if "links fitted" in l), "")
        print(f"{name}: depth per step {[m['dedup_depth'] for m in runs[name]]}" + (f"\n    {fitted}" if fitted else ""))
    want = {"slow across nodes": "node", "equal links": "rank"}
    for name, depth in want.items():
        if any(d != depth for m in runs[name] for d in m["dedup_depth"]):
            problems.append(f"{name}: expected {depth} level for every block of every layer, got "
                            f"{[m['dedup_depth'] for m in runs[name]]} (node shares "
                            f"{[m['dedup_node_share'] for m in runs[name]]})")
        for a, b in zip(runs["rank"], runs[name]):
            if abs(a["loss"] - b["loss"]) > 1e-5 * abs(a["loss"]):
                problems.append(f"{name}: step {a['step']} loss {b['loss']} vs {a['loss']} with rank-level dedup")
    return problems


def check_plan_reads_links(plan, work):
    """The links a run measured (its links.json) reach the planner:
    hetermoe-plan --links prices transfers with them, so the same links ten
    times slower predict a longer step for the same model and cluster."""
    measured = os.path.join(work, "depth-slow-across-nodes", "links.json")
    with open(measured) as f:
        links = json.load(f)
    slower = dict(links, inter_node=dict(links["inter_node"], gbps=links["inter_node"]["gbps"] / 10),
                  intra_node=dict(links["intra_node"], gbps=links["intra_node"]["gbps"] / 10))
    slower_file = os.path.join(work, "links-slower.json")
    with open(slower_file, "w") as f:
        json.dump(slower, f)
    inventory = os.path.join(os.path.dirname(__file__), "..", "planner", "data", "cluster_4a40_8v100.yaml")
    step = {}
    for name, path in (("measured", measured), ("10x slower", slower_file)):
        p = subprocess.run([plan, "--inventory", inventory, "--model", os.path.join(work, "config-wide.json"),
                            "--seq-len", "128", "--global-batch", "8", "--dedup-depth", "auto", "--no-baselines",
                            "--json", "--links", path], capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            return [f"hetermoe-plan --links {path} failed ({p.returncode}): {p.stderr.strip()}"]
        step[name] = json.loads(p.stdout)["predicted"]["step_seconds"]
    print(f"hetermoe-plan --links: predicted step {step['measured'] * 1e3:.2f} ms with the run's links.json, "
          f"{step['10x slower'] * 1e3:.2f} ms with them 10x slower")
    return [] if step["10x slower"] > step["measured"] else [f"the planner ignored the links: {step}"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trainer", required=True)
    ap.add_argument("--plan", required=True, help="hetermoe-plan")
    ap.add_argument("--fixture", required=True, help="the golden fixture (its config.json gives the dimensions)")
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    with open(os.path.join(args.fixture, "config.json")) as f:
        config = json.load(f)
    experts = 8
    for k in (2, 4):
        c = dict(config, num_local_experts=experts, num_experts_per_tok=k)
        with open(os.path.join(args.work, f"config{k}.json"), "w") as f:
            json.dump(c, f)
    rng = random.Random(3)
    ids = [rng.randrange(config["vocab_size"]) for _ in range(20000)]
    with open(os.path.join(args.work, "tokens.bin"), "wb") as f:  # llm.c header, version 1: uint16 ids
        f.write(struct.pack("<256i", 20240520, 1, len(ids), *([0] * 253)))
        f.write(struct.pack(f"<{len(ids)}H", *ids))

    p = subprocess.run([args.plan, "dedup", "--experts", str(experts), "--groups", "2,4", "--top-k", "2,4", "--json",
                        "--tokens", "1000"], capture_output=True, text=True, check=True)
    predicted = {(s["groups"], s["top_k"]): 1 - s["formula"] for s in json.loads(p.stdout)["shares"]}
    problems = []
    print(f"{'top-k':>6} {'expert ranks':>13} {'sent/routed':>12} {'planner':>8}")
    for k in (2, 4):
        for n in (2, 4):
            got = sent_per_routed(args.trainer, args.work, k, n, "true")
            want = predicted[(n, k)]
            print(f"{k:>6} {n:>13} {got:>12.4f} {want:>8.4f}")
            if abs(got - want) > 0.04:
                problems.append(f"top-{k} over {n} expert ranks: {got:.4f} rows sent per routed row, planner {want:.4f}")
    print(f"{'top-k':>6} {'nodes':>13} {'across/routed':>14} {'planner':>8} {'rank dedup':>11}")
    for k in (2, 4):
        across = {dedup: sent_per_routed(args.trainer, args.work, k, 4, dedup, m=2, extra=", ranks_per_node: 2",
                                         key="dispatch_rows_inter_node") for dedup in ("node", "rank")}
        want = predicted[(2, k)]
        print(f"{k:>6} {'2 of 2 ranks':>13} {across['node']:>14.4f} {want:>8.4f} {across['rank']:>11.4f}")
        if abs(across["node"] - want) > 0.04:
            problems.append(f"top-{k}, node dedup over 2 nodes: {across['node']:.4f} rows across nodes per routed "
                            f"row, planner {want:.4f}")
        if not across["node"] < across["rank"]:
            problems.append(f"top-{k}: node dedup sent {across['node']:.4f} across nodes, rank {across['rank']:.4f}")
    problems += check_depth_choice(args.trainer, args.work)
    problems += check_plan_reads_links(args.plan, args.work)
    off = sent_per_routed(args.trainer, args.work, 4, 2, "false")
    if off != 1.0:
        problems.append(f"dedup off: {off} rows sent per routed row, expected 1")
    for p in problems:
        print(f"FAIL: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
