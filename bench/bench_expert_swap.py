#!/usr/bin/python3
"""HierMoE's expert swap in the engine, with and without, measured in the same run.

One attention rank and three expert ranks (processes; the expert ranks
slowed x3.75 on experts, the attention rank x3 on everything, as in
bench_zebra.py, so that most of each op's time is emulation sleep and four
ranks on two cores do not fight for the CPU). A Mixtral-style model with 8
experts, top-2, 4 layers, on the licences' text: the router is what training
makes of it, so some experts are hotter than others. Variants:
  no swap         the placement as planned (experts 0-2, 3-5, 6-7)
  swap every step parallel.swap_every 1
  swap every 4    parallel.swap_every 4
Prints tokens/s (median after warm-up), the routed load's max / mean over
the expert ranks (mean over layers and measured steps), swaps made, and the
decision + move time per swap call against the step time.

With --plan, also the planner's forecast of the same (hetermoe-plan swap on
the no-swap run's routing counts): the max / mean load it predicts per
variant, beside the measured one.

    /usr/bin/python3 bench/bench_expert_swap.py --trainer build/trainer/hetermoe-trainer \
        [--plan build/planner/hetermoe-plan] [--steps 12]
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_zebra import prepare_work  # noqa: E402

CONFIG = {
    "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
    "vocab_size": 256, "hidden_size": 256, "intermediate_size": 512,
    "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
    "num_local_experts": 8, "num_experts_per_tok": 2, "max_position_embeddings": 1024,
    "rope_theta": 10000.0, "router_aux_loss_coef": 0.0, "tie_word_embeddings": False,
}

RUN = """model: {{config: config.json}}
data: {{train: tokens.bin}}
train: {{steps: {steps}, global_batch: 16, micro_batches: 4, seq_len: 256, lr: 3.0e-3, threads: 1}}
parallel: {{attention_ranks: 1, expert_ranks: 3, schedule: zebra, asym_ea: off, timeout_seconds: 120}}
emulate:
  attention_rank: {{attention: 3.0, experts: 3.0}}
  expert_rank: {{attention: 11.1, experts: 3.75}}
output: {{dir: out}}
"""

VARIANTS = [("no swap", []), ("swap every step", ["parallel.swap_every=1"]),
            ("swap every 4", ["parallel.swap_every=4"])]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trainer", required=True)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--plan", help="hetermoe-plan: print its swap forecast beside the measured loads")
    args = ap.parse_args()
    trainer = os.path.abspath(args.trainer)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    with tempfile.TemporaryDirectory(prefix="bench-swap-") as work:
        run_file = prepare_work(trainer, work, CONFIG, RUN.format(steps=args.steps))
        results = {}
        for name, sets in VARIANTS:
            out = os.path.join(work, "out-" + name.replace(" ", "-"))
            cmd = [trainer, "-c", run_file, "--no-progress", "--set", f"output.dir={out}"]
            for s in sets:
                cmd += ["--set", s]
            p = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if p.returncode != 0:
                sys.exit(f"{name} failed:\n{p.stderr}")
            with open(os.path.join(out, "metrics.jsonl")) as f:
                steps = [json.loads(l) for l in f]
            measured = steps[args.warmup:]
            swap_ms = [float(x) for x in re.findall(r"expert swap: decided.* in ([0-9.]+) ms", p.stderr)]
            results[name] = {
                "tps": statistics.median(s["tokens_per_second"] for s in measured),
                "step": statistics.median(s["step_seconds"] for s in measured),
                "imbalance": statistics.mean(x for s in measured for x in s["expert_load_imbalance"]),
                "swaps": steps[-1].get("expert_swaps", 0),
                "swap_ms": statistics.median(swap_ms) if swap_ms else 0.0,
                "loss": steps[-1]["loss"],
                "metrics": os.path.join(out, "metrics.jsonl"),
            }
            print(f"  {name:16s} {results[name]['tps']:8.0f} tok/s", file=sys.stderr)
        base = results["no swap"]
        print(f"\n1 attention + 3 expert ranks (emulated: expert rank experts x1.25, attention x3.7, all x3), "
              f"{args.steps - args.warmup} measured steps each\n")
        print(f"{'variant':16s} {'tokens/s':>9s} {'vs no swap':>11s} {'max/mean load':>14s} {'swaps':>6s} "
              f"{'ms per swap call':>17s} {'of a step':>10s} {'final loss':>11s}")
        for name, r in results.items():
            share = r["swap_ms"] / 1e3 / r["step"] if r["swap_ms"] else 0.0
            print(f"{name:16s} {r['tps']:9.0f} {r['tps'] / base['tps']:10.2f}x {r['imbalance']:14.3f} {r['swaps']:6d} "
                  f"{r['swap_ms']:17.2f} {share:9.1%} {r['loss']:11.4f}")
        if args.plan:
            print("\nthe planner's forecast from the no-swap run's routing counts (hetermoe-plan swap), "
                  "max/mean load over the same steps:")
            for name, sets in VARIANTS:
                every = next((int(x.split("=")[1]) for x in sets if x.startswith("parallel.swap_every=")), 0)
                p = subprocess.run([args.plan, "swap", base["metrics"], "--top-k", str(CONFIG["num_experts_per_tok"]),
                                    "--expert-ranks", "3", "--swap-every", str(every), "--json"],
                                   capture_output=True, text=True, check=True)
                steps = json.loads(p.stdout)["steps"][args.warmup:]
                forecast = statistics.mean(x for s in steps for x in s["swapped"]["expert_load_imbalance"])
                print(f"{name:16s} forecast {forecast:.3f}, measured {results[name]['imbalance']:.3f}")


if __name__ == "__main__":
    main()
