"""Training throughput of hetermoe-trainer vs PyTorch eager on the same work.

For each model size the script writes a random-init Mixtral checkpoint, a
random token file and a run.yaml into a temporary directory, then

  1. runs hetermoe-trainer for --steps optimizer steps and reads the
     tokens_per_second of each step after the first --warmup ones from
     out/metrics.jsonl;
  2. runs the same steps in PyTorch eager (tests/reference/mixtral_torch.py:
     forward + backward + clip_grad_norm_ + AdamW, torch.set_num_threads(threads))
     on the same weights and batches, timing the steps after the warm-up;

and prints tokens/s of both and the ratio trainer / torch. Both sides use the
same thread count, model, global batch (one micro-batch), sequence length,
optimizer settings and data; both see an environment without
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE and with OMP_NUM_THREADS and
OPENBLAS_NUM_THREADS set to --threads (the script re-executes itself with
that environment before importing torch). The step-1 losses of both sides
are printed too, as a check that they trained the same thing.

Sizes:
  tiny  the golden-test model (V=96, d=32, f=48, L=2, H=4, KV=2, E=4, top-2), B=8,  T=64
  50m   V=256, d=512, f=1024, L=4, H=8, KV=4, E=8, top-2 (~54M parameters),   B=8,  T=256

Usage (from the repository root, after building):

    /usr/bin/python3 bench/bench_vs_torch.py --trainer build/trainer/hetermoe-trainer \\
        [--threads 2] [--steps 6] [--warmup 2] [--sizes tiny,50m] [--keep DIR]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE_DIR = os.path.join(HERE, "..", "tests", "reference")

# Environment variables that would tune OpenBLAS differently from its defaults
# for one side; removed for both.
OPENBLAS_TUNING_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
REEXEC_MARKER = "HETERMOE_BENCH_CLEAN_ENV"

SIZES = {
    "tiny": dict(
        config=dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                    num_experts_per_tok=2, max_position_embeddings=64, rope_theta=10000.0,
                    rms_norm_eps=1e-5, router_aux_loss_coef=0.02, tie_word_embeddings=False),
        batch=8, seq_len=64),
    "50m": dict(
        config=dict(vocab_size=256, hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                    num_attention_heads=8, num_key_value_heads=4, num_local_experts=8,
                    num_experts_per_tok=2, max_position_embeddings=256, rope_theta=10000.0,
                    rms_norm_eps=1e-5, router_aux_loss_coef=0.01, tie_word_embeddings=False),
        batch=8, seq_len=256),
}

# Optimizer settings shared by both sides (constant schedule).
OPTIM = dict(lr=3.0e-4, betas=[0.9, 0.95], eps=1.0e-8, weight_decay=0.1, grad_clip=1.0)

RUN_YAML = """\
# Written by bench/bench_vs_torch.py.
model: {{config: config.json, init: model.safetensors}}
data: {{train: tokens.bin}}
train: {{steps: {steps}, global_batch: {batch}, micro_batches: 1, seq_len: {seq_len}, \
lr: {lr}, schedule: constant, warmup_steps: 0, min_lr: 0.0, betas: [{b1}, {b2}], eps: {eps}, \
weight_decay: {weight_decay}, grad_clip: {grad_clip}, seed: 1234, threads: {threads}}}
output: {{dir: out, checkpoint_every: 0}}
"""


def yaml_float(x: float) -> str:
    """A float YAML 1.1 parsers read as a float (1e-08 would be a string; 1.0e-08 is not)."""
    text = repr(float(x))
    if "e" in text and "." not in text.split("e")[0]:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return text


def clean_env(threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in OPENBLAS_TUNING_VARS}
    env["OMP_NUM_THREADS"] = str(threads)
    env["OPENBLAS_NUM_THREADS"] = str(threads)
    return env


def ensure_clean_env(threads: int) -> None:
    """Re-executes this script once with the benchmark environment.

    OpenBLAS and OpenMP read their variables when the library loads, so
    they must be right before torch is imported.
    """
    wanted = clean_env(threads)
    if all(os.environ.get(k) == wanted.get(k) for k in
           OPENBLAS_TUNING_VARS + ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")):
        return
    if os.environ.get(REEXEC_MARKER):
        sys.exit("error: could not set up the benchmark environment")
    wanted[REEXEC_MARKER] = "1"
    os.execve(sys.executable, [sys.executable] + sys.argv, wanted)


def write_inputs(mt, torch, size: dict, steps: int, threads: int, work: str) -> dict:
    """config.json, model.safetensors, tokens.bin and run.yaml in `work`."""
    config = mt.config_from_dict(size["config"])
    mt.save_config(config, os.path.join(work, "config.json"))
    model = mt.MixtralForCausalLM(config)
    mt.init_weights(model, seed=0, std=config.initializer_range, norm_std=0.0)
    weights = model.weights()
    mt.write_safetensors(os.path.join(work, "model.safetensors"), weights)
    count = (steps + 1) * size["batch"] * size["seq_len"] + 1
    tokens = torch.randint(0, config.vocab_size, (count,), generator=torch.Generator().manual_seed(1)).numpy()
    mt.write_token_file(os.path.join(work, "tokens.bin"), tokens)
    with open(os.path.join(work, "run.yaml"), "w", encoding="utf-8") as f:
        f.write(RUN_YAML.format(steps=steps, batch=size["batch"], seq_len=size["seq_len"], threads=threads,
                                b1=yaml_float(OPTIM["betas"][0]), b2=yaml_float(OPTIM["betas"][1]),
                                **{k: yaml_float(v) for k, v in OPTIM.items() if k != "betas"}))
    params = sum(w.numel() for w in weights.values())
    return dict(config=config, weights=weights, tokens=tokens, params=params)


def run_trainer(trainer: str, work: str, warmup: int, env: dict) -> dict:
    """Runs hetermoe-trainer; returns post-warm-up tokens/s and the step-1 loss."""
    log_path = os.path.join(work, "trainer.log")
    with open(log_path, "w", encoding="utf-8") as log:
        result = subprocess.run([trainer, "--config", os.path.join(work, "run.yaml")],
                                cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        with open(log_path, "r", encoding="utf-8", errors="replace") as log:
            tail = log.read()[-3000:]
        sys.exit(f"error: hetermoe-trainer exited with {result.returncode}; log tail:\n{tail}")
    with open(os.path.join(work, "out", "metrics.jsonl"), "r", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    timed = [r for r in rows if r["step"] > warmup]
    if not timed:
        sys.exit(f"error: the trainer logged {len(rows)} steps, none after the {warmup} warm-up steps")
    # Aggregate over steps as total tokens / total time (harmonic mean of rates).
    seconds_per_token = sum(1.0 / r["tokens_per_second"] for r in timed) / len(timed)
    return dict(tokens_per_second=1.0 / seconds_per_token, loss1=rows[0]["loss"])


def run_torch(mt, torch, inputs: dict, size: dict, steps: int, warmup: int, threads: int) -> dict:
    """The same training steps in PyTorch eager; returns post-warm-up tokens/s and the step-1 loss."""
    torch.set_num_threads(threads)
    model = mt.MixtralForCausalLM(inputs["config"])
    model.load_weights(inputs["weights"])
    optimizer = mt.make_optimizer(model, OPTIM["lr"], OPTIM["betas"], OPTIM["eps"], OPTIM["weight_decay"])
    reader = mt.BatchReader(inputs["tokens"], size["batch"], size["seq_len"])
    times, loss1 = [], None
    for step in range(1, steps + 1):
        x, y = reader.next()
        start = time.perf_counter()
        metrics = mt.train_step(model, optimizer, x, y, 1, OPTIM["lr"], OPTIM["grad_clip"])
        times.append(time.perf_counter() - start)
        loss1 = metrics["loss"] if step == 1 else loss1
    timed = times[warmup:]
    return dict(tokens_per_second=size["batch"] * size["seq_len"] * len(timed) / sum(timed), loss1=loss1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trainer", required=True, help="path of the hetermoe-trainer binary")
    parser.add_argument("--threads", type=int, default=2, help="threads for both sides (default 2)")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run (default 6)")
    parser.add_argument("--warmup", type=int, default=2, help="leading steps not timed (default 2)")
    parser.add_argument("--sizes", default="tiny,50m", help=f"comma-separated, from {sorted(SIZES)}")
    parser.add_argument("--keep", help="write the runs under this directory and keep them")
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")
    sizes = args.sizes.split(",")
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown sizes {unknown}")
    trainer = os.path.abspath(args.trainer)
    if not os.access(trainer, os.X_OK):
        parser.error(f"{trainer} is not an executable")

    ensure_clean_env(args.threads)
    sys.path.insert(0, REFERENCE_DIR)
    import mixtral_torch as mt  # after the environment is final: loads torch and OpenBLAS
    torch = mt.torch

    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"note: load average {load:.1f} -- other work on this machine makes the numbers noisy", flush=True)
    root = args.keep or tempfile.mkdtemp(prefix="hetermoe-bench-")
    results = []
    try:
        for name in sizes:
            size = SIZES[name]
            work = os.path.join(root, name)
            os.makedirs(work, exist_ok=True)
            shutil.rmtree(os.path.join(work, "out"), ignore_errors=True)
            inputs = write_inputs(mt, torch, size, args.steps, args.threads, work)
            print(f"[{name}] {inputs['params'] / 1e6:.2f}M parameters, B={size['batch']} T={size['seq_len']}, "
                  f"{args.steps} steps ({args.warmup} warm-up), {args.threads} threads", flush=True)
            ours = run_trainer(trainer, work, args.warmup, clean_env(args.threads))
            print(f"[{name}] hetermoe-trainer {ours['tokens_per_second']:.0f} tok/s", flush=True)
            ref = run_torch(mt, torch, inputs, size, args.steps, args.warmup, args.threads)
            print(f"[{name}] torch            {ref['tokens_per_second']:.0f} tok/s", flush=True)
            if abs(ours["loss1"] - ref["loss1"]) > 1e-3 * abs(ref["loss1"]):
                print(f"[{name}] WARNING: step-1 losses differ: trainer {ours['loss1']:.6f}, "
                      f"torch {ref['loss1']:.6f}", flush=True)
            results.append((name, inputs["params"], size, ours, ref))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    print()
    print(f"threads={args.threads} steps={args.steps} warmup={args.warmup} torch={torch.__version__}")
    header = f"{'size':<6} {'params':>8} {'B':>3} {'T':>5} {'trainer tok/s':>14} {'torch tok/s':>12} " \
             f"{'ratio':>6} {'loss1 trainer':>14} {'loss1 torch':>12}"
    print(header)
    print("-" * len(header))
    for name, params, size, ours, ref in results:
        ratio = ours["tokens_per_second"] / ref["tokens_per_second"]
        print(f"{name:<6} {params / 1e6:>7.2f}M {size['batch']:>3} {size['seq_len']:>5} "
              f"{ours['tokens_per_second']:>14.0f} {ref['tokens_per_second']:>12.0f} {ratio:>6.2f} "
              f"{ours['loss1']:>14.6f} {ref['loss1']:>12.6f}")
    print("ratio = hetermoe-trainer tokens/s / PyTorch eager tokens/s (higher is better for the trainer)")


if __name__ == "__main__":
    main()
