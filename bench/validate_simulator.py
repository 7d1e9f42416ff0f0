#!/usr/bin/python3
"""The planner's step simulator against the distributed engine, in emulation.

For each shape (1 attention + 1 expert rank, 1 + 2, ...) and each schedule
(zebra with Asym-EA, zebra, sequential, ep) this runs `hetermoe-trainer` with
`--trace` for a few steps, reads every rank's op times from the trace, feeds
them to the simulator (`hetermoe-plan simulate`, the planner's own
simulator.h / step_graph.h) and prints, per schedule, the measured step time
(median of the steps after warm-up), the simulated one, the error, and
whether the simulator orders the schedules as measured.

How a step is turned into simulator input (one simulation per measured step,
from that step's own trace, so load on the machine during a step shows in
both the measurement and the prediction):
  - ops: mean duration per op kind and rank role: A^F / A^B / H on attention
    ranks; per layer E^F / E^B on expert ranks; E^F / E^B on attention ranks
    are the experts Asym-EA moved there. The simulator has one representative
    rank per role, and the ranks of a role wait for each other's rows at
    every op, so each (op, layer, micro-batch) counts with its slowest rank. Under
    ep every rank is its own simulator rank, with its expert time per layer
    (routing loads the ranks differently in each layer, and each layer's
    all-to-all waits for that layer's busiest rank).
  - transfers: an alpha-beta link (latency per message, bytes per second)
    fitted per run to the waits during which the message arrived (the
    receiver was already waiting when the last sender's op ended): the time
    from the end of the op that sent (A^F, H, A^B on the sender; E^F, E^B on
    the owner) to the end of the receiver's wait, against the messages and
    bytes the wait received (rows from the step's routing counts, hidden x
    fp32). The trace's clock is CLOCK_MONOTONIC, shared by the ranks of a
    machine. Loopback moves a few MB in well under a millisecond, so the
    sizes often do not resolve a bandwidth; the latency (~1-2 ms with its
    occasional stalls, 2-6% of a sequential step) is what matters.
  - outside tasks: step_seconds minus the span from the first op of any rank
    to the last (zeroing gradients, posting receives, the end-of-step
    all-reduces, clipping, AdamW; not emulated), given to the simulator as
    the optimizer step of every rank and printed.

The emulation is bench_zebra.py's (the paper's regime: the expert rank 0.8x
as fast on experts, 3.7x slower on attention, every factor x3 so most of an
op is sleep and two ranks on two cores do not fight for CPU). lr is 1e-5 so
the routing, and with it the op times, stays as at initialisation over the
run. Zebra+Asym-EA moves M experts per layer (given, not `auto`: at this size
start-up profiling finds T_A ~ T_EE and moves none).

    /usr/bin/python3 bench/validate_simulator.py --trainer build/trainer/hetermoe-trainer \\
        --plan build/planner/hetermoe-plan [--shapes 1x1,1x2] [--steps 7] [--keep DIR]
"""
import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

CONFIG = {
    "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
    "vocab_size": 256, "hidden_size": 256, "intermediate_size": 512,
    "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
    "num_local_experts": 8, "num_experts_per_tok": 2, "max_position_embeddings": 1024,
    "rope_theta": 10000.0, "router_aux_loss_coef": 0.01, "tie_word_embeddings": False,
}
LAYERS = CONFIG["num_hidden_layers"]
HIDDEN = CONFIG["hidden_size"]

RUN = """model: {{config: config.json}}
data: {{train: tokens.bin}}
train: {{steps: {steps}, global_batch: 16, micro_batches: 4, seq_len: 256, lr: 1.0e-5, threads: 1}}  # batch: per shape
parallel: {{attention_ranks: 1, expert_ranks: 1, schedule: zebra, timeout_seconds: 300}}
emulate:
  attention_rank: {{attention: 3.0, experts: 3.0}}
  expert_rank: {{attention: 11.1, experts: 3.75}}
output: {{dir: out}}
"""

COMPUTE = re.compile(r"^(A\^F|A\^B|E\^F|E\^B)\((\d+),(\d+)\)$|^H\((\d+)\)$")
WAIT = re.compile(r"^(dispatch|dispatch-grad|combine|combine-grad)\((\d+),(\d+)\)$")


def variants(m, n):
    """(name, schedule, asym_ea) for an m attention + n expert rank shape."""
    return [
        ("zebra+asym", "zebra", "[" + ", ".join([str(m)] * LAYERS) + "]"),
        ("zebra", "zebra", "off"),
        ("sequential", "sequential", "off"),
        ("ep", "ep", "off"),
    ]


def micro_batches(m, n):
    """R for a shape: whole micro-batches for each of the m attention ranks (zebra, sequential) and
    each of the m + n ranks (ep), at least 3; every micro-batch is 4 sequences."""
    step = m * (m + n) // math.gcd(m, m + n)
    return step * -(-3 // step)


def run_trainer(trainer, work, name, m, n, schedule, asym, reuse, steps):
    out = os.path.join(work, name)
    metrics = os.path.join(out, "out", "metrics.jsonl")
    trace = os.path.join(out, "trace.json")
    if reuse and os.path.exists(trace) and os.path.exists(metrics):
        with open(metrics) as f:
            if sum(1 for _ in f) == steps:
                return out
    os.makedirs(out, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    cmd = [trainer, "-c", os.path.join(work, "run.yaml"), "--no-progress",
           "--set", f"output.dir={os.path.join(out, 'out')}",
           "--set", f"train.micro_batches={micro_batches(m, n)}",
           "--set", f"train.global_batch={4 * micro_batches(m, n)}",
           "--set", f"parallel={{attention_ranks: {m}, expert_ranks: {n}, schedule: {schedule}, "
                    f"asym_ea: {asym}, timeout_seconds: 300}}",
           "--trace", trace]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    with open(os.path.join(out, "log"), "w") as f:
        f.write(p.stderr)
    if p.returncode != 0:
        sys.exit(f"{name} failed:\n{p.stderr}")
    shutil.rmtree(os.path.join(out, "out", "final"), ignore_errors=True)  # ~150 MB, not needed here
    return out


class Run:
    """One engine run: its placement, per-step metrics and trace, cut into steps."""

    def __init__(self, path, warmup):
        with open(os.path.join(path, "out", "plan.json")) as f:
            self.plan = json.load(f)
        with open(os.path.join(path, "out", "metrics.jsonl")) as f:
            self.metrics = [json.loads(line) for line in f]
        with open(os.path.join(path, "trace.json")) as f:
            events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
        self.ranks = self.plan["ranks"]
        self.world = len(self.ranks)
        self.attention = [r["rank"] for r in self.ranks if r["role"] == "attention"]
        steps = len(self.metrics)
        self.warmup = warmup
        # Per rank: compute events in order, cut into equal chunks (one per step).
        self.steps = []  # [step] -> {rank: {"compute": [...], "waits": [...]}}
        per_rank = {}
        for r in range(self.world):
            mine = sorted((e for e in events if e["pid"] == r), key=lambda e: e["ts"])
            compute = [e for e in mine if e["tid"] == 0]
            if len(compute) % steps:
                sys.exit(f"{path}: rank {r} has {len(compute)} ops, not a multiple of {steps} steps")
            per_rank[r] = (compute, [e for e in mine if e["tid"] != 0])
        for s in range(steps):
            step = {}
            for r, (compute, waits) in per_rank.items():
                k = len(compute) // steps
                chunk = compute[s * k:(s + 1) * k]
                lo = compute[s * k - 1]["ts"] + compute[s * k - 1]["dur"] if s else float("-inf")
                hi = chunk[-1]["ts"] + chunk[-1]["dur"]
                step[r] = {"compute": chunk, "waits": [w for w in waits if lo < w["ts"] + w["dur"] <= hi]}
            self.steps.append(step)

    def owners(self, layer):
        """{rank: expert ids} of the ranks holding experts of 0-based layer `layer`."""
        return {r["rank"]: r["experts"][layer] for r in self.ranks if r["experts"][layer]}

    def rows(self, step, layer, experts):
        """Mean rows one micro-batch of one attention rank sends to `experts` of 0-based `layer`."""
        counts = self.metrics[step]["expert_tokens"][layer]
        return sum(counts[e] for e in experts) / self.plan["micro_batches"]

    def measured_steps(self):
        return range(self.warmup, len(self.steps))


def ops_of(step_ranks, rank):
    """{(kind, layer, micro): (start, end)} of one rank's compute in one step (1-based indices)."""
    out = {}
    for e in step_ranks[rank]["compute"]:
        m = COMPUTE.match(e["name"])
        if not m:
            continue
        key = (m.group(1), int(m.group(2)), int(m.group(3))) if m.group(1) else ("H", LAYERS + 1, int(m.group(4)))
        out[key] = (e["ts"] / 1e6, (e["ts"] + e["dur"]) / 1e6)
    return out


def waits_of(step_ranks, rank):
    """{(wait kind, layer, micro): (first start, last end)} of one rank's waits in one step."""
    out = {}
    for w in step_ranks[rank]["waits"]:
        m = WAIT.match(w["name"])
        if m:
            key = (m.group(1), int(m.group(2)), int(m.group(3)))
            begin, end = w["ts"] / 1e6, (w["ts"] + w["dur"]) / 1e6
            old = out.get(key, (begin, end))
            out[key] = (min(old[0], begin), max(old[1], end))
    return out


def transfer_samples(run):
    """(bytes received, messages, seconds) for every wait whose senders are known."""
    samples = []
    for s in run.measured_steps():
        step = run.steps[s]
        ops = {r: ops_of(step, r) for r in step}
        for r in step:
            for (kind, l, j), (begin, end) in waits_of(step, r).items():
                if kind in ("dispatch", "dispatch-grad"):
                    producer = ("A^F", l, j) if kind == "dispatch" else (
                        ("H", LAYERS + 1, j) if l == LAYERS else ("A^B", l + 1, j))
                    senders = [a for a in run.attention if a != r]
                    rows = run.rows(s, l - 1, run.owners(l - 1).get(r, [])) * len(senders)
                else:
                    producer = ("E^F" if kind == "combine" else "E^B", l, j)
                    senders = [o for o in run.owners(l - 1) if o != r]
                    rows = sum(run.rows(s, l - 1, run.owners(l - 1)[o]) for o in senders)
                ends = [ops[o][producer][1] for o in senders if producer in ops[o]]
                # Only when the receiver was already waiting as the last sender finished is the
                # end of its wait the arrival of the messages.
                if not senders or len(ends) != len(senders) or rows <= 0 or begin > max(ends):
                    continue
                samples.append((rows * HIDDEN * 4, len(senders), end - max(ends)))
    return samples


def fit_link(samples):
    """Least squares of seconds = messages x latency + bytes / bandwidth (both >= 0). When the
    sizes do not resolve a bandwidth (all alike, or no growth with size), latency only, and
    bytes_per_second is a stand-in so large that bytes cost nothing."""
    if not samples:
        return {"latency_seconds": 0.0, "bytes_per_second": 1e15}
    sxx = sum(m * m for _, m, _ in samples)
    syy = sum(b * b for b, _, _ in samples)
    sxy = sum(m * b for b, m, _ in samples)
    sxt = sum(m * t for _, m, t in samples)
    syt = sum(b * t for b, _, t in samples)
    det = sxx * syy - sxy * sxy
    latency, per_byte = ((syy * sxt - sxy * syt) / det, (sxx * syt - sxy * sxt) / det) if det else (0.0, 0.0)
    if latency < 0 or per_byte <= 0:  # fall back to one term
        if per_byte <= 0:
            latency, per_byte = sxt / sxx, 1e-15
        else:
            latency, per_byte = 0.0, syt / syy
    return {"latency_seconds": latency, "bytes_per_second": 1.0 / per_byte}


def mean(xs):
    return sum(xs) / len(xs) if xs else 0.0


def outside_tasks(run, s):
    """Step time not covered by any rank's ops: first op of any rank to the last."""
    step = run.steps[s]
    first = min(step[r]["compute"][0]["ts"] for r in step) / 1e6
    last = max(step[r]["compute"][-1]["ts"] + step[r]["compute"][-1]["dur"] for r in step) / 1e6
    return max(0.0, run.metrics[s]["step_seconds"] - (last - first))


def step_spec(run, s, schedule, link, label):
    """The simulator's input for measured step s of `run`."""
    step = run.steps[s]
    ops = {r: ops_of(step, r) for r in step}
    outside = outside_tasks(run, s)

    R = run.plan["micro_batches"] // len(run.attention)

    def dur(rank, kind):
        return [e - b for (k, _, _), (b, e) in ops[rank].items() if k == kind]

    def layer_dur(rank, kind, l):
        return [e - b for (k, layer, _), (b, e) in ops[rank].items() if k == kind and layer == l]

    def slowest_mean(ranks, kind, layer=None):
        """Mean over (layer, micro-batch) of the slowest of `ranks` at that op: the ranks one
        simulator rank stands for wait for each other's rows at every op."""
        keys = {key for r in ranks for key in ops[r] if key[0] == kind and layer in (None, key[1])}
        return mean([max(ops[r][key][1] - ops[r][key][0] for r in ranks if key in ops[r]) for key in keys])

    if schedule == "ep":
        ranks = []
        for r in range(run.world):
            experts = [{"forward": mean(layer_dur(r, "E^F", l)), "backward": mean(layer_dur(r, "E^B", l))}
                       for l in range(1, LAYERS + 1)]
            ranks.append({"kind": f"rank{r}",
                          "attention": {"forward": mean(dur(r, "A^F")), "backward": mean(dur(r, "A^B"))},
                          "experts": experts, "head": mean(dur(r, "H")), "optimizer": outside})
        # Each rank sends the rows of its micro-batch that the other ranks' experts hold.
        rows = max(sum(run.rows(s, l, e) for o, e in run.owners(l).items() if o != r)
                   for l in range(LAYERS) for r in range(run.world))
        return {"label": label, "schedule": "ep", "layers": LAYERS, "micro_batches": R, "link": link,
                "ranks": ranks, "all_to_all": {"bytes": rows * HIDDEN * 4, "peers": max(1, run.world - 1)}}
    attention = run.attention
    experts = [r for r in range(run.world) if r not in attention]
    expert_rank, offloaded, dispatch, combine = [], [], [], []
    for l in range(1, LAYERS + 1):
        expert_rank.append({"forward": slowest_mean(experts, "E^F", l), "backward": slowest_mean(experts, "E^B", l)})
        offloaded.append({"forward": slowest_mean(attention, "E^F", l),
                          "backward": slowest_mean(attention, "E^B", l)})
        # As the link was fitted, from the receiver's side: an expert rank (the busiest) gets one
        # message from each attention rank; an attention rank one from each expert rank.
        owned = [run.owners(l - 1).get(o, []) for o in experts]
        busiest = max(run.rows(s, l - 1, e) for e in owned)
        dispatch.append({"bytes": busiest * len(attention) * HIDDEN * 4, "peers": len(attention)})
        combine.append({"bytes": sum(run.rows(s, l - 1, e) for e in owned) * HIDDEN * 4, "peers": len(experts)})
    a = attention
    return {"label": label, "schedule": schedule, "layers": LAYERS, "micro_batches": R, "link": link,
            "attention": {"forward": slowest_mean(a, "A^F"), "backward": slowest_mean(a, "A^B")},
            "head": slowest_mean(a, "H"),
            "expert_rank": expert_rank, "offloaded_experts": offloaded,
            "dispatch": dispatch, "combine": combine,
            "attention_optimizer": outside, "expert_optimizer": outside}


def simulate(plan_binary, specs, work):
    path = os.path.join(work, "steps.json")
    with open(path, "w") as f:
        json.dump(specs, f, indent=1)
    p = subprocess.run([plan_binary, "simulate", path], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"hetermoe-plan simulate failed:\n{p.stderr}")
    return {r["label"]: r for r in json.loads(p.stdout)}


def order(times):
    return " < ".join(sorted(times, key=times.get))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trainer", required=True)
    ap.add_argument("--plan", required=True, help="the hetermoe-plan binary")
    ap.add_argument("--shapes", default="1x1,1x2", help="attention x expert ranks, comma-separated")
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--keep", help="write the runs under this directory and keep them (without final weights)")
    ap.add_argument("--reuse", action="store_true", help="with --keep: analyse the runs already there")
    args = ap.parse_args()
    trainer, plan_binary = os.path.abspath(args.trainer), os.path.abspath(args.plan)
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]

    with tempfile.TemporaryDirectory(prefix="validate-simulator-") as tmp:
        work = os.path.abspath(args.keep) if args.keep else tmp
        os.makedirs(work, exist_ok=True)
        with open(os.path.join(work, "config.json"), "w") as f:
            json.dump(CONFIG, f)
        tokens = os.path.join(work, "tokens.bin")
        if not os.path.exists(tokens):
            corpus = os.path.join(work, "corpus.txt")
            with open(corpus, "wb") as out:
                for name in ("GPL-3", "GPL-2", "LGPL-2.1", "Apache-2.0"):
                    with open(os.path.join("/usr/share/common-licenses", name), "rb") as f:
                        out.write(f.read())
            subprocess.run([trainer, "prepare-data", "-i", corpus, "-o", tokens], check=True, capture_output=True)
        with open(os.path.join(work, "run.yaml"), "w") as f:
            f.write(RUN.format(steps=args.steps))

        runs = {}
        for m, n in shapes:
            for name, schedule, asym in variants(m, n):
                key = f"{m}x{n}-{name}"
                print(f"  running {key} ...", file=sys.stderr, flush=True)
                path = run_trainer(trainer, work, key, m, n, schedule, asym, args.reuse, args.steps)
                runs[(m, n, name)] = (schedule, Run(path, args.warmup))

        # The link as it was during each run (loopback TCP; its stalls depend on the machine's load),
        # from the pooled sequential runs when a run has too few clean samples.
        pooled = [x for (schedule, run) in runs.values() if schedule == "sequential" for x in transfer_samples(run)]
        links = {}
        for key, (schedule, run) in runs.items():
            samples = transfer_samples(run)
            links[key] = (fit_link(samples), len(samples)) if len(samples) >= 20 else (fit_link(pooled), 0)

        specs = []
        for (m, n, name), (schedule, run) in runs.items():
            for s in run.measured_steps():
                specs.append(step_spec(run, s, schedule, links[(m, n, name)][0], f"{m}x{n} {name} {s}"))
        sims = simulate(plan_binary, specs, work)

        print(f"{args.steps - args.warmup} measured steps per run (after {args.warmup} warm-up), "
              "each simulated from its own trace\n")
        print(f"{'shape':5s} {'schedule':11s} {'measured s':>10s} {'simulated s':>11s} {'error':>7s} "
              f"{'step errors (min..max)':>22s} {'outside tasks':>13s}  link (fitted to)")
        worst = 0.0
        orders = []
        for m, n in shapes:
            measured, simulated = {}, {}
            for name, _, _ in variants(m, n):
                schedule, run = runs[(m, n, name)]
                steps = list(run.measured_steps())
                meas = [run.metrics[s]["step_seconds"] for s in steps]
                sim = [sims[f"{m}x{n} {name} {s}"]["step_seconds"] for s in steps]
                errs = [b / a - 1 for a, b in zip(meas, sim)]
                outside = statistics.median(outside_tasks(run, s) for s in steps)
                measured[name], simulated[name] = statistics.median(meas), statistics.median(sim)
                err = simulated[name] / measured[name] - 1
                worst = max(worst, abs(err))
                link, fitted = links[(m, n, name)]
                bandwidth = (f"{link['bytes_per_second'] / 1e9:.1f} GB/s" if link["bytes_per_second"] < 1e11
                             else "bandwidth unresolved")
                print(f"{m}+{n:<3d} {name:11s} {measured[name]:10.2f} {simulated[name]:11.2f} {err:+7.1%} "
                      f"{min(errs):+10.1%}..{max(errs):+.1%} {outside * 1e3:10.0f} ms  "
                      f"{link['latency_seconds'] * 1e6:.0f} us + {bandwidth} "
                      f"({f'{fitted} waits' if fitted else 'pooled sequential'})")
            three = ("zebra", "sequential", "ep")
            same3 = order({k: measured[k] for k in three}) == order({k: simulated[k] for k in three})
            same4 = order(measured) == order(simulated)
            orders.append((f"{m}+{n}", order(measured), order(simulated), same3, same4))
        print()
        for shape, meas_order, sim_order, same3, same4 in orders:
            print(f"{shape}: measured  {meas_order}\n{'':{len(shape) + 2}s}simulated {sim_order}\n"
                  f"{'':{len(shape) + 2}s}zebra/sequential/ep in the measured order: {'yes' if same3 else 'NO'}; "
                  f"all four: {'yes' if same4 else 'no'}")
        print(f"\nlargest error of a median: {worst:.1%} (target: within 15%)")


if __name__ == "__main__":
    main()
