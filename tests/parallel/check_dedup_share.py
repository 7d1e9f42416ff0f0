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
parallel: {{attention_ranks: 1, expert_ranks: {n}, schedule: zebra, timeout_seconds: 30, dedup: {dedup}}}
output: {{dir: {out}}}
"""


def sent_per_routed(trainer, work, k, n, dedup):
    out = os.path.join(work, f"out-k{k}-n{n}-{dedup}")
    run_file = out + ".yaml"
    with open(run_file, "w") as f:
        f.write(RUN.format(work=work, k=k, n=n, out=out, dedup=dedup))
    p = subprocess.run([trainer, "--config", run_file, "--no-progress"], capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"{run_file} failed ({p.returncode}):\n{p.stderr}")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f]
    sent = sum(sum(m["dispatch_rows_sent"]) for m in metrics)
    routed = sum(sum(m["dispatch_rows"]) for m in metrics)
    return sent / routed


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
    off = sent_per_routed(args.trainer, args.work, 4, 2, "false")
    if off != 1.0:
        problems.append(f"dedup off: {off} rows sent per routed row, expected 1")
    for p in problems:
        print(f"FAIL: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
