#!/usr/bin/python3
"""The distributed engine against the single-process trainer.

For every rank shape (1+1, 2+2, 1+3, 2+4 ranks, and 2 groups of 1+1), every
schedule (zebra, sequential, ep) and Asym-EA on and off, 5 training steps of
the golden tiny model through the local launcher must give the losses
(relative 1e-5) and final weights (|diff| <= 1e-6 + 1e-5 |x|) of one
process on the same run file; so must ZeRO-1 (train.zero 1), with less
state per attention rank, the same checkpoints and an exact resume,
zebra in waves of a few micro-batches (parallel.micro_batches_in_flight),
and recomputation in the backward (train.recompute attention, full). In
every shape each rank reads from the token file only the sequences of its
own micro-batches (the bytes it reports; expert ranks none). The
single-process trainer is itself checked
against PyTorch (tests/reference), so this chains the distributed run to the
independent truth.

    check_distributed.py --trainer PATH --fixture GOLDEN_DIR --work DIR [--only zebra]
"""
import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reference"))
from mixtral_torch import read_safetensors  # noqa: E402

# 24 sequences in 12 micro-batches: divisible by every attention-rank count
# below (1, 2, 4 and 6 under ep).
BASE = """model: {{config: {fx}/config.json, init: {fx}/model.safetensors}}
data: {{train: {fx}/tokens.bin}}
train: {{steps: 5, global_batch: 24, micro_batches: 12, seq_len: 16, lr: 1.0e-2,
        schedule: cosine, warmup_steps: 2, min_lr: 1.0e-3, eps: 1.0e-5, grad_clip: 0.5,
        threads: 1}}
output: {{dir: {out}}}
"""

# (attention, expert, groups, per-layer Asym-EA offload valid for the 4-expert model)
SHAPES = [(1, 1, 1, [1, 2]), (2, 2, 1, [2, 0]), (1, 3, 1, [1, 0]), (2, 4, 1, None), (1, 1, 2, [1, 1])]


def run(trainer, run_file, out, extra=()):
    cmd = [trainer, "--config", run_file, "--no-progress", "--set", f"output.dir={out}", *extra]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr}")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f]
    weights, _ = read_safetensors(os.path.join(out, "final", "model.safetensors"))
    return metrics, weights, time.time() - t0, p.stderr


def compare(name, ref, got):
    ref_m, ref_w, got_m, got_w = ref[0], ref[1], got[0], got[1]
    problems = []
    if len(ref_m) != len(got_m):
        problems.append(f"{len(got_m)} steps, expected {len(ref_m)}")
    for a, b in zip(ref_m, got_m):
        for key in ("loss", "ce_loss", "aux_loss", "grad_norm"):
            if abs(a[key] - b[key]) > 1e-5 * abs(a[key]):
                problems.append(f"step {a['step']} {key}: {b[key]} vs {a[key]}")
        if a["expert_tokens"] != b["expert_tokens"]:
            problems.append(f"step {a['step']} expert_tokens differ")
    worst, worst_name = 0.0, ""
    for tensor, want in ref_w.items():
        diff = ((got_w[tensor] - want).abs() - 1e-5 * want.abs()).max().item()
        if diff > worst:
            worst, worst_name = diff, tensor
    if worst > 1e-6:
        problems.append(f"final weights: {worst_name} off by {worst:.3g}")
    return problems


def token_read_problems(stderr, m, n, g, schedule, id_bytes):
    """Each rank reads only its own micro-batches' sequences: an attention
    rank (every rank under ep) 5 steps x 24 / (its count) sequences of 16 + 1
    ids, an expert rank none; every rank reports what it read."""
    attention = m + n if schedule == "ep" else m
    want = {r: (5 * 24 // (g * attention) * 17 * id_bytes if r % (m + n) < attention else 0)
            for r in range(g * (m + n))}
    got = {int(x.group(1)): int(x.group(2))
           for x in re.finditer(r"rank (\d+) read [\d.]+ MiB \((\d+) bytes\) of token ids", stderr)}
    return [] if got == want else [f"token bytes read per rank {got}, expected {want}"]


def check_trace(trainer, run_file, work):
    """--trace writes one Chrome trace with every rank's tasks and waits, and
    each step's dedup depth per layer."""
    trace = os.path.join(work, "trace.json")
    run(trainer, run_file, os.path.join(work, "traced"),
        ["--trace", trace, "--set", "parallel={attention_ranks: 1, expert_ranks: 2}"])
    with open(trace) as f:
        events = json.load(f)["traceEvents"]
    names = {(e["pid"], e["name"][:3]) for e in events if e.get("ph") == "X"}
    want = {(0, "A^F"), (0, "H(1"), (0, "A^B"), (1, "E^F"), (1, "E^B"), (2, "E^F"), (2, "E^B"),
            (0, "ded")}  # "dedup depth by layer: rank rank" each step
    missing = want - names
    leftovers = [p for p in os.listdir(work) if p.startswith("trace.json.rank-")]
    ok = not missing and not leftovers
    print(f"{'trace':40s} {'ok' if ok else 'MISMATCH'}"
          + (f" missing {sorted(missing)}" if missing else "") + (f" leftovers {leftovers}" if leftovers else ""))
    return ok


def check_resume(trainer, run_file, work):
    """A distributed checkpoint (experts gathered from their owners) resumes exactly."""
    parallel = "parallel={attention_ranks: 2, expert_ranks: 2, asym_ea: [2, 0]}"
    straight = run(trainer, run_file, os.path.join(work, "straight"),
                   ["--set", parallel, "--set", "output.checkpoint_every=2"])
    resumed = run(trainer, run_file, os.path.join(work, "resumed"),
                  ["--set", parallel, "--resume", os.path.join(work, "straight", "checkpoint-2")])
    problems = compare("resume", (straight[0][2:], straight[1], 0), resumed)
    print(f"{'resume from checkpoint-2 (2+2, asym)':40s} {'ok' if not problems else 'MISMATCH'}")
    for p in problems[:5]:
        print(f"    {p}")
    return not problems and check_resume_swapped(trainer, run_file, work)


def check_resume_swapped(trainer, run_file, work):
    """With expert swaps (1+3, a swap after every step), checkpoint-2 records
    where the swaps put the experts (trainer_state.json's expert_placement;
    the weights keep the original indices) and a resumed run puts them back:
    the same losses and weights as the run that went straight on, and the
    same swaps after the resume, so the final placement is the same too."""
    parallel = "parallel={attention_ranks: 1, expert_ranks: 3, swap_every: 1}"
    straight = run(trainer, run_file, os.path.join(work, "straight-swap"),
                   ["--set", parallel, "--set", "output.checkpoint_every=2"])
    resumed = run(trainer, run_file, os.path.join(work, "resumed-swap"),
                  ["--set", parallel, "--resume", os.path.join(work, "straight-swap", "checkpoint-2")])
    problems = compare("resume with swaps", (straight[0][2:], straight[1], 0), resumed)

    def state(folder, sub):
        with open(os.path.join(work, folder, sub, "trainer_state.json")) as f:
            return json.load(f)
    at2 = state("straight-swap", "checkpoint-2")
    want, got = state("straight-swap", "final"), state("resumed-swap", "final")
    if not at2.get("expert_placement"):
        problems.append("checkpoint-2 records no expert placement after swaps")
    if "expert placement restored" not in resumed[3]:
        problems.append("the resumed run did not say it restored the placement")
    if (got.get("expert_placement"), got.get("expert_swaps")) != (want.get("expert_placement"), want.get("expert_swaps")):
        problems.append(f"final placement {got.get('expert_placement')} ({got.get('expert_swaps')} swaps), straight run "
                        f"{want.get('expert_placement')} ({want.get('expert_swaps')} swaps)")
    print(f"{'resume with expert swaps (1+3)':40s} {'ok' if not problems else 'MISMATCH'} "
          f"(placement at step 2 {at2.get('expert_placement')}, {want.get('expert_swaps')} swaps in all)")
    for p in problems[:5]:
        print(f"    {p}")
    return not problems


def dedup_metric_problems(on, off, plan_file, expert_ranks):
    """The per-layer dispatch metrics: 24 x 16 tokens x top-2 rows routed per
    layer and step; without dedup every one is sent; with it, 1 expert rank
    (every expert on one owner) gets each token once, half the rows; and the
    load imbalance equals max / mean of the expert ranks' routed rows counted
    here from expert_tokens and the experts each rank holds (plan.json)."""
    problems = []
    routed = 24 * 16 * 2
    for m in off:
        if m["dispatch_rows"] != m["dispatch_rows_sent"] or any(r != routed for r in m["dispatch_rows"]):
            problems.append(f"dedup off, step {m['step']}: rows {m['dispatch_rows']}, sent {m['dispatch_rows_sent']}")
    with open(plan_file) as f:
        ranks = json.load(f)["ranks"]
    for m in on:
        sent = m["dispatch_rows_sent"]
        if any(r != routed for r in m["dispatch_rows"]) or not all(s < r for s, r in zip(sent, m["dispatch_rows"])):
            problems.append(f"dedup on, step {m['step']}: rows {m['dispatch_rows']}, sent {sent}")
        if expert_ranks == 1 and any(s != routed // 2 for s in sent):
            problems.append(f"1 expert rank: {sent} rows sent per layer, expected one per token ({routed // 2})")
        for layer, counts in enumerate(m["expert_tokens"]):
            loads = [sum(counts[e] for e in r["experts"][layer]) for r in ranks if r["experts"][layer]]
            want = max(loads) * len(loads) / sum(loads)
            if abs(m["expert_load_imbalance"][layer] - want) > 1e-12:
                problems.append(f"step {m['step']} layer {layer}: load imbalance {m['expert_load_imbalance'][layer]}, "
                                f"counted {want}")
    if not problems:
        print(f"dispatch metrics 1+{expert_ranks}: rows sent / routed per layer "
              f"{[round(s / r, 3) for s, r in zip(on[0]['dispatch_rows_sent'], on[0]['dispatch_rows'])]}, "
              f"load imbalance {[round(x, 3) for x in on[0]['expert_load_imbalance']]}")
    return problems


def check_dedup(trainer, run_file, work, ref):
    """Token deduplication (parallel.dedup, on by default) sends fewer bytes for
    the same training: 1 attention + 1 expert rank hold every expert on one
    owner, so each top-2 token's dispatched row and summed input grad travel
    once instead of twice; with 3 owners fewer tokens repeat per owner."""
    ok = True
    for m, n in ((1, 1), (1, 3)):
        base = f"parallel={{attention_ranks: {m}, expert_ranks: {n}, schedule: zebra, timeout_seconds: 30"
        on = run(trainer, run_file, os.path.join(work, f"dedup-on-{n}"), ["--set", base + "}"])
        off = run(trainer, run_file, os.path.join(work, f"dedup-off-{n}"), ["--set", base + ", dedup: false}"])
        problems = compare(f"dedup off {m}+{n}", ref, off)
        sent_on = sum(x["exchange_bytes"] for x in on[0])
        sent_off = sum(x["exchange_bytes"] for x in off[0])
        saved = 1 - sent_on / sent_off
        print(f"dedup {m}+{n}: {sent_on:.0f} bytes vs {sent_off:.0f} without ({saved:.1%} less)")
        if not sent_on < sent_off:
            problems.append(f"dedup did not reduce the exchanged bytes ({sent_on} vs {sent_off})")
        if n == 1 and saved < 0.2:
            problems.append(f"1+1 top-2: expected ~25% fewer bytes, got {saved:.1%}")
        problems += dedup_metric_problems(on[0], off[0], os.path.join(work, f"dedup-on-{n}", "plan.json"), n)
        for p in problems[:5]:
            print(f"    {p}")
        ok = ok and not problems
    return ok


def check_node_dedup(trainer, run_file, work, ref, schedule):
    """Node-level deduplication (parallel.dedup node; nodes of
    parallel.ranks_per_node ranks): an attention rank sends one block to each
    other node whose expert ranks (two or more) hold the layer's experts, and
    that node's first owner relays it. The same training as the single
    process; fewer rows cross nodes than with rank-level dedup, and rows are
    relayed inside the nodes."""
    ok = True
    # (attention, expert, groups, ranks per node, Asym-EA, extra parallel keys)
    shapes = {"zebra": [(1, 3, 1, 2, None, ""), (2, 2, 1, 2, None, ""), (1, 3, 1, 2, "[1, 0]", ""),
                        (1, 4, 1, 2, None, ", micro_batches_in_flight: 4"), (1, 3, 2, 2, None, ""),
                        (1, 3, 1, 2, None, ", swap_every: 1")],
              "sequential": [(1, 3, 1, 2, None, "")], "ep": [(2, 2, 1, 2, None, "")]}[schedule]
    for m, n, g, per_node, asym, extra in shapes:
        name = (f"dedup node {schedule} {g}x({m}+{n}) {per_node}/node" + (f" asym_ea={asym}" if asym else "")
                + extra.replace(",", "").replace(":", "="))
        base = (f"parallel={{attention_ranks: {m}, expert_ranks: {n}, groups: {g}, schedule: {schedule}, "
                f"timeout_seconds: 30, ranks_per_node: {per_node}" + (f", asym_ea: {asym}" if asym else "") + extra)
        out = os.path.join(work, re.sub(r"[^A-Za-z0-9+-]", "_", name))
        try:
            node = run(trainer, run_file, out, ["--set", base + ", dedup: node}"])
            rank = run(trainer, run_file, out + "-rank", ["--set", base + ", dedup: rank}"])
            problems = compare(name, ref, node)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            problems, node, rank = [str(e)], (None, None, 0.0, ""), None
        if not problems:
            across = {k: sum(sum(x["dispatch_rows_inter_node"]) for x in r[0]) for k, r in (("node", node), ("rank", rank))}
            relayed = sum(sum(x["dispatch_rows_relayed"]) for x in node[0])
            print(f"    rows to other nodes: {across['node']:.0f} with node dedup, {across['rank']:.0f} with rank "
                  f"dedup ({1 - across['node'] / across['rank']:.1%} fewer); {relayed:.0f} relayed inside nodes")
            if not across["node"] < across["rank"]:
                problems.append(f"node dedup sent {across['node']} rows across nodes, not fewer than {across['rank']}")
            if relayed <= 0:
                problems.append("no rows were relayed inside a node")
            if sum(sum(x["dispatch_rows_relayed"]) for x in rank[0]) != 0:
                problems.append("rank-level dedup relayed rows")
        print(f"{name:40s} {'ok' if not problems else 'MISMATCH'} ({node[2]:.1f} s)")
        for p in problems[:5]:
            print(f"    {p}")
        ok = ok and not problems
    return ok


def check_switch_dedup(trainer, run_file, work, ref):
    """The level below the node (parallel.dedup switch; switches of
    parallel.ranks_per_switch ranks inside nodes of ranks_per_node): an
    attention rank sends one block to each other switch whose expert ranks
    hold several of the layer's experts, relayed inside that switch, also
    within one node, where node-level dedup has nothing to relay. The same
    training as the single process; fewer rows sent than at rank level."""
    ok = True
    for m, n in ((1, 3), (2, 2)):
        name = f"dedup switch zebra {m}+{n}, 1 node of 2 switches"
        base = (f"parallel={{attention_ranks: {m}, expert_ranks: {n}, schedule: zebra, timeout_seconds: 30, "
                f"ranks_per_node: 4, ranks_per_switch: 2")
        out = os.path.join(work, re.sub(r"[^A-Za-z0-9+-]", "_", name))
        try:
            got = {d: run(trainer, run_file, out + "-" + d, ["--set", base + f", dedup: {d}}}"])
                   for d in ("switch", "node", "rank")}
            problems = compare(name, ref, got["switch"])
            sent = {d: sum(sum(x["dispatch_rows_sent"]) for x in r[0]) for d, r in got.items()}
            relayed = {d: sum(sum(x["dispatch_rows_relayed"]) for x in r[0]) for d, r in got.items()}
            print(f"    rows sent: {sent['switch']:.0f} at switch level ({relayed['switch']:.0f} relayed), "
                  f"{sent['node']:.0f} at node level, {sent['rank']:.0f} at rank level")
            if not sent["switch"] < sent["rank"] or relayed["switch"] <= 0:
                problems.append(f"switch-level dedup sent {sent} rows, relayed {relayed}")
            if sent["node"] != sent["rank"] or relayed["node"] != 0:
                problems.append(f"node-level dedup inside one node changed the traffic: {sent}, {relayed}")
            if any(d != "switch" for x in got["switch"][0] for d in x["dedup_depth"]):
                problems.append(f"dedup_depth {[x['dedup_depth'] for x in got['switch'][0]]}")
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            problems = [str(e)]
        print(f"{name:40s} {'ok' if not problems else 'MISMATCH'}")
        for p in problems[:5]:
            print(f"    {p}")
        ok = ok and not problems
    return ok


# Links profiles (a run's links.json) that decide dedup auto: "slow across
# nodes" makes every block take node level; "borderline" prices the relay
# inside the node close to what node level saves across nodes, so blocks
# with more duplicates take node level and the others rank level.
LINKS = {"slow across nodes": (0.1, 10.0, 5.0), "borderline": (1.0, 1.3, 0.0)}


def check_auto_dedup(trainer, run_file, work, ref):
    """parallel.dedup auto with the links from a profile (parallel.links_profile):
    each attention rank chooses the depth of each of its blocks (layer,
    micro-batch) from its routing and tells the route's owners in the
    block's first word. The same training as the single process, with every
    block at node level on slow links between nodes (2+2) and, on
    borderline links, a mix of depths within a layer and step; the run
    writes the links it used to links.json."""
    ok = True
    for links_name, (inter, intra, latency) in LINKS.items():
        for m, n in ((2, 2), (1, 3)):
            name = f"dedup auto zebra {m}+{n} 2/node, {links_name}"
            out = os.path.join(work, re.sub(r"[^A-Za-z0-9+-]", "_", name))
            profile = out + "-links.json"
            with open(profile, "w") as f:
                json.dump({"format": "hetermoe-links/1", "measured_over": "gloo",
                           "inter_node": {"latency_us": latency, "gbps": inter},
                           "intra_node": {"latency_us": latency, "gbps": intra}}, f)
            parallel = (f"parallel={{attention_ranks: {m}, expert_ranks: {n}, schedule: zebra, timeout_seconds: 30, "
                        f"ranks_per_node: 2, dedup: auto, links_profile: {profile}}}")
            try:
                got = run(trainer, run_file, out, ["--set", parallel])
                problems = compare(name, ref, got)
                shares = [m_["dedup_node_share"] for m_ in got[0]]
                flat = [x for step in shares for x in step]
                print(f"    share of blocks at node level per step and layer: "
                      f"{[[round(x, 2) for x in step] for step in shares]}")
                # 2+2: a third of the tokens reach both owners of the expert
                # node, which node level saves; 1+3's expert node holds two
                # of the four experts, so some blocks save too little.
                if links_name == "slow across nodes" and m == 2 and min(flat) != 1.0:
                    problems.append(f"not every block took node level on slow links: {shares}")
                if links_name == "borderline" and m == 2 and not any(0 < x < 1 for x in flat):
                    problems.append(f"no layer mixed the depths on borderline links: {shares}")
                with open(os.path.join(out, "links.json")) as f:
                    written = json.load(f)
                if abs(written["inter_node"]["gbps"] - inter) > 1e-9 * inter or written["measured_over"] != "gloo":
                    problems.append(f"links.json does not hold the links in use: {written}")
                if "links given" not in got[3]:
                    problems.append("the run did not say it used the given links")
            except (RuntimeError, subprocess.TimeoutExpired, OSError, KeyError) as e:
                problems, got = [str(e)], (None, None, 0.0, "")
            print(f"{name:40s} {'ok' if not problems else 'MISMATCH'} ({got[2]:.1f} s)")
            for p in problems[:5]:
                print(f"    {p}")
            ok = ok and not problems
    # A bad profile is refused naming it and the field, before any step.
    bad = os.path.join(work, "bad-links.json")
    with open(bad, "w") as f:
        json.dump({"format": "hetermoe-links/1", "inter_node": {"latency_us": 1, "gbps": 0},
                   "intra_node": {"latency_us": 1, "gbps": 1}}, f)
    try:
        run(trainer, run_file, os.path.join(work, "bad-links"), [
            "--set", "parallel={attention_ranks: 2, expert_ranks: 2, schedule: zebra, timeout_seconds: 30, "
                     f"ranks_per_node: 2, dedup: auto, links_profile: {bad}}}"])
        said = "(it trained)"
    except RuntimeError as e:
        said = str(e).strip().splitlines()[-1]
    refused = f"parallel.links_profile {bad}: inter_node.gbps must be > 0" in said
    print(f"{'dedup auto, a bad links profile':40s} {'ok' if refused else 'MISMATCH'}: {said}")
    return ok and refused


def check_swap_forecast(trainer, plan, run_file, work):
    """The planner's expert swap forecast (hetermoe-plan swap) follows the
    engine: from a run's routing counts it gives exactly the imbalance the
    engine measured with the planned placement (max / mean of the routed
    rows over the expert ranks, per step and layer), and with a swap every
    step an imbalance within 0.05 of the engine's on average (the forecast
    draws which experts a token chose together, the engine knows them);
    both lower than without swaps. And the plan (hetermoe-plan --routing)
    prices the run's routing, its step shorter with the swaps."""
    runs = {}
    for every in (0, 1):
        out = os.path.join(work, f"forecast-swap{every}")
        runs[every] = run(trainer, run_file, out, [
            "--set", "parallel={attention_ranks: 1, expert_ranks: 3, schedule: zebra, timeout_seconds: 30, "
                     f"swap_every: {every}}}", "--set", "train.steps=10"])[0]
    p = subprocess.run([plan, "swap", os.path.join(work, "forecast-swap0", "metrics.jsonl"), "--top-k", "2",
                        "--expert-ranks", "3", "--swap-every", "1", "--json"], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        print(f"swap forecast: hetermoe-plan swap failed: {p.stderr.strip()}")
        return False
    steps = json.loads(p.stdout)["steps"]
    problems = []
    engine = {e: [x for m in runs[e] for x in m["expert_load_imbalance"]] for e in runs}
    forecast = {k: [x for s in steps for x in s[k]["expert_load_imbalance"]] for k in ("planned", "swapped")}
    if len(forecast["planned"]) != len(engine[0]) or any(abs(a - b) > 1e-9 for a, b in zip(forecast["planned"], engine[0])):
        problems.append(f"planned placement: forecast {forecast['planned']} vs engine {engine[0]}")
    mean = {name: sum(v) / len(v) for name, v in (("engine, no swap", engine[0]), ("engine, swap every step", engine[1]),
                                                 ("forecast, swap every step", forecast["swapped"]))}
    print("    expert load max/mean, mean over 10 steps and 2 layers: " +
          ", ".join(f"{k} {v:.3f}" for k, v in mean.items()))
    if abs(mean["forecast, swap every step"] - mean["engine, swap every step"]) > 0.05:
        problems.append(f"the forecast's imbalance with swaps is off the engine's: {mean}")
    if not mean["engine, swap every step"] < mean["engine, no swap"] or \
            not mean["forecast, swap every step"] < mean["engine, no swap"]:
        problems.append(f"swaps did not lower the imbalance: {mean}")
    # The plan prices the same routing: its busiest expert rank carries the
    # run's load, lighter with the swaps (hetermoe-plan --routing --swap-every).
    inventory = os.path.join(os.path.dirname(__file__), "..", "planner", "data", "cluster_4a40_8v100.yaml")
    with open(run_file) as f:
        config = re.search(r"config: ([^,}]+)", f.read()).group(1).strip()
    step = {}
    for name, extra in (("uniform", []), ("routing", ["--routing", os.path.join(work, "forecast-swap0", "metrics.jsonl")]),
                        ("routing, swaps", ["--routing", os.path.join(work, "forecast-swap0", "metrics.jsonl"),
                                            "--swap-every", "1"])):
        p = subprocess.run([plan, "--inventory", inventory, "--model", config, "--seq-len", "16", "--global-batch", "24",
                            "--shape", "1:3", "--groups", "1", "--no-baselines", "--json", *extra],
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            problems.append(f"hetermoe-plan {' '.join(extra)} failed: {p.stderr.strip()}")
            break
        step[name] = json.loads(p.stdout)["predicted"]["step_seconds"]
    if len(step) == 3:
        print("    planned step with the run's routing: " + ", ".join(f"{k} {v * 1e6:.2f} us" for k, v in step.items()))
        if not step["routing, swaps"] < step["routing"]:
            problems.append(f"the plan does not price the swaps' lighter load: {step}")
    print(f"{'swap forecast 1+3 vs the engine':40s} {'ok' if not problems else 'MISMATCH'}")
    for msg in problems:
        print(f"    {msg}")
    return not problems


def check_swap(trainer, run_file, work, ref, schedule):
    """HierMoE's expert swap (parallel.swap_every 1: after every step, per
    layer, the best pair of experts on different ranks trade places, weights
    and AdamW moments moved, the gate's rows swapped) trains the same model:
    losses, routing counts (by original expert) and the exported weights (in
    the original order) as the single process, while the routed load across
    the owners evens out."""
    ok = True
    shapes = {"zebra": [(1, 3, 1, None, ""), (2, 2, 1, None, ", zero: 1"), (1, 3, 1, "[1, 0]", ""), (1, 2, 2, None, "")],
              "sequential": [(1, 3, 1, None, "")], "ep": [(1, 1, 1, None, "")]}[schedule]
    for m, n, g, asym, extra in shapes:
        name = f"swap {schedule} {g}x({m}+{n})" + (f" asym_ea={asym}" if asym else "") + extra.replace(",", "")
        base = (f"parallel={{attention_ranks: {m}, expert_ranks: {n}, groups: {g}, schedule: {schedule}, "
                f"timeout_seconds: 30" + (f", asym_ea: {asym}" if asym else ""))
        sets = ["--set", base + ", swap_every: 1}"]
        if "zero" in extra:
            sets += ["--set", "train.zero=1"]
        out = os.path.join(work, name.replace(" ", "_").replace("=", "").replace(",", "").replace(":", ""))
        try:
            got = run(trainer, run_file, out, sets)
            problems = compare(name, ref, got)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            problems, got = [str(e)], (None, None, 0.0, "")
        swaps = got[3].count("expert swap: layer") if got[3] else 0
        if not problems and swaps == 0:
            problems.append("no expert was swapped")
        if not problems and (m, n, schedule, asym) == (1, 3, "zebra", None):
            # Steps 2-5 (after the first swaps): the routed rows' max / mean over the owners.
            off = run(trainer, run_file, out + "-off", ["--set", base + "}"])
            mean = lambda ms: sum(sum(x["expert_load_imbalance"]) for x in ms[1:]) / sum(len(x["expert_load_imbalance"]) for x in ms[1:])
            before, after = mean(off[0]), mean(got[0])
            print(f"    load imbalance (max/mean of routed rows over the owners, steps 2-5): {before:.3f} without "
                  f"swaps, {after:.3f} with")
            if not after < before:
                problems.append(f"swapping did not lower the load imbalance ({after:.3f} vs {before:.3f})")
        print(f"{name:40s} {'ok' if not problems else 'MISMATCH'} ({got[2]:.1f} s, {swaps} swaps)")
        for p in problems[:5]:
            print(f"    {p}")
        ok = ok and not problems
    return ok


def check_zero(trainer, run_file, work, ref):
    """train.zero 1 (ZeRO-1: the dense AdamW moments sharded over the
    attention ranks of every group) trains the same model, holds less on
    each attention rank than without, writes the same checkpoint (the
    moments fetched from their shards, across groups) and resumes exactly."""
    ok = True
    for name, parallel in (("zebra 2+2 asym", "{attention_ranks: 2, expert_ranks: 2, asym_ea: [2, 0]}"),
                           ("ep 2 groups of 1+1", "{attention_ranks: 1, expert_ranks: 1, groups: 2, schedule: ep}")):
        outs = {z: os.path.join(work, f"zero{z}-{name.split()[0]}") for z in (0, 1)}
        runs = {z: run(trainer, run_file, outs[z], ["--set", f"parallel={parallel}", "--set", f"train.zero={z}",
                                                    "--set", "output.checkpoint_every=2"]) for z in (0, 1)}
        problems = compare(f"zero 1 {name}", ref, runs[1])
        held = {z: runs[z][0][-1]["rank_state_bytes"] for z in (0, 1)}
        attention = [0, 1] if "2+2" in name else [0, 1, 2, 3]
        for r in attention:
            if not held[1][r] < held[0][r]:
                problems.append(f"rank {r} holds {held[1][r]} bytes with ZeRO-1, not less than {held[0][r]}")
        for f in ("model.safetensors", "optimizer.safetensors"):
            with open(os.path.join(outs[0], "final", f), "rb") as a, open(os.path.join(outs[1], "final", f), "rb") as b:
                if a.read() != b.read():
                    problems.append(f"final/{f} differs from the run without ZeRO-1")
        resumed = run(trainer, run_file, outs[1] + "-resumed",
                      ["--set", f"parallel={parallel}", "--set", "train.zero=1",
                       "--resume", os.path.join(outs[1], "checkpoint-2")])
        problems += compare("zero 1 resumed", (runs[1][0][2:], runs[1][1], 0), resumed)
        shares = ", ".join(f"{held[1][r] / held[0][r]:.2f}" for r in attention)
        print(f"{'zero 1 ' + name:40s} {'ok' if not problems else 'MISMATCH'}: attention ranks hold "
              f"{shares} of their state without ZeRO-1; checkpoints identical; resume exact")
        for p in problems[:5]:
            print(f"    {p}")
        ok = ok and not problems
    return ok


def check_in_flight(trainer, run_file, work, ref):
    """parallel.micro_batches_in_flight: zebra in waves (here 12 micro-batches
    per step, 12 or 6 per attention rank) trains the same model."""
    ok = True
    for m, n, asym, cap in ((1, 1, "[1, 2]", 1), (2, 2, "[2, 0]", 4), (1, 3, "off", 5)):
        parallel = (f"parallel={{attention_ranks: {m}, expert_ranks: {n}, asym_ea: {asym}, "
                    f"micro_batches_in_flight: {cap}}}")
        got = run(trainer, run_file, os.path.join(work, f"in-flight-{m}-{n}"), ["--set", parallel])
        problems = compare(f"in flight {cap}", ref, got)
        print(f"{f'zebra 1x({m}+{n}) in waves of {cap}':40s} {'ok' if not problems else 'MISMATCH'} ({got[2]:.1f} s)")
        for p in problems[:5]:
            print(f"    {p}")
        ok = ok and not problems
    return ok


def check_recompute(trainer, run_file, work, ref):
    """train.recompute: attention ranks recompute each layer's attention
    block in the backward, expert ranks their experts' activations (full:
    both); the same training, with Asym-EA's experts on an attention rank,
    in waves, with ZeRO-1 and over two groups."""
    ok = True
    for what, m, n, g, extra in (("attention", 1, 1, 1, "asym_ea: [1, 2]"),
                                 ("full", 2, 2, 1, "asym_ea: [2, 0], micro_batches_in_flight: 4"),
                                 ("full", 1, 1, 2, "schedule: sequential"),
                                 ("attention", 1, 3, 1, "schedule: ep")):
        parallel = f"parallel={{attention_ranks: {m}, expert_ranks: {n}, groups: {g}, {extra}}}"
        zero = ["--set", "train.zero=1"] if what == "full" and g == 1 else []
        name = f"recompute {what} {g}x({m}+{n}) {extra}" + (" zero 1" if zero else "")
        got = run(trainer, run_file, os.path.join(work, f"recompute-{what}-{g}-{m}-{n}"),
                  ["--set", parallel, "--set", f"train.recompute={what}", *zero])
        problems = compare(name, ref, got)
        print(f"{name:40s} {'ok' if not problems else 'MISMATCH'} ({got[2]:.1f} s)")
        for p in problems[:5]:
            print(f"    {p}")
        ok = ok and not problems
    return ok


def check_asym_auto(trainer, run_file, work, ref):
    """asym_ea: auto profiles the ranks at start-up and moves experts by
    Algorithm 1; whatever it moves, the training is the same."""
    got = run(trainer, run_file, os.path.join(work, "asym-auto"),
              ["--set", "parallel={attention_ranks: 1, expert_ranks: 1, schedule: zebra, asym_ea: auto}"])
    problems = compare("asym_ea auto 1+1", ref, got)
    print(f"{'zebra 1x(1+1) asym_ea=auto':40s} {'ok' if not problems else 'MISMATCH'} ({got[2]:.1f} s)")
    for p in problems[:5]:
        print(f"    {p}")
    return not problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trainer", required=True)
    ap.add_argument("--fixture", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--only", choices=["zebra", "sequential", "ep"], help="one schedule")
    ap.add_argument("--plan", help="hetermoe-plan: also check its expert swap forecast against the engine")
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    run_file = os.path.join(args.work, "run.yaml")
    with open(run_file, "w") as f:
        f.write(BASE.format(fx=os.path.abspath(args.fixture), out="single"))

    ref = run(args.trainer, run_file, os.path.join(args.work, "single"))
    with open(os.path.join(args.fixture, "tokens.bin"), "rb") as f:  # llm.c header: version 1 = uint16 ids
        id_bytes = 2 if struct.unpack("<3i", f.read(12))[1] == 1 else 4
    print(f"single process: losses {[round(m['loss'], 5) for m in ref[0]]} ({ref[2]:.1f} s)")
    schedules = [args.only] if args.only else ["zebra", "sequential", "ep"]
    failures = 0
    for schedule in schedules:
        for m, n, g, offload in SHAPES:
            variants = [None] + ([offload] if offload and schedule != "ep" else [])
            for asym in variants:
                name = f"{schedule} {g}x({m}+{n})" + (f" asym_ea={asym}" if asym else "")
                parallel = (f"parallel={{attention_ranks: {m}, expert_ranks: {n}, groups: {g}, "
                            f"schedule: {schedule}, timeout_seconds: 30"
                            + (f", asym_ea: {asym}" if asym else "") + "}")
                out = os.path.join(args.work, name.replace(" ", "_").replace("=", "").replace(",", ""))
                try:
                    got = run(args.trainer, run_file, out, ["--set", parallel])
                    problems = compare(name, ref, got) + token_read_problems(got[3], m, n, g, schedule, id_bytes)
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    problems, got = [str(e)], (None, None, 0.0, "")
                status = "ok" if not problems else "MISMATCH"
                print(f"{name:40s} {status} ({got[2]:.1f} s)")
                for p in problems[:5]:
                    print(f"    {p}")
                failures += bool(problems)
                shutil.rmtree(out, ignore_errors=True)
    for schedule in schedules:
        failures += not check_swap(args.trainer, run_file, args.work, ref, schedule)
        failures += not check_node_dedup(args.trainer, run_file, args.work, ref, schedule)
    if "zebra" in schedules:
        failures += not check_trace(args.trainer, run_file, args.work)
        failures += not check_resume(args.trainer, run_file, args.work)
        failures += not check_dedup(args.trainer, run_file, args.work, ref)
        failures += not check_auto_dedup(args.trainer, run_file, args.work, ref)
        failures += not check_switch_dedup(args.trainer, run_file, args.work, ref)
        if args.plan:
            failures += not check_swap_forecast(args.trainer, args.plan, run_file, args.work)
        failures += not check_asym_auto(args.trainer, run_file, args.work, ref)
        failures += not check_zero(args.trainer, run_file, args.work, ref)
        failures += not check_in_flight(args.trainer, run_file, args.work, ref)
        failures += not check_recompute(args.trainer, run_file, args.work, ref)
    if failures:
        print(f"FAIL: {failures} configuration(s) differ from the single-process run")
        sys.exit(1)
    print("PASS: every configuration matches the single-process run")


if __name__ == "__main__":
    main()
