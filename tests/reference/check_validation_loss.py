"""hetermoe-trainer's validation loss is PyTorch's cross-entropy on the same sequences.

Runs the golden fixture's run (make_golden.py) with a validation token file
written here (seeded random ids), `train.eval_every 2`, `train.eval_batches 2`
and a checkpoint every 2 steps: the trainer evaluates after steps 2, 4 and 5
(the last). For each, the PyTorch reference loads that step's checkpoint and
computes the mean cross-entropy over the same sequences (the first
eval_batches global batches of the file, each split into the run's
micro-batches), which must equal the trainer's `val_loss` (rtol 1e-5). The
same run as 1 attention + 1 expert rank (zebra, local processes) must give
the same `val_loss` values, and training must be what it is without
evaluation (the golden replay's losses).

The run file's data.tokenizer is checked on the way: a SentencePiece model
with more pieces than the model's vocab_size is refused naming both, and one
that fits comes back in every checkpoint as tokenizer.model, byte for byte.

    /usr/bin/python3 tests/reference/check_validation_loss.py \\
        --fixture build/golden --trainer build/trainer/hetermoe-trainer --work /tmp/val
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mixtral_torch as mt  # noqa: E402

RTOL = 1e-5
EVAL_EVERY, EVAL_BATCHES = 2, 2


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def trainer_command(trainer, fixture, out_dir, extra):
    return [trainer, "--config", os.path.join(fixture, "run.yaml"), "--no-progress",
            "--set", f"output.dir={out_dir}", "--set", "output.checkpoint_every=2", *extra]


def run(trainer, fixture, out_dir, valid, extra=()):
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    cmd = trainer_command(trainer, fixture, out_dir,
                          ["--set", f"data.valid={valid}", "--set", f"train.eval_every={EVAL_EVERY}",
                           "--set", f"train.eval_batches={EVAL_BATCHES}", *extra])
    print("running:", " ".join(cmd), flush=True)
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        fail(f"hetermoe-trainer exited with {result.returncode}:\n{result.stderr}")
    with open(os.path.join(out_dir, "metrics.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {row["step"]: row["val_loss"] for row in rows if "val_loss" in row}, [row["loss"] for row in rows]


def torch_val_loss(config, checkpoint, valid_tokens, global_batch, seq_len, micro_batches):
    model = mt.MixtralForCausalLM(config)
    weights, _ = mt.read_safetensors(os.path.join(checkpoint, "model.safetensors"))
    model.load_weights(weights)
    reader = mt.BatchReader(valid_tokens, global_batch, seq_len)
    per = global_batch // micro_batches
    total = 0.0
    with torch.no_grad():
        for _ in range(EVAL_BATCHES):
            inputs, targets = reader.next()
            for j in range(micro_batches):
                _, ce, _, _ = mt.micro_batch_loss(model, inputs[j * per:(j + 1) * per], targets[j * per:(j + 1) * per])
                total += ce.item() / micro_batches
    return total / EVAL_BATCHES


def check_tokenizer(trainer, fixture, work, config):
    """data.tokenizer: refused when wider than the model, else copied into checkpoints."""
    corpus = os.path.join(work, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as f:
        f.write("the validation loss is the cross-entropy on held-out text\n" * 20)
    tokenizer = os.path.join(work, "sp.model")
    subprocess.run([trainer, "train-tokenizer", "--input", corpus, "--output", tokenizer, "--vocab-size", "300"],
                   check=True, capture_output=True)
    with open(tokenizer, "rb") as f:
        tokenizer_bytes = f.read()
    problems = []
    out = os.path.join(work, "tokenizer_too_wide")
    result = subprocess.run(trainer_command(trainer, fixture, out, ["--set", f"data.tokenizer={tokenizer}"]),
                            capture_output=True, text=True)
    want = f"pieces exceed the model's vocab_size {config.vocab_size}"
    print(f"a tokenizer wider than vocab_size {config.vocab_size}: exit {result.returncode}, "
          f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ''}")
    if result.returncode != 1 or want not in result.stderr or tokenizer not in result.stderr:
        problems.append(f"a tokenizer wider than the model: exit {result.returncode}, stderr {result.stderr!r}")
    # A model wide enough (random init): the checkpoints carry the tokenizer.
    wide = json.load(open(os.path.join(fixture, "config.json"), encoding="utf-8"))
    wide["vocab_size"] = 320
    wide_config = os.path.join(work, "config_320.json")
    with open(wide_config, "w", encoding="utf-8") as f:
        json.dump(wide, f)
    out = os.path.join(work, "tokenizer_copied")
    if os.path.exists(out):
        shutil.rmtree(out)
    result = subprocess.run(trainer_command(trainer, fixture, out,
                                            ["--set", f"data.tokenizer={tokenizer}", "--set",
                                             f"model.config={wide_config}", "--set", "model.init=",
                                             "--set", "train.steps=3"]), capture_output=True, text=True)
    if result.returncode != 0:
        return problems + [f"the run with a fitting tokenizer failed: {result.stderr}"]
    for folder in ("checkpoint-2", "final"):
        path = os.path.join(out, folder, "tokenizer.model")
        if not os.path.exists(path) or open(path, "rb").read() != tokenizer_bytes:
            problems.append(f"{path} is not data.tokenizer's bytes")
    print("data.tokenizer: checkpoint-2/ and final/ hold it as tokenizer.model")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixture", required=True)
    parser.add_argument("--trainer", required=True)
    parser.add_argument("--work", required=True)
    args = parser.parse_args()
    fixture, work = os.path.abspath(args.fixture), os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    mt.set_deterministic(threads=1, seed=0)

    config = mt.load_config(os.path.join(fixture, "config.json"))
    import yaml  # python3-yaml, as the other fixtures' checks
    with open(os.path.join(fixture, "run.yaml"), encoding="utf-8") as f:
        train = yaml.safe_load(f)["train"]
    G, T, R, steps = train["global_batch"], train["seq_len"], train["micro_batches"], train["steps"]

    valid = os.path.join(work, "valid.bin")
    gen = torch.Generator().manual_seed(7)
    mt.write_token_file(valid, torch.randint(0, config.vocab_size, (EVAL_BATCHES * G * T + 1,), generator=gen).numpy())
    valid_tokens = mt.read_token_file(valid, config.vocab_size)
    single, train_losses = run(args.trainer, fixture, os.path.join(work, "single"), valid)
    expected_steps = sorted({s for s in range(EVAL_EVERY, steps + 1, EVAL_EVERY)} | {steps})
    if sorted(single) != expected_steps:
        fail(f"val_loss at steps {sorted(single)}, expected {expected_steps}")
    problems = []
    print(f"{'step':>4} {'trainer':>12} {'torch':>12} {'rel.err':>9}")
    for step in expected_steps:
        checkpoint = os.path.join(work, "single", "final" if step == steps else f"checkpoint-{step}")
        want = torch_val_loss(config, checkpoint, valid_tokens, G, T, R)
        rel = abs(single[step] - want) / abs(want)
        print(f"{step:>4} {single[step]:>12.8f} {want:>12.8f} {rel:>9.2e}")
        if not rel <= RTOL:
            problems.append(f"step {step}: val_loss {single[step]!r}, torch {want!r} (rel.err {rel:.2e})")

    zebra, _ = run(args.trainer, fixture, os.path.join(work, "zebra"), valid,
                ["--set", "parallel={attention_ranks: 1, expert_ranks: 1, launch: local}"])
    for step in expected_steps:
        rel = abs(zebra.get(step, float("nan")) - single[step]) / abs(single[step])
        print(f"1+1 zebra step {step}: val_loss {zebra.get(step)} (rel.err {rel:.2e} to one process)")
        if not rel <= RTOL:
            problems.append(f"1+1 zebra step {step}: val_loss {zebra.get(step)!r}, one process {single[step]!r}")
    # Evaluating leaves training as it was: the losses are the golden replay's.
    with open(os.path.join(fixture, "train_golden.json"), encoding="utf-8") as f:
        golden = [row["loss"] for row in json.load(f)]
    worst = max(abs(a - b) / abs(b) for a, b in zip(train_losses, golden))
    print(f"training losses with evaluation vs the PyTorch replay without: max rel.err {worst:.2e}")
    if len(train_losses) != len(golden) or not worst <= 1e-4:
        problems.append(f"training changed by evaluation: {train_losses} vs {golden}")
    problems += check_tokenizer(args.trainer, fixture, work, config)
    if problems:
        fail("; ".join(problems))
    print("OK: val_loss equals PyTorch's cross-entropy on the validation sequences, in one process and 1+1 zebra")


if __name__ == "__main__":
    main()
