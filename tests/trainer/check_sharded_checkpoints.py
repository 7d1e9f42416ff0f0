#!/usr/bin/python3
"""Hugging Face sharded checkpoints (index + shards), in and out.

The golden fixture's start weights are rewritten as the Hugging Face ecosystem
publishes bigger models: two shards, written in BF16 and F32 (one each), plus
model.safetensors.index.json. Then:

- a single-process run with model.init = the folder gives the losses of a
  run from one F32 file holding the same values (the BF16 shard's tensors
  rounded to bf16 by PyTorch; 1e-7 relative);
- an index of F32 shards, given as the index file, trains like PyTorch on
  the fixture's weights (train_golden.json, 1e-4 relative);
- a 1+3 run from the same folder: every rank reports reading exactly its own
  tensors' bytes (BF16 2 bytes, F32 4 bytes per value), counted here from
  the index and the engine's plan.json;
- bad folders give exit 1 and one line naming the file: a missing shard, an
  index that is not JSON, an index naming a tensor its shard does not hold;
- out: with output.max_shard_mib the final checkpoint is several shards and
  an index whose weight_map covers every tensor; read back by the PyTorch
  reference's reader, the tensors equal those of a run writing one file, and
  a run resumed from a sharded checkpoint-3 ends like the uninterrupted one
  (single-process and 1+3);
- the exported config.json keeps the given config's keys the trainer does
  not use (reported once at start), and generation_config.json and the
  tokenizer files beside the initial weights are copied alongside;
- the window (sliding_window < seq_len) and tied-embedding models, rounded
  to bf16 and written as 2 BF16 shards + index, train like PyTorch from the
  same weights (losses 1e-4 relative over 5 steps, final weights 1e-5 +
  1e-4 |x|).

    check_sharded_checkpoints.py --trainer PATH --fixture GOLDEN_DIR --work DIR
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reference"))
import mixtral_torch as mt  # noqa: E402


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def write_shards(folder, weights, first, first_dtype, second_dtype="F32"):
    """The model as two shards (the tensors in `first`, in `first_dtype`; the
    rest in `second_dtype`) and model.safetensors.index.json; returns the
    weight_map."""
    os.makedirs(folder)
    shard_of = {n: ("model-00001-of-00002.safetensors" if n in first else "model-00002-of-00002.safetensors")
                for n in weights}
    mt.write_safetensors(os.path.join(folder, "model-00001-of-00002.safetensors"),
                         {n: w for n, w in weights.items() if n in first}, dtype=first_dtype)
    mt.write_safetensors(os.path.join(folder, "model-00002-of-00002.safetensors"),
                         {n: w for n, w in weights.items() if n not in first}, dtype=second_dtype)
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": shard_of}, f, indent=2)
    return shard_of


def run(trainer, fixture, out, extra=(), ok=True):
    cmd = [trainer, "--config", os.path.join(fixture, "run.yaml"), "--no-progress",
           "--set", f"output.dir={out}", *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if ok and p.returncode != 0:
        fail(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr}")
    return p


def losses(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trainer", required=True)
    ap.add_argument("--fixture", required=True)
    ap.add_argument("--work", required=True)
    a = ap.parse_args()
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    weights, _ = mt.read_safetensors(os.path.join(a.fixture, "model.safetensors"))
    names = sorted(weights)
    # Shard 1 (BF16): the embedding and the first half of the layers' tensors; shard 2 (F32): the rest.
    first = set(names[: len(names) // 2])
    rounded = {n: (w.to(torch.bfloat16).to(torch.float32) if n in first else w) for n, w in weights.items()}
    sharded = os.path.join(a.work, "sharded")
    shard_of = write_shards(sharded, weights, first, "BF16")
    single = os.path.join(a.work, "rounded.safetensors")
    mt.write_safetensors(single, rounded)

    # The trainer's view of the shards: its own checkpoint of step 0 is not
    # written, so compare through training: same losses as the F32 file of
    # the same (bf16-rounded) values.
    from_shards = os.path.join(a.work, "from-shards")
    from_single = os.path.join(a.work, "from-single")
    run(a.trainer, a.fixture, from_shards, ["--set", f"model.init={sharded}"])
    run(a.trainer, a.fixture, from_single, ["--set", f"model.init={single}"])
    got, want = losses(from_shards), losses(from_single)
    print(f"losses from 2 shards (BF16 + F32) {got}\nlosses from one F32 file          {want}")
    if len(got) != len(want) or any(abs(x - y) > 1e-7 * abs(y) for x, y in zip(got, want)):
        fail("a run from the shards differs from a run from the same values in one file")

    # The index as a file path works too, and so does an F32-only index (exact to PyTorch).
    f32 = os.path.join(a.work, "sharded-f32")
    write_shards(f32, weights, first, "F32")
    from_f32 = os.path.join(a.work, "from-f32-shards")
    run(a.trainer, a.fixture, from_f32, ["--set", f"model.init={os.path.join(f32, 'model.safetensors.index.json')}"])
    with open(os.path.join(a.fixture, "train_golden.json")) as f:
        torch_losses = [row["loss"] for row in json.load(f)]
    got = losses(from_f32)
    print(f"losses from 2 F32 shards (index file) {got}\nPyTorch on the same weights          {torch_losses}")
    if len(got) != len(torch_losses) or any(abs(x - y) > 1e-4 * abs(y) for x, y in zip(got, torch_losses)):
        fail("a run from F32 shards does not train like PyTorch (1e-4 relative)")

    # 1+3: each rank reads only its tensors.
    experts = {n for n in names if ".block_sparse_moe.experts." in n}
    dist = os.path.join(a.work, "dist")
    p = run(a.trainer, a.fixture, dist, ["--set", f"model.init={sharded}",
                                         "--set", "parallel={attention_ranks: 1, expert_ranks: 3}"])
    if not any(shard_of[n].startswith("model-00001") for n in experts) or \
            not any(shard_of[n].startswith("model-00002") for n in experts):
        fail("the test wants experts in both shards")
    with open(os.path.join(dist, "plan.json")) as f:
        placement = json.load(f)["ranks"]
    size = {n: weights[n].numel() * (2 if n in first else 4) for n in names}
    for rank, r in enumerate(placement):
        mine = set()
        for layer, ids in enumerate(r["experts"]):
            for e in ids:
                mine |= {f"model.layers.{layer}.block_sparse_moe.experts.{e}.w{i}.weight" for i in (1, 2, 3)}
        if r["role"] == "attention":
            mine |= set(names) - experts
        want = sum(size[n] for n in mine)
        line = next((l for l in p.stderr.splitlines() if l.startswith(f"rank {rank} read ")), None)
        if line is None:
            fail(f"rank {rank} did not say what it read:\n{p.stderr}")
        read = int(line.split("(")[1].split()[0])
        print(f"{line}; its tensors are {want} bytes")
        if read != want:
            fail(f"rank {rank} read {read} bytes, its tensors are {want} bytes")

    # Bad folders: one line naming the file.
    def bad(name, change, expect):
        folder = os.path.join(a.work, name)
        shutil.copytree(sharded, folder)
        change(folder)
        p = run(a.trainer, a.fixture, os.path.join(a.work, name + "-out"), ["--set", f"model.init={folder}"], ok=False)
        last = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""
        print(f"{name}: exit {p.returncode}: {last}")
        if p.returncode != 1 or expect(folder) not in last:
            fail(f"{name}: expected exit 1 naming {expect(folder)!r}, got {p.returncode}: {p.stderr}")

    bad("missing-shard", lambda d: os.remove(os.path.join(d, "model-00002-of-00002.safetensors")),
        lambda d: os.path.join(d, "model-00002-of-00002.safetensors"))
    bad("index-not-json", lambda d: open(os.path.join(d, "model.safetensors.index.json"), "w").write("{weight"),
        lambda d: os.path.join(d, "model.safetensors.index.json"))

    def wrong_shard(d):
        index = os.path.join(d, "model.safetensors.index.json")
        doc = json.load(open(index))
        doc["weight_map"]["lm_head.weight"] = "model-00001-of-00002.safetensors" \
            if shard_of["lm_head.weight"].startswith("model-00002") else "model-00002-of-00002.safetensors"
        json.dump(doc, open(index, "w"))
    bad("wrong-shard", wrong_shard, lambda d: "says it is in this shard")
    # Out: shards of at most 0.01 MiB (the fixture's tensors are a few KiB each).
    shard_mib = "0.01"
    plain_out = os.path.join(a.work, "plain-out")
    run(a.trainer, a.fixture, plain_out)
    want, _ = mt.read_safetensors(os.path.join(plain_out, "final", "model.safetensors"))
    for parallel in (None, "{attention_ranks: 1, expert_ranks: 3}"):
        label = "1+3" if parallel else "single process"
        extra = ["--set", f"output.max_shard_mib={shard_mib}"] + (["--set", f"parallel={parallel}"] if parallel else [])
        straight = os.path.join(a.work, f"straight-{bool(parallel)}")
        run(a.trainer, a.fixture, straight, extra + ["--set", "output.checkpoint_every=3"])
        resumed = os.path.join(a.work, f"resumed-{bool(parallel)}")
        run(a.trainer, a.fixture, resumed, extra + ["--resume", os.path.join(straight, "checkpoint-3")])

        def read_sharded(folder):
            index_path = os.path.join(folder, "model.safetensors.index.json")
            if not os.path.exists(index_path):
                fail(f"output.max_shard_mib {shard_mib}: no {index_path}")
            index = json.load(open(index_path))
            tensors = {}
            shards = sorted(set(index["weight_map"].values()))
            for shard in shards:
                part, _ = mt.read_safetensors(os.path.join(folder, shard))
                if any(index["weight_map"].get(n) != shard for n in part):
                    fail(f"{folder}/{shard} holds tensors the index places elsewhere")
                if sum(t.numel() * 4 for t in part.values()) > float(shard_mib) * (1 << 20) and len(part) > 1:
                    fail(f"{folder}/{shard} is larger than {shard_mib} MiB")
                tensors.update(part)
            if set(index["weight_map"]) != set(tensors) or index["metadata"]["total_size"] != sum(
                    t.numel() * 4 for t in tensors.values()):
                fail(f"{index_path}: weight_map or total_size does not match the shards")
            return tensors, len(shards)

        got, count = read_sharded(os.path.join(straight, "final"))
        if count < 2 or set(got) != set(want):
            fail(f"{label}: {count} shard(s) holding {len(got)} tensors, expected several holding {len(want)}")
        if not parallel:
            worst = max((got[n] - want[n]).abs().max().item() for n in want)
            if worst != 0:
                fail(f"the sharded export differs from the one-file export by {worst}")
        again, _ = read_sharded(os.path.join(resumed, "final"))
        worst = max((got[n] - again[n]).abs().max().item() for n in got)
        print(f"{label}: final checkpoint in {count} shards + index (PyTorch reader: every tensor, "
              f"{'equal to the one-file export' if not parallel else 'as the index says'}); resumed from the "
              f"sharded checkpoint-3, final weights differ by {worst:.2e}")
        if worst > 1e-6:
            fail(f"{label}: resume from a sharded checkpoint is not exact")
    # Keys and files a Hugging Face folder carries come through.
    config = json.load(open(os.path.join(a.fixture, "config.json")))
    config.update(bos_token_id=1, eos_token_id=2, use_cache=True)
    config_path = os.path.join(a.work, "config-with-extras.json")
    json.dump(config, open(config_path, "w"))
    for name, text in (("generation_config.json", '{"bos_token_id": 1, "eos_token_id": 2}\n'),
                       ("tokenizer_config.json", '{"model_max_length": 64}\n')):
        open(os.path.join(sharded, name), "w").write(text)
    out = os.path.join(a.work, "companions")
    p = run(a.trainer, a.fixture, out, ["--set", f"model.config={config_path}", "--set", f"model.init={sharded}"])
    final = os.path.join(out, "final")
    exported = json.load(open(os.path.join(final, "config.json")))
    for key in ("bos_token_id", "eos_token_id", "use_cache"):
        if exported.get(key) != config[key]:
            fail(f"exported config.json has {key} = {exported.get(key)!r}, the given config {config[key]!r}")
    if "kept in exported configs: bos_token_id, eos_token_id, use_cache" not in p.stderr:
        fail(f"the run did not report the keys it keeps:\n{p.stderr}")
    for name in ("generation_config.json", "tokenizer_config.json"):
        if open(os.path.join(final, name)).read() != open(os.path.join(sharded, name)).read():
            fail(f"{name} was not copied into {final}")
    print("exported config keeps bos_token_id, eos_token_id, use_cache; generation_config.json and "
          "tokenizer_config.json copied")
    check_bf16_variants(a)
    print("sharded checkpoints: ok")


def check_bf16_variants(a):
    """The window (sliding_window 6 < T = 16) and tied-embedding fixtures,
    their start weights rounded to bf16 and written as 2 BF16 shards + index,
    train in the trainer as in PyTorch from the same rounded weights: losses
    within 1e-4 relative over the 5 steps, final weights within 1e-5 +
    1e-4 |torch| (the golden test's tolerance)."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reference"))
    import make_golden as mg  # noqa: E402
    tokens = mt.read_token_file(os.path.join(a.fixture, "tokens.bin"))
    for variant in ("window", "tied"):
        vdir = os.path.join(a.fixture, variant)
        config = mt.load_config(os.path.join(vdir, "config.json"))
        own = os.path.join(vdir, "model.safetensors")
        start, _ = mt.read_safetensors(own if os.path.exists(own) else os.path.join(a.fixture, "model.safetensors"))
        model = mt.MixtralForCausalLM(config)
        start = {n: start[n].to(torch.bfloat16).to(torch.float32) for n in model.weights()}
        folder = os.path.join(a.work, f"{variant}-bf16")
        names = sorted(start)
        write_shards(folder, start, set(names[: len(names) // 2]), "BF16", "BF16")
        mt.set_deterministic(threads=1, seed=0)
        model.load_weights(start)
        reference = os.path.join(a.work, f"{variant}-torch")
        os.makedirs(reference)
        want = [s["loss"] for s in mg.train_golden(model, tokens, reference)]
        out = os.path.join(a.work, f"{variant}-trainer")
        cmd = [a.trainer, "--config", os.path.join(vdir, "run.yaml"), "--no-progress", "--set", f"output.dir={out}",
               "--set", f"model.init={folder}"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            fail(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr}")
        got = losses(out)
        worst = max(abs(x - y) / abs(y) for x, y in zip(got, want)) if len(got) == len(want) else float("inf")
        print(f"{variant}: 2 BF16 shards, losses {[round(x, 6) for x in got]} vs PyTorch "
              f"{[round(y, 6) for y in want]}: worst {worst:.2e} relative")
        if worst > 1e-4:
            fail(f"{variant} from BF16 shards does not train like PyTorch from the same weights (1e-4 relative)")
        final, _ = mt.read_safetensors(os.path.join(out, "final", "model.safetensors"))
        torch_final = model.weights()
        if set(final) != set(torch_final):
            fail(f"{variant}: exported tensors {sorted(set(final) ^ set(torch_final))} differ from PyTorch's")
        for n, w in torch_final.items():
            excess = ((final[n] - w).abs() - (1e-5 + 1e-4 * w.abs())).max().item()
            if excess > 0:
                fail(f"{variant}: final {n} differs from PyTorch's by {excess:.2e} beyond 1e-5 + 1e-4 |x|")


if __name__ == "__main__":
    main()
