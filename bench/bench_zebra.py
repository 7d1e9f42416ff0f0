#!/usr/bin/python3
"""Zebra parallelism + Asym-EA vs DistEP (sequential) vs expert parallelism,
in emulation of the HeterMoE paper's regime, measured in the same run.

One attention rank and one expert rank (each a process with one core); the
expert rank is slowed to emulate an older GPU: 0.8x as fast on experts
(factor 1.25) and 3.7x slower on attention (the A40 vs V100 gap at long
sequences). Every factor is multiplied by 3 so that most of each op's time is
emulation sleep: two busy ranks plus the machine's other work would otherwise
compete for the two cores and the overlap zebra creates would be lost to CPU
contention, which real GPUs do not have. Schedules:
  zebra+asym  zebra with Asym-EA auto (profiled at start-up)
  zebra       zebra, no experts moved
  sequential  DistEP: the same split, no overlap
  ep          both ranks run attention and hold experts (classic EP)
  zebra, no dedup  zebra without HierMoE's token deduplication
Prints tokens/s (median of the steps after warm-up), the ratios against
zebra+asym, the idle (bubble) share per role, and the bytes the two ranks
exchanged per step, and the model state (parameters, gradients, AdamW
moments) each rank holds. Loopback TCP is fast next to the emulated compute, so
deduplication shows in the bytes here, not in tokens/s.

    /usr/bin/python3 bench/bench_zebra.py --trainer build/trainer/hetermoe-trainer [--steps 8]

With --device cuda (a machine with two GPUs, one per rank; bench/run_gpu.sh)
nothing is emulated: the ranks run on their GPUs with precision auto, rows
move over NCCL (parallel.transport auto), and one more variant moves them
through the host over Gloo, so the transport's gain prints as a ratio too.
"""
import argparse
import json
import os
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

RUN = """model: {{config: config.json}}
data: {{train: tokens.bin}}
train: {{steps: {steps}, global_batch: 16, micro_batches: 4, seq_len: 256, lr: 1.0e-3, threads: 1}}
parallel: {{attention_ranks: 1, expert_ranks: 1, schedule: zebra, timeout_seconds: 120}}
emulate:                       # x3 on everything keeps the ratios and makes the run
  attention_rank: {{attention: 3.0, experts: 3.0}}     # mostly sleep, so two ranks on
  expert_rank: {{attention: 11.1, experts: 3.75}}      # two cores do not fight for CPU
output: {{dir: out}}
"""

VARIANTS = [
    ("zebra+asym", ["parallel.schedule=zebra", "parallel.asym_ea=auto"]),
    ("zebra", ["parallel.schedule=zebra", "parallel.asym_ea=off"]),
    ("sequential", ["parallel.schedule=sequential", "parallel.asym_ea=off"]),
    ("ep", ["parallel.schedule=ep", "parallel.asym_ea=off"]),
    ("zebra, no dedup", ["parallel.schedule=zebra", "parallel.asym_ea=off", "parallel.dedup=false"]),
]


def prepare_work(trainer, work, config, run_text):
    """config.json, the licences' text as tokens.bin and run.yaml in `work`;
    returns run.yaml's path."""
    with open(os.path.join(work, "config.json"), "w") as f:
        json.dump(config, f)
    corpus = os.path.join(work, "corpus.txt")
    with open(corpus, "wb") as out:
        for name in ("GPL-3", "GPL-2", "LGPL-2.1", "Apache-2.0"):
            with open(os.path.join("/usr/share/common-licenses", name), "rb") as f:
                out.write(f.read())
    subprocess.run([trainer, "prepare-data", "-i", corpus, "-o", os.path.join(work, "tokens.bin")],
                   check=True, capture_output=True)
    run_file = os.path.join(work, "run.yaml")
    with open(run_file, "w") as f:
        f.write(run_text)
    return run_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trainer", required=True)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: the ranks on real GPUs, no emulation, NCCL vs Gloo")
    args = ap.parse_args()
    variants = list(VARIANTS)
    common = []
    if args.device == "cuda":
        common = ["train.device=cuda", "train.precision=auto", "train.threads=0",
                  "emulate.attention_rank={attention: 1.0, experts: 1.0}",
                  "emulate.expert_rank={attention: 1.0, experts: 1.0}"]
        variants.append(("zebra+asym, gloo", ["parallel.schedule=zebra", "parallel.asym_ea=auto",
                                              "parallel.transport=gloo"]))
    trainer = os.path.abspath(args.trainer)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    with tempfile.TemporaryDirectory(prefix="bench-zebra-") as work:
        run_file = prepare_work(trainer, work, CONFIG, RUN.format(steps=args.steps))
        results = {}
        for name, sets in variants:
            out = os.path.join(work, "out-" + name)
            cmd = [trainer, "-c", run_file, "--no-progress", "--set", f"output.dir={out}"]
            for s in common + sets:
                cmd += ["--set", s]
            p = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if p.returncode != 0:
                sys.exit(f"{name} failed:\n{p.stderr}")
            moved = [l for l in p.stderr.splitlines() if l.startswith("asym_ea auto")]
            with open(os.path.join(out, "metrics.jsonl")) as f:
                steps = [json.loads(l) for l in f][args.warmup:]
            results[name] = {
                "tps": statistics.median(s["tokens_per_second"] for s in steps),
                "bubble_a": statistics.median(s["bubble_attention"] for s in steps),
                "bubble_e": statistics.median(s["bubble_expert"] for s in steps),
                "bytes": statistics.median(s["exchange_bytes"] for s in steps),
                "note": moved[0].split("->")[-1].strip() if moved else "",
                "state": steps[-1].get("rank_state_bytes", []),
            }
            print(f"  {name:16s} {results[name]['tps']:8.0f} tok/s", file=sys.stderr)
        base = results["zebra+asym"]["tps"]
        regime = ("on two GPUs, nothing emulated" if args.device == "cuda" else
                  "expert rank: attention x3.7 slower, experts x1.25")
        print(f"\n1 attention rank + 1 expert rank ({regime}), {args.steps - args.warmup} measured steps each\n")
        print(f"{'schedule':16s} {'tokens/s':>9s} {'vs zebra+asym':>14s} {'idle attn':>10s} {'idle expert':>12s} "
              f"{'MB/step':>8s} {'state MB per rank':>18s}  note")
        for name, r in results.items():
            state = "/".join(f"{b / 1e6:.1f}" for b in r["state"])
            print(f"{name:16s} {r['tps']:9.0f} {r['tps'] / base:13.2f}x {r['bubble_a']:9.0%} {r['bubble_e']:11.0%} "
                  f"{r['bytes'] / 1e6:8.2f} {state:>18s}  {r['note']}")
        print(f"\nzebra+asym / sequential = {base / results['sequential']['tps']:.2f}x "
              f"(paper: DistEP reaches 55% of HeterMoE, i.e. 1.8x)")
        print(f"zebra+asym / zebra      = {base / results['zebra']['tps']:.2f}x (paper: Asym-EA 1.14-1.20x)")
        print(f"zebra+asym / ep         = {base / results['ep']['tps']:.2f}x (paper: 1.67x avg at 16K vs EP)")
        print(f"zebra / zebra, no dedup = {results['zebra']['tps'] / results['zebra, no dedup']['tps']:.2f}x tokens/s, "
              f"{1 - results['zebra']['bytes'] / results['zebra, no dedup']['bytes']:.1%} fewer bytes per step")
        if "zebra+asym, gloo" in results:
            g = results["zebra+asym, gloo"]
            print(f"NCCL / Gloo (zebra+asym)  = {base / g['tps']:.2f}x tokens/s, "
                  f"{results['zebra+asym']['bytes'] / g['bytes']:.2f}x the bytes per step")


if __name__ == "__main__":
    main()
