"""End-to-end test: hetermoe-trainer trains exactly like PyTorch.

Runs the C++ trainer on the golden fixture's run.yaml (written by
make_golden.py) and compares what it writes with the PyTorch replay of the
same run:

  WORK/out/metrics.jsonl               vs FIXTURE/train_golden.json
      step and lr exactly (rtol 1e-6); loss, ce_loss, aux_loss, grad_norm
      with rtol 1e-4; tokens_per_second must be present and positive
  WORK/out/final/model.safetensors     vs FIXTURE/train_final.safetensors
      every tensor, |trainer - torch| <= 1e-5 + 1e-4 * |torch|

Usage:

    /usr/bin/python3 tests/reference/check_training_run.py \\
        --fixture build/golden --trainer build/trainer/hetermoe-trainer --work /tmp/check

Exits 0 when everything matches, 1 with a message naming the first
mismatching step/metric or the worst tensor otherwise. WORK/out is deleted
before the run so stale results can never pass.
"""

import argparse
import json
import math
import os
import shutil
import struct
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mixtral_torch as mt  # noqa: E402
import torch  # noqa: E402

METRIC_RTOL = 1e-4                 # loss, ce_loss, aux_loss, grad_norm
LR_RTOL = 1e-6
WEIGHT_ATOL, WEIGHT_RTOL = 1e-5, 1e-4


def fail(message: str) -> None:
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def run_trainer(trainer: str, fixture: str, out_dir: str) -> None:
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    cmd = [trainer, "--config", os.path.join(fixture, "run.yaml"), "--set", f"output.dir={out_dir}"]
    print("running:", " ".join(cmd), flush=True)
    try:
        result = subprocess.run(cmd)
    except OSError as exc:
        fail(f"cannot run {trainer}: {exc}")
    if result.returncode != 0:
        fail(f"hetermoe-trainer exited with status {result.returncode}")


def read_metrics(path: str) -> list:
    if not os.path.exists(path):
        fail(f"the trainer wrote no {path}")
    with open(path, "r", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows


def close(actual: float, expected: float, rtol: float) -> bool:
    return math.isfinite(actual) and abs(actual - expected) <= rtol * abs(expected)


def compare_metrics(rows: list, golden: list) -> list:
    """Prints a step-by-step table; returns the mismatches (fails at once on a
    malformed file)."""
    if len(rows) != len(golden):
        fail(f"metrics.jsonl has {len(rows)} steps, torch ran {len(golden)}")
    print(f"{'step':>4} {'metric':>10} {'trainer':>14} {'torch':>14} {'rel.err':>9}")
    problems = []
    for row, want in zip(rows, golden):
        missing = [k for k in ("step", "loss", "ce_loss", "aux_loss", "lr", "grad_norm", "tokens_per_second")
                   if k not in row]
        if missing:
            fail(f"metrics.jsonl step {row.get('step', '?')} lacks {missing}: {row}")
        if row["step"] != want["step"]:
            fail(f"metrics.jsonl step number {row['step']}, expected {want['step']} (steps are 1-based)")
        if not row["tokens_per_second"] > 0:
            problems.append(f"step {want['step']}: tokens_per_second {row['tokens_per_second']} is not positive")
        for key, rtol in (("loss", METRIC_RTOL), ("ce_loss", METRIC_RTOL), ("aux_loss", METRIC_RTOL),
                          ("grad_norm", METRIC_RTOL), ("lr", LR_RTOL)):
            actual, expected = float(row[key]), float(want[key])
            rel = abs(actual - expected) / max(abs(expected), 1e-30)
            ok = close(actual, expected, rtol)
            flag = "" if ok else "  <-- MISMATCH"
            print(f"{want['step']:>4} {key:>10} {actual:>14.8g} {expected:>14.8g} {rel:>9.2e}{flag}")
            if not ok:
                problems.append(f"step {want['step']} {key}: trainer {actual!r}, torch {expected!r} "
                                f"(rel.err {rel:.2e} > {rtol:g})")
    return problems


def compare_weights(path: str, golden_path: str) -> list:
    if not os.path.exists(path):
        fail(f"the trainer wrote no final checkpoint {path}")
    actual, _ = mt.read_safetensors(path)
    expected, _ = mt.read_safetensors(golden_path)
    if set(actual) != set(expected):
        fail(f"{path}: tensor names differ: missing {sorted(set(expected) - set(actual))[:5]}, "
             f"unexpected {sorted(set(actual) - set(expected))[:5]}")
    worst_name, worst_ratio, worst_diff = None, -1.0, 0.0
    for name in sorted(expected):
        a, e = actual[name], expected[name]
        if a.shape != e.shape:
            fail(f"{name}: shape {tuple(a.shape)}, expected {tuple(e.shape)}")
        diff = (a - e).abs()
        # ratio > 1 means outside |a - e| <= atol + rtol*|e| somewhere.
        ratio = (diff / (WEIGHT_ATOL + WEIGHT_RTOL * e.abs())).max().item()
        if not math.isfinite(ratio) or ratio > worst_ratio:
            worst_name, worst_ratio, worst_diff = name, ratio, diff.max().item()
        if not math.isfinite(ratio):
            break
    print(f"final weights: worst tensor {worst_name}: max |diff| {worst_diff:.3e}, "
          f"{worst_ratio:.3f} x tolerance ({WEIGHT_ATOL:g} + {WEIGHT_RTOL:g}*|x|)")
    if not worst_ratio <= 1.0:
        return [f"final weights: {worst_name} max |diff| {worst_diff:.3e} "
                f"exceeds {WEIGHT_ATOL:g} + {WEIGHT_RTOL:g}*|x|"]
    return []


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixture", required=True, help="directory written by make_golden.py")
    parser.add_argument("--trainer", required=True, help="path of the hetermoe-trainer binary")
    parser.add_argument("--work", required=True, help="scratch directory; WORK/out is replaced")
    args = parser.parse_args()

    fixture = os.path.abspath(args.fixture)
    out_dir = os.path.join(os.path.abspath(args.work), "out")
    os.makedirs(args.work, exist_ok=True)
    with open(os.path.join(fixture, "train_golden.json"), "r", encoding="utf-8") as f:
        golden = json.load(f)

    run_trainer(args.trainer, fixture, out_dir)
    problems = compare_metrics(read_metrics(os.path.join(out_dir, "metrics.jsonl")), golden)
    problems += compare_weights(os.path.join(out_dir, "final", "model.safetensors"),
                                os.path.join(fixture, "train_final.safetensors"))
    problems += check_bf16_export(args.trainer, fixture, out_dir)
    if problems:
        fail("hetermoe-trainer differs from PyTorch:\n  " + "\n  ".join(problems))
    print("PASS: hetermoe-trainer matches PyTorch")


def check_bf16_export(trainer: str, fixture: str, out_dir: str) -> list:
    """output.dtype bf16: the same run exports BF16 weights equal to PyTorch's
    rounding of the fp32 export (round to nearest even), and keeps the fp32
    master weights in optimizer.safetensors for an exact resume."""
    bf16_dir = out_dir + "-bf16"
    if os.path.exists(bf16_dir):
        shutil.rmtree(bf16_dir)
    cmd = [trainer, "--config", os.path.join(fixture, "run.yaml"), "--no-progress",
           "--set", f"output.dir={bf16_dir}", "--set", "output.dtype=bf16"]
    if subprocess.run(cmd, capture_output=True).returncode != 0:
        return ["the run with output.dtype bf16 failed"]
    path = os.path.join(bf16_dir, "final", "model.safetensors")
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    dtypes = {info["dtype"] for name, info in header.items() if name != "__metadata__"}
    fp32, _ = mt.read_safetensors(os.path.join(out_dir, "final", "model.safetensors"))
    bf16, _ = mt.read_safetensors(path)
    master, _ = mt.read_safetensors(os.path.join(bf16_dir, "final", "optimizer.safetensors"))
    problems = [] if dtypes == {"BF16"} else [f"{path}: dtypes {dtypes}, expected BF16"]
    rounded = sum(int((bf16[n] != fp32[n].to(torch.bfloat16).float()).sum()) for n in fp32)
    kept = sum(int((master["master." + n] != fp32[n]).sum()) for n in fp32)
    print(f"output.dtype bf16: {sum(t.numel() for t in fp32.values())} weights, {rounded} differ from torch's "
          f"bf16 rounding of the fp32 export, {kept} master weights differ from it")
    if rounded or kept:
        problems.append(f"bf16 export: {rounded} weights not torch's rounding, {kept} master weights not the fp32 ones")
    return problems


if __name__ == "__main__":
    main()
