#!/usr/bin/python3
"""hetermoe-trainer with `train.device: cuda`, on the CUDA emulator.

The trainer loads the CUDA backend as a plugin; pointing HETERMOE_CUDA_PLUGIN
at the emulated build runs the real training loop with the CUDA backend's
code on the CPU. Against the CPU backend on the golden fixture (itself
checked against PyTorch), 4 steps must give:
  - fp32: losses and gradient norms within 1e-4 relative, identical
    per-expert token counts, final weights within 1e-5 + 1e-4 |x|;
  - a checkpoint written by the CUDA backend at step 2 and resumed to step 4
    equal to the uninterrupted run;
  - bf16 (sm_80) and fp16 with loss scaling (the emulator as sm_75, precision
    auto): losses within 2%;
  - no device (HETERMOE_EMULATED_DEVICES=0): a clear error, exit code 1;
  - the distributed engine on the GPU device (1+1 zebra, 2+2 sequential, 1+3
    zebra with Asym-EA, 2 groups of 1+1 ep, 1+1 zebra with Asym-EA auto
    profiled on the device; ranks are local processes, each
    with its emulated GPU, rows moved device to device over the emulator's
    NCCL; resumed at step 2 equal to the uninterrupted run): fp32 losses within 1e-4 and final weights within
    1e-5 + 1e-4 |x| of the single-process CPU run; the NCCL transport (rows,
    gradient sums and AdamW on the device) equal to Gloo through the host in
    fp32 (2+2 with experts on both attention ranks, dedup on and off: the
    same bytes, losses within 1e-9, weights within 1e-6), half its bytes in
    bf16; bf16 within 2%; fp16 on
    sm_75 (precision auto) within 2% of the CPU run, and, started at a loss
    scale that overflows (train.loss_scale_init 2^24), skipping exactly the
    steps the single-process fp16 run skips (every rank skips together),
    with its losses within 1e-4.

    check_trainer_on_emulator.py --trainer PATH --plugin PATH --fixture GOLDEN_DIR --work DIR
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reference"))
from mixtral_torch import read_safetensors  # noqa: E402

RUN = """model: {{config: {fx}/config.json, init: {fx}/model.safetensors}}
data: {{train: {fx}/tokens.bin}}
train: {{steps: 4, global_batch: 8, micro_batches: 4, seq_len: 16, lr: 1.0e-2,
        schedule: cosine, warmup_steps: 1, min_lr: 1.0e-3, eps: 1.0e-5, grad_clip: 0.5,
        threads: 1}}
output: {{dir: {out}, checkpoint_every: 2}}
"""


# (attention ranks, expert ranks, groups, schedule, asym_ea) for the 4-expert, 2-layer golden model
SHAPES = [(1, 1, 1, "zebra", "off"), (2, 2, 1, "sequential", "off"), (1, 3, 1, "zebra", "[1, 0]"),
          (1, 1, 2, "ep", "off"), (1, 1, 1, "zebra", "auto")]  # auto: profiled on the GPU device


def parallel(a, e, g, schedule, asym):
    return (f"parallel={{attention_ranks: {a}, expert_ranks: {e}, groups: {g}, schedule: {schedule}, "
            f"asym_ea: {asym}}}")


def run(args, out, device, precision="fp32", env_extra=None, extra=(), expect_ok=True, stderr=None):
    env = dict(os.environ, HETERMOE_CUDA_PLUGIN=args.plugin, OMP_WAIT_POLICY="passive", **(env_extra or {}))
    cmd = [args.trainer, "--config", args.run_file, "--no-progress", "--set", f"output.dir={out}",
           "--set", f"train.device={device}", "--set", f"train.precision={precision}", *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if not expect_ok:
        return p
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr}")
    if stderr is not None:
        stderr.append(p.stderr)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f]
    weights, _ = read_safetensors(os.path.join(out, "final", "model.safetensors"))
    backend = next((l for l in p.stderr.splitlines() if l.startswith("backend: ")), "backend: ?")
    transport = next((l for l in p.stderr.splitlines() if l.startswith("rows between ranks: ")), "")
    return metrics, weights, backend[len("backend: "):], transport[len("rows between ranks: "):]


def exported_dtypes(path):
    """The dtypes a safetensors file's header names."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return {t["dtype"] for name, t in header.items() if name != "__metadata__"}


def compare_losses(name, ref, got, rel, problems, weights_tol=None, tokens=True):
    (ref_m, ref_w), (got_m, got_w) = ref[:2], got[:2]
    if [m["step"] for m in ref_m] != [m["step"] for m in got_m]:
        problems.append(f"{name}: steps {[m['step'] for m in got_m]}, expected {[m['step'] for m in ref_m]}")
    for a, b in zip(ref_m, got_m):
        keys = ("loss", "ce_loss", "grad_norm") if weights_tol else ("loss",)
        for key in keys:
            if abs(a[key] - b[key]) > rel * abs(a[key]):
                problems.append(f"{name}: step {a['step']} {key} {b[key]:.7g} vs {a[key]:.7g}")
        if tokens and a["expert_tokens"] != b["expert_tokens"]:
            problems.append(f"{name}: step {a['step']} expert_tokens {b['expert_tokens']} vs {a['expert_tokens']}")
    if weights_tol:
        atol, rtol = weights_tol
        worst, worst_name = 0.0, ""
        for tensor, want in ref_w.items():
            diff = ((got_w[tensor] - want).abs() - rtol * want.abs()).max().item()
            if diff > worst:
                worst, worst_name = diff, tensor
        if worst > atol:
            problems.append(f"{name}: final weights: {worst_name} off by {worst:.3g}")
    print(f"{name}: backend {got[2]}; losses {[round(m['loss'], 6) for m in got_m]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trainer", required=True)
    ap.add_argument("--plugin", required=True)
    ap.add_argument("--fixture", required=True)
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    args.run_file = os.path.join(args.work, "run.yaml")
    with open(args.run_file, "w") as f:
        f.write(RUN.format(fx=args.fixture, out=os.path.join(args.work, "out")))

    problems = []
    cpu = run(args, os.path.join(args.work, "cpu"), "cpu")
    print(f"cpu: losses {[round(m['loss'], 6) for m in cpu[0]]}")
    gpu = run(args, os.path.join(args.work, "cuda"), "cuda")
    if "CUDA emulator" not in gpu[2] or "fp32" not in gpu[2]:
        problems.append(f"fp32 run used backend {gpu[2]!r}, expected the emulated CUDA device in fp32")
    compare_losses("cuda fp32", cpu, gpu, 1e-4, problems, weights_tol=(1e-5, 1e-4))

    # Sliding-window attention (window 6 < 16 tokens), yarn rope_scaling and
    # tied embeddings: the fixture's window/, rope_yarn/ and tied/ models.
    for variant in ("window", "rope_yarn", "tied"):
        config = ["--set", f"model.config={os.path.join(args.fixture, variant, 'config.json')}"]
        if variant == "tied":  # its weights have no lm_head.weight
            config += ["--set", f"model.init={os.path.join(args.fixture, variant, 'model.safetensors')}"]
        cpu_variant = run(args, os.path.join(args.work, f"cpu-{variant}"), "cpu", extra=config)
        if [m["loss"] for m in cpu_variant[0]] == [m["loss"] for m in cpu[0]]:
            problems.append(f"{variant}: the CPU losses equal the plain model's (the config was not applied)")
        gpu_variant = run(args, os.path.join(args.work, f"cuda-{variant}"), "cuda", extra=config)
        compare_losses(f"cuda fp32, {variant}", cpu_variant, gpu_variant, 1e-4, problems, weights_tol=(1e-5, 1e-4))

    # Resume from the CUDA backend's own checkpoint.
    resumed_dir = os.path.join(args.work, "resumed")
    shutil.copytree(os.path.join(args.work, "cuda"), resumed_dir)
    shutil.rmtree(os.path.join(resumed_dir, "final"))
    with open(os.path.join(resumed_dir, "metrics.jsonl")) as f:
        head = [line for line in f if json.loads(line)["step"] <= 2]
    with open(os.path.join(resumed_dir, "metrics.jsonl"), "w") as f:
        f.writelines(head)
    resumed = run(args, resumed_dir, "cuda", extra=["--resume", os.path.join(resumed_dir, "checkpoint-2")])
    compare_losses("cuda resumed at 2", gpu, resumed, 1e-6, problems, weights_tol=(1e-7, 1e-6))

    bf16 = run(args, os.path.join(args.work, "bf16"), "cuda", "bf16")
    if "bf16" not in bf16[2]:
        problems.append(f"bf16 run used backend {bf16[2]!r}")
    compare_losses("cuda bf16", cpu, bf16, 2e-2, problems, tokens=False)
    fp16 = run(args, os.path.join(args.work, "fp16"), "cuda", "auto", {"HETERMOE_EMULATED_SM": "75"})
    if "sm_75" not in fp16[2] or "fp16" not in fp16[2]:
        problems.append(f"precision auto on sm_75 used backend {fp16[2]!r}, expected fp16")
    compare_losses("cuda fp16 (sm_75, auto)", cpu, fp16, 2e-2, problems, tokens=False)
    # output.dtype auto (the default): 16-bit runs export BF16, fp32 runs F32.
    for name, out, want in (("fp32", "cuda", {"F32"}), ("bf16", "bf16", {"BF16"}), ("fp16", "fp16", {"BF16"})):
        got = exported_dtypes(os.path.join(args.work, out, "final", "model.safetensors"))
        print(f"{name} run exports {sorted(got)}")
        if got != want:
            problems.append(f"the {name} run exported {sorted(got)}, expected {sorted(want)} (output.dtype auto)")

    p = run(args, os.path.join(args.work, "nogpu"), "cuda", env_extra={"HETERMOE_EMULATED_DEVICES": "0"},
            expect_ok=False)
    print(f"no device: exit {p.returncode}: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ''}")
    if p.returncode != 1 or "no usable GPU" not in p.stderr:
        problems.append(f"device cuda without a device: exit {p.returncode}, stderr {p.stderr!r}")

    for a, e, g, schedule, asym in SHAPES:
        name = f"distributed {a}+{e}x{g} {schedule} asym {asym}"
        got = run(args, os.path.join(args.work, f"dist-{a}-{e}-{g}-{schedule}"), "cuda",
                  extra=["--set", parallel(a, e, g, schedule, asym)])
        if "distributed on cuda:0" not in got[2]:
            problems.append(f"{name}: backend {got[2]!r}, expected the distributed engine on the GPU")
        if not got[3].startswith("nccl (fp32 on the wire"):  # parallel.transport auto on GPUs
            problems.append(f"{name}: rows moved by {got[3]!r}, expected nccl in fp32")
        compare_losses(name, cpu, got, 1e-4, problems, weights_tol=(1e-5, 1e-4))

    # Resume of a distributed run whose optimizer lives on the GPUs: the
    # checkpoint pulls the state from the devices, resume pushes it back.
    base = os.path.join(args.work, "dist-1-3-1-zebra")
    resumed_dir = os.path.join(args.work, "dist-resumed")
    shutil.copytree(base, resumed_dir)
    shutil.rmtree(os.path.join(resumed_dir, "final"))
    with open(os.path.join(resumed_dir, "metrics.jsonl")) as f:
        head = [line for line in f if json.loads(line)["step"] <= 2]
    with open(os.path.join(resumed_dir, "metrics.jsonl"), "w") as f:
        f.writelines(head)
    full = run(args, base + "-again", "cuda", extra=["--set", parallel(*SHAPES[2])])
    resumed = run(args, resumed_dir, "cuda", extra=["--set", parallel(*SHAPES[2]),
                                                    "--resume", os.path.join(resumed_dir, "checkpoint-2")])
    compare_losses("distributed 1+3 on the GPUs resumed at 2", full, resumed, 1e-6, problems,
                   weights_tol=(1e-7, 1e-6))
    # With expert swaps, the resumed run puts the experts back where the
    # swaps had them (the device optimizer's state moves with them).
    swapping = parallel(*SHAPES[2])[:-1] + ", swap_every: 1}"
    straight_dir = os.path.join(args.work, "dist-swap")
    straight = run(args, straight_dir, "cuda", extra=["--set", swapping, "--set", "output.checkpoint_every=2"])
    log = []
    resumed = run(args, os.path.join(args.work, "dist-swap-resumed"), "cuda", stderr=log,
                  extra=["--set", swapping, "--resume", os.path.join(straight_dir, "checkpoint-2")])
    placements = [json.load(open(os.path.join(d, "final", "trainer_state.json"))).get("expert_placement")
                  for d in (straight_dir, os.path.join(args.work, "dist-swap-resumed"))]
    print(f"1+3 on the GPUs with swaps, resumed at 2: placement restored "
          f"{'expert placement restored' in log[0]}; final placements {placements}")
    if "expert placement restored" not in log[0] or placements[0] != placements[1]:
        problems.append(f"resume with swaps on the GPUs: placement not restored ({placements})")
    compare_losses("1+3 with swaps on the GPUs resumed at 2", (straight[0][2:],) + tuple(straight[1:]), resumed,
                   1e-6, problems, weights_tol=(1e-7, 1e-6))

    # The NCCL transport against Gloo through the host, with two attention
    # ranks that both own experts (each channel carries sends and receives
    # on every rank): fp32 bitwise equal with the same bytes, with and
    # without dedup; bf16 halves the bytes on the wire.
    two = "parallel={attention_ranks: 2, expert_ranks: 2, groups: 1, schedule: zebra, asym_ea: [2, 2]"
    nccl_runs = {}
    for dedup in ("true", "false"):
        runs = {}
        for transport in ("gloo", "nccl"):
            runs[transport] = run(args, os.path.join(args.work, f"t-{transport}-{dedup}"), "cuda",
                                  extra=["--set", f"{two}, dedup: {dedup}, transport: {transport}}}"])
        (gm, _, _, gt), (nm, nw, _, nt) = runs["gloo"], runs["nccl"]
        if gt != "gloo" or not nt.startswith("nccl (fp32 on the wire"):
            problems.append(f"transport gloo/nccl ran {gt!r}/{nt!r}")
        # The rows are bitwise the same; the step on the GPU sums the norm in
        # another order (double), so the losses agree to ~1e-14.
        same = [a["exchange_bytes"] == b["exchange_bytes"] and
                all(abs(a[k] - b[k]) <= 1e-9 * abs(a[k]) for k in ("loss", "grad_norm")) for a, b in zip(gm, nm)]
        worst = max(((runs["gloo"][1][t] - w).abs().max().item() for t, w in nw.items()), default=0.0)
        print(f"2+2 asym [2, 2] dedup {dedup}: nccl vs gloo per step (same bytes, losses within 1e-9) {same}; "
              f"final weights differ by {worst:.2g}; exchange bytes {[m['exchange_bytes'] for m in nm]}")
        if not all(same) or len(gm) != len(nm) or worst > 1e-6:
            problems.append(f"dedup {dedup}: the NCCL transport's losses, norms, bytes or weights differ from Gloo's")
        compare_losses(f"2+2 nccl dedup {dedup}", cpu, runs["nccl"], 1e-4, problems, weights_tol=(1e-5, 1e-4))
        nccl_runs[dedup] = runs["nccl"]
    # Node-level dedup on the GPUs, two "nodes" of two ranks, the node's first
    # expert rank relaying: over Gloo through the host and over NCCL device
    # to device (the relay's own groups, its sums packed on the device), 1+3
    # and 2+2 (two attention ranks relayed through one node); the same
    # training as the CPU run, and NCCL the same bytes and losses as Gloo.
    for shape in ("attention_ranks: 1, expert_ranks: 3", "attention_ranks: 2, expert_ranks: 2"):
        node = f"parallel={{{shape}, schedule: zebra, ranks_per_node: 2, dedup: node"
        runs = {t: run(args, os.path.join(args.work, f"t-node-{t}-{shape[17]}"), "cuda",
                       extra=["--set", f"{node}, transport: {t}}}"]) for t in ("gloo", "nccl")}
        relayed = {t: sum(sum(m["dispatch_rows_relayed"]) for m in r[0]) for t, r in runs.items()}
        same = [a["exchange_bytes"] == b["exchange_bytes"] and abs(a["loss"] - b["loss"]) <= 1e-9 * abs(a["loss"])
                for a, b in zip(runs["gloo"][0], runs["nccl"][0])]
        print(f"{shape} dedup node on the GPUs: rows relayed inside the node {relayed}; nccl vs gloo per step "
              f"(same bytes, losses within 1e-9) {same}; nccl ran {runs['nccl'][3]!r}")
        if relayed["gloo"] <= 0 or relayed["nccl"] != relayed["gloo"]:
            problems.append(f"dedup node on the GPUs ({shape}): relayed rows {relayed}")
        if not all(same) or not runs["nccl"][3].startswith("nccl"):
            problems.append(f"dedup node on the GPUs ({shape}): NCCL differs from Gloo in bytes or losses")
        for t, r in runs.items():
            compare_losses(f"{shape} dedup node over {t} on the GPUs", cpu, r, 1e-4, problems,
                           weights_tol=(1e-5, 1e-4))
    # dedup auto over NCCL fits the links again device to device.
    log = []
    auto = run(args, os.path.join(args.work, "t-auto-nccl"), "cuda", stderr=log,
               extra=["--set", "parallel={attention_ranks: 1, expert_ranks: 3, schedule: zebra, ranks_per_node: 2, "
                               "dedup: auto, transport: nccl}"])
    fitted = [l for l in log[0].splitlines() if "links fitted" in l]
    print(f"dedup auto over NCCL: {fitted}")
    if not any("(NCCL, device to device)" in l for l in fitted):
        problems.append("dedup auto over NCCL did not fit the links over NCCL")
    compare_losses("1+3 dedup auto over nccl on the GPUs", cpu, auto, 1e-4, problems, weights_tol=(1e-5, 1e-4))
    # dedup auto with borderline links from a profile: each attention rank
    # chooses per block, so a layer mixes depths; the route owners learn each
    # block's depth from its first word (over Gloo with the rows, over NCCL
    # with the header while the rows take the device groups).
    profile = os.path.join(args.work, "borderline-links.json")
    with open(profile, "w") as f:
        json.dump({"format": "hetermoe-links/1", "measured_over": "nccl",
                   "inter_node": {"latency_us": 0, "gbps": 1.0}, "intra_node": {"latency_us": 0, "gbps": 1.3}}, f)
    mixed = ("parallel={attention_ranks: 2, expert_ranks: 2, schedule: zebra, ranks_per_node: 2, dedup: auto, "
             f"links_profile: {profile}")
    runs = {t: run(args, os.path.join(args.work, f"t-auto-mixed-{t}"), "cuda",
                   extra=["--set", f"{mixed}, transport: {t}}}"]) for t in ("gloo", "nccl")}
    shares = {t: [x for m in r[0] for x in m["dedup_node_share"]] for t, r in runs.items()}
    same = [a["exchange_bytes"] == b["exchange_bytes"] and abs(a["loss"] - b["loss"]) <= 1e-9 * abs(a["loss"])
            for a, b in zip(runs["gloo"][0], runs["nccl"][0])]
    print(f"2+2 dedup auto, borderline links, on the GPUs: node shares over NCCL "
          f"{[round(x, 2) for x in shares['nccl']]}; nccl vs gloo per step (same bytes, losses within 1e-9) {same}")
    if not any(0 < x < 1 for x in shares["nccl"]) or shares["nccl"] != shares["gloo"] or not all(same):
        problems.append(f"dedup auto with mixed depths on the GPUs: shares {shares}, same bytes and losses {same}")
    for t, r in runs.items():
        compare_losses(f"2+2 dedup auto mixed over {t} on the GPUs", cpu, r, 1e-4, problems, weights_tol=(1e-5, 1e-4))
    # ZeRO-1 with the optimizer on the GPUs: each attention rank updates its
    # shard of the dense tensors on its device, the shards are summed over
    # NCCL; the same training and the same checkpoint as without.
    for name, shape in (("2+2", f"{two}"), ("ep 2 groups", "parallel={attention_ranks: 1, expert_ranks: 1, "
                                                            "groups: 2, schedule: ep")):
        z = {zero: run(args, os.path.join(args.work, f"zero{zero}-{name.split()[0]}"), "cuda",
                       extra=["--set", f"{shape}}}", "--set", f"train.zero={zero}"]) for zero in (0, 1)}
        same = all(a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"] for a, b in zip(z[0][0], z[1][0]))
        held = [b / a for a, b in zip(z[0][0][-1]["rank_state_bytes"], z[1][0][-1]["rank_state_bytes"])]
        opt = [open(os.path.join(args.work, f"zero{zero}-{name.split()[0]}", "final", "optimizer.safetensors"),
                    "rb").read() for zero in (0, 1)]
        print(f"zero 1 on the GPUs, {name}: losses and norms equal to zero 0: {same}; optimizer checkpoint "
              f"identical: {opt[0] == opt[1]}; state held per rank vs zero 0: {[round(h, 2) for h in held]}")
        if not same or opt[0] != opt[1] or not min(held) < 1.0:
            problems.append(f"zero 1 on the GPUs ({name}) differs from zero 0 or holds no less")
        compare_losses(f"zero 1 on the GPUs, {name}", cpu, z[1], 1e-4, problems, weights_tol=(1e-5, 1e-4))
    # Attention blocks and expert activations recomputed in backward on the
    # GPUs (train.recompute full): the same kernels on the same inputs, so
    # the same losses and weights as without, bitwise.
    def same_run(name, want, got):
        same = [a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"] for a, b in zip(want[0], got[0])]
        worst = max(((want[1][t] - w).abs().max().item() for t, w in got[1].items()), default=0.0)
        print(f"{name}: losses and norms equal per step {same}; final weights differ by {worst:.2g}")
        if not all(same) or len(want[0]) != len(got[0]) or worst != 0.0:
            problems.append(f"{name}: not the same training as without recomputation")

    recomputed = run(args, os.path.join(args.work, "t-nccl-recompute"), "cuda",
                     extra=["--set", f"{two}}}", "--set", "train.recompute=full"])
    same_run("2+2 nccl recompute full", nccl_runs["true"], recomputed)
    # Zebra in waves of one micro-batch: the stage objects and expert blocks
    # are reused while NCCL transfers from the previous wave may be pending.
    waves = run(args, os.path.join(args.work, "t-nccl-waves"), "cuda",
                extra=["--set", f"{two}, micro_batches_in_flight: 1}}"])
    compare_losses("2+2 nccl in waves of 1", cpu, waves, 1e-4, problems, weights_tol=(1e-5, 1e-4))
    # HierMoE's expert swap after every step on the GPUs: experts' weights and
    # AdamW moments move between the owners' devices (NCCL: from the device
    # optimizer's state; gloo: the host copies), the gate's rows swap.
    for transport in ("nccl", "gloo"):
        logs = []
        swapped = run(args, os.path.join(args.work, f"t-{transport}-swap"), "cuda", stderr=logs,
                      extra=["--set", parallel(*SHAPES[2])[:-1] + f", transport: {transport}, swap_every: 1}}"])
        swaps = logs[0].count("expert swap: layer")
        print(f"1+3 asym [1, 0] {transport} with expert swaps: {swaps} swaps")
        if swaps == 0:
            problems.append(f"{transport}: no expert was swapped")
        compare_losses(f"1+3 {transport} swap every step", cpu, swapped, 1e-4, problems, weights_tol=(1e-5, 1e-4))
    bf16 = {t: run(args, os.path.join(args.work, f"t-{t}-bf16"), "cuda", "bf16",
                   extra=["--set", f"{two}, transport: {t}}}"]) for t in ("gloo", "nccl")}
    ratio = sum(m["exchange_bytes"] for m in bf16["nccl"][0]) / sum(m["exchange_bytes"] for m in bf16["gloo"][0])
    print(f"bf16: {bf16['nccl'][3]}; exchange bytes nccl / gloo (fp32 through the host) = {ratio:.3f}")
    if not bf16["nccl"][3].startswith("nccl (bf16 on the wire") or not 0.45 <= ratio <= 0.55:
        problems.append(f"bf16 over NCCL: {bf16['nccl'][3]!r}, bytes ratio {ratio:.3f} (expected about 0.5)")
    compare_losses("2+2 nccl bf16", cpu, bf16["nccl"], 2e-2, problems, tokens=False)
    recomputed = run(args, os.path.join(args.work, "t-nccl-bf16-recompute"), "cuda", "bf16",
                     extra=["--set", f"{two}, transport: nccl}}", "--set", "train.recompute=full"])
    same_run("2+2 nccl bf16 recompute full", bf16["nccl"], recomputed)
    got = run(args, os.path.join(args.work, "dist-bf16"), "cuda", "bf16", extra=["--set", parallel(*SHAPES[0])])
    compare_losses("distributed 1+1 bf16", cpu, got, 2e-2, problems, tokens=False)
    sm75 = {"HETERMOE_EMULATED_SM": "75"}
    got = run(args, os.path.join(args.work, "dist-fp16"), "cuda", "auto", sm75, extra=["--set", parallel(*SHAPES[2])])
    if "fp16" not in got[2]:
        problems.append(f"distributed precision auto on sm_75 used backend {got[2]!r}, expected fp16")
    compare_losses("distributed 1+3 fp16 (sm_75, auto)", cpu, got, 2e-2, problems, tokens=False)
    overflow = ["--set", "train.loss_scale_init=16777216"]
    single = run(args, os.path.join(args.work, "fp16-overflow"), "cuda", "fp16", sm75, extra=overflow)
    dist = run(args, os.path.join(args.work, "dist-fp16-overflow"), "cuda", "fp16", sm75,
               extra=overflow + ["--set", parallel(*SHAPES[2])])
    skipped = [[m.get("step_skipped", False) for m in r[0]] for r in (single, dist)]
    print(f"fp16 from loss scale 2^24: skipped steps single {skipped[0]}, 1+3 {skipped[1]}")
    if not any(skipped[0]) or skipped[0] != skipped[1]:
        problems.append(f"fp16 overflow: the distributed run skipped {skipped[1]}, the single-process run "
                        f"{skipped[0]} (expected the same, with at least one skip)")
    compare_losses("distributed 1+3 fp16 from loss scale 2^24", single, dist, 1e-4, problems, tokens=False)

    for line in problems:
        print("FAIL:", line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
