#!/usr/bin/python3
"""HierMoE's dedup depth (parallel.dedup off | rank | node | auto) on emulated
links, all variants measured in the same run.

Two attention ranks and four expert ranks (processes) on three "nodes" of
two ranks (parallel.ranks_per_node 2): the attention ranks on node 0, the
expert ranks on nodes 1 and 2, 4 of the 8 experts each, top-4. The links
between nodes are slow and those inside a node fast (emulate.links: the
sender waits latency + bytes / bandwidth per message), once with a slow
inter-node link and once with equal links. Prints per variant: tokens/s
(median after warm-up) and its ratio to rank level, rows sent across nodes
per routed row, rows relayed inside the nodes, the depth auto chose, and
the final loss (the same training in every variant).

    /usr/bin/python3 bench/bench_dedup_depth.py --trainer build/trainer/hetermoe-trainer [--steps 8]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_zebra import prepare_work  # noqa: E402

CONFIG = {
    "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
    "vocab_size": 256, "hidden_size": 256, "intermediate_size": 256,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "num_local_experts": 8, "num_experts_per_tok": 4, "max_position_embeddings": 1024,
    "rope_theta": 10000.0, "router_aux_loss_coef": 0.01, "tie_word_embeddings": False,
}

RUN = """model: {{config: config.json}}
data: {{train: tokens.bin}}
train: {{steps: {steps}, global_batch: 16, micro_batches: 8, seq_len: 128, lr: 3.0e-3, threads: 1}}
parallel: {{attention_ranks: 2, expert_ranks: 4, schedule: zebra, asym_ea: off, timeout_seconds: 120,
           ranks_per_node: 2}}
output: {{dir: out}}
"""

LINKS = [("slow between nodes", "{inter_node_gbps: 0.4, intra_node_gbps: 20, latency_us: 50}"),
         ("equal links", "{inter_node_gbps: 4, intra_node_gbps: 4, latency_us: 50}")]
DEPTHS = ["off", "rank", "node", "auto"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trainer", required=True)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    trainer = os.path.abspath(args.trainer)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    with tempfile.TemporaryDirectory(prefix="bench-depth-") as work:
        run_file = prepare_work(trainer, work, CONFIG, RUN.format(steps=args.steps))
        for title, links in LINKS:
            results = {}
            for depth in DEPTHS:
                out = os.path.join(work, f"out-{depth}")
                cmd = [trainer, "-c", run_file, "--no-progress", "--set", f"output.dir={out}",
                       "--set", f"parallel.dedup={depth}", "--set", f"emulate.links={links}"]
                p = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if p.returncode != 0:
                    sys.exit(f"{depth} failed:\n{p.stderr}")
                with open(os.path.join(out, "metrics.jsonl")) as f:
                    steps = [json.loads(l) for l in f]
                measured = steps[args.warmup:]
                routed = sum(sum(s["dispatch_rows"]) for s in measured)
                results[depth] = {
                    "tps": statistics.median(s["tokens_per_second"] for s in measured),
                    "across": sum(sum(s["dispatch_rows_inter_node"]) for s in measured) / routed,
                    "relayed": sum(sum(s["dispatch_rows_relayed"]) for s in measured) / routed,
                    "depth": "/".join(sorted({d for s in measured for d in s["dedup_depth"]})),
                    "loss": steps[-1]["loss"],
                }
                print(f"  {title}, {depth}: {results[depth]['tps']:.0f} tok/s", file=sys.stderr)
            base = results["rank"]["tps"]
            print(f"\n{title} (emulate.links {links}), 2 attention + 4 expert ranks on 3 nodes, 8 experts top-4, "
                  f"{args.steps - args.warmup} measured steps\n")
            print(f"{'dedup':6s} {'tokens/s':>9s} {'vs rank':>8s} {'across nodes/routed':>20s} "
                  f"{'relayed/routed':>15s} {'depth run':>10s} {'final loss':>11s}")
            for depth, r in results.items():
                print(f"{depth:6s} {r['tps']:9.0f} {r['tps'] / base:7.2f}x {r['across']:20.3f} {r['relayed']:15.3f} "
                      f"{r['depth']:>10s} {r['loss']:11.4f}")


if __name__ == "__main__":
    main()
