"""Writes the PyTorch golden fixture the C++ trainer tests compare against.

Usage (Debian's interpreter has python3-torch):

    /usr/bin/python3 tests/reference/make_golden.py --out build/golden [--seed 0]

Everything is float32, single-threaded and seeded, so two runs write the
same bytes. The fixture directory holds:

  config.json                  tiny Mixtral (V=96, d=32, f=48, L=2, H=4, KV=2, E=4, k=2)
  model.safetensors            initial weights: matrices ~ N(0, 0.1), norms ~ 1 + N(0, 0.1)
  tokens.bin                   3000 random token ids, llm.c header, uint16
  golden.safetensors           first global batch (B=4, T=16) of tokens.bin:
                                 inputs, targets            [4, 16] (as float)
                                 logits                     [4, 16, 96]
                                 router_logits.{l}          [64, 4]   per layer, all 4 sequences
                                 loss, ce_loss, aux_loss    [1]  micro_batches R=2
                                 grad.<param>               gradient of that loss
                                 loss_r1, ce_loss_r1, aux_loss_r1, grad_r1.<param>   R=1
  model_zero_expert.safetensors the same model changed so that expert 0 of layer 0
                               receives no token of the first batch
  golden_zero_expert.safetensors  the same tensors as golden.safetensors (R=2 and R=1)
                               for model_zero_expert.safetensors; its grad.* of that
                               expert's w1/w2/w3 are exactly zero
  (golden metadata: global_batch, seq_len, micro_batches; zero_layer, zero_expert)
  run.yaml                     the trainer's run file: 5 steps, R=2, cosine schedule, clipping
  train_golden.json            per step {step, loss, ce_loss, aux_loss, lr, grad_norm}
  train_final.safetensors      the weights after those 5 steps
  window/, rope_linear/,        the same run with sliding_window 6 (< T = 16), with
  rope_yarn/, tied/            linear and with yarn rope_scaling, with tied embeddings
                               (VARIANTS): each its config.json, run.yaml,
                               train_golden.json and train_final.safetensors (tied/
                               also its model.safetensors, without lm_head.weight)

Losses follow model.md: step loss = mean over micro-batches of
(CE mean + router_aux_loss_coef * aux of the micro-batch).
"""

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mixtral_torch as mt  # noqa: E402  (first: it explains a missing torch)
import torch  # noqa: E402

# The tiny model of every C++ golden test.
TINY_CONFIG = dict(
    vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
    num_experts_per_tok=2, max_position_embeddings=64, rope_theta=10000.0,
    rms_norm_eps=1e-5, router_aux_loss_coef=0.02, tie_word_embeddings=False,
)
NUM_TOKENS = 3000
GLOBAL_BATCH, SEQ_LEN, MICRO_BATCHES = 4, 16, 2

# The training run of run.yaml, replayed in torch for train_golden.json.
# RUN_YAML below must say the same (checked in check_run_yaml when PyYAML exists).
#
# Adam eps is 1e-5, not the usual 1e-8, on purpose: an element whose gradient
# is ~eps in size moves by lr * g / (|g| + eps), so float32 rounding of a
# ~1e-8 gradient (a few percent) changes its update by ~1e-4 and the final
# weights by more than check_training_run.py's 1e-5 + 1e-4*|x|. With eps
# 1e-8, float64 torch vs float32 torch already fails that tolerance for 6 of
# 9 seeds; with 1e-5 the worst element is at <= 0.22 of it. The eps placement
# (after dividing by sqrt(1 - beta2^t)) is still checked: TF-style placement
# misses by >1000x the tolerance.
TRAIN = dict(steps=5, global_batch=GLOBAL_BATCH, micro_batches=MICRO_BATCHES, seq_len=SEQ_LEN,
             lr=1.0e-2, schedule="cosine", warmup_steps=2, min_lr=1.0e-3, betas=[0.9, 0.95],
             eps=1.0e-5, weight_decay=0.1, grad_clip=0.5, seed=1234, threads=1)

RUN_YAML = """\
# hetermoe-trainer run file of the golden fixture (paths relative to this file).
model: {config: config.json, init: model.safetensors}
data: {train: tokens.bin}
train: {steps: 5, global_batch: 4, micro_batches: 2, seq_len: 16, lr: 1.0e-2, schedule: cosine, warmup_steps: 2, min_lr: 1.0e-3, betas: [0.9, 0.95], eps: 1.0e-5, weight_decay: 0.1, grad_clip: 0.5, seed: 1234, threads: 1}
output: {dir: out, checkpoint_every: 0}
"""

# The same run with another attention or RoPE: one sub-fixture each (its own
# config.json, run.yaml, train_golden.json and train_final.safetensors; the
# weights and tokens of the main fixture).
VARIANTS = {
    "window": dict(sliding_window=6),                                  # Mistral's window, 6 < T = 16
    "rope_linear": dict(rope_scaling={"type": "linear", "factor": 2.0}),  # the older "type" key
    "rope_yarn": dict(rope_scaling={"rope_type": "yarn", "factor": 4.0,    # 64 / 16
                                    "original_max_position_embeddings": 16}),
    "tied": dict(tie_word_embeddings=True),  # its own model.safetensors: no lm_head.weight
}
VARIANT_RUN_YAML = RUN_YAML.replace("model: {config: config.json, init: model.safetensors}",
                                   "model: {config: config.json, init: ../model.safetensors}").replace(
    "data: {train: tokens.bin}", "data: {train: ../tokens.bin}")

# The zero-token expert: expert ZERO_EXPERT of layer ZERO_LAYER never wins top-k.
ZERO_LAYER, ZERO_EXPERT = 0, 0
ZERO_MARGIN = 1.0  # its logit sits this far below every token's k-th best
ROUTING_MIN_GAP = 1e-5  # smallest allowed gap between k-th and (k+1)-th router probability


def check_run_yaml():
    """Asserts RUN_YAML's train section equals TRAIN (skipped without PyYAML)."""
    try:
        import yaml
    except ImportError:
        return
    assert yaml.safe_load(RUN_YAML)["train"] == TRAIN, "RUN_YAML and TRAIN disagree"


def golden_tensors(model, inputs, targets):
    """Logits, router logits, losses and gradients for R=2 and R=1 on one batch."""
    out = {"inputs": inputs.float(), "targets": targets.float()}
    with torch.no_grad():
        logits, router_logits = model(inputs)
    out["logits"] = logits
    k = model.config.num_experts_per_tok
    for layer, rl in enumerate(router_logits):
        out[f"router_logits.{layer}"] = rl
        # A float32 reimplementation must pick the same experts: no near-ties
        # between the k-th and (k+1)-th router probability.
        probs = torch.softmax(rl, dim=-1).sort(dim=-1, descending=True).values
        gap = (probs[:, k - 1] - probs[:, k]).min().item()
        assert gap > ROUTING_MIN_GAP, f"layer {layer}: top-k near-tie (gap {gap:.2e}); try another --seed"
    for micro_batches, suffix in ((MICRO_BATCHES, ""), (1, "_r1")):
        metrics = mt.forward_backward(model, inputs, targets, micro_batches)
        for key in ("loss", "ce_loss", "aux_loss"):
            out[key + suffix] = torch.tensor([metrics[key]], dtype=torch.float32)
        for name, p in model.named_parameters():
            out[f"grad{suffix}.{name}"] = p.grad.clone()
    return out


def experts_chosen(router_logits, top_k):
    """Number of (token, slot) picks per expert from one layer's router logits."""
    chosen = torch.topk(torch.softmax(router_logits, dim=-1), top_k, dim=-1).indices
    return torch.bincount(chosen.reshape(-1), minlength=router_logits.shape[-1])


def make_zero_expert_model(model, inputs):
    """Returns a model in which expert ZERO_EXPERT of layer ZERO_LAYER gets no token.

    Construction (guaranteed, not luck): embedding column 0 is set to the
    constant 0.1 (the size of the other entries) and row 0 of layer 0's
    o_proj to zero, so h[:, 0] == 0.1 for every token at layer 0's MoE input
    and m[:, 0] = 0.1 * w_post[0] / rms(h) > 0. Gate column 0 is zeroed for
    every expert (the constant must not bias routing), then set to -K for the
    starved expert, with K the smallest value that puts its logit
    ZERO_MARGIN below the top-k threshold of every token. The margin is
    small enough that its softmax probability stays non-negligible, so its
    gate row still gets a gradient -- only through the aux loss, since the
    renormalised top-k weights do not depend on unchosen logits.
    """
    assert ZERO_LAYER == 0, "the construction relies on the embedding feeding layer 0 directly"
    cfg = model.config
    weights = model.weights()
    layer = f"model.layers.{ZERO_LAYER}"
    weights["model.embed_tokens.weight"][:, 0] = 0.1
    weights[f"{layer}.self_attn.o_proj.weight"][0, :] = 0.0
    assert weights[f"{layer}.post_attention_layernorm.weight"][0] > 0
    gate = weights[f"{layer}.block_sparse_moe.gate.weight"]            # [E, d], a view
    gate[:, 0] = 0.0

    zero_model = mt.MixtralForCausalLM(cfg)
    zero_model.load_weights(weights)
    # The MoE input m of layer 0 does not depend on that layer's gate.
    captured = []
    hook = zero_model.model.layers[ZERO_LAYER].block_sparse_moe.register_forward_hook(
        lambda module, args, output: captured.append(args[0].reshape(-1, cfg.hidden_size)))
    with torch.no_grad():
        zero_model(inputs)
    hook.remove()
    m = captured[0]                                                     # [N, d]
    assert (m[:, 0] > 0).all()
    logits = m @ gate.T                                                 # [N, E], column 0 is 0
    others = [e for e in range(cfg.num_local_experts) if e != ZERO_EXPERT]
    threshold = logits[:, others].topk(cfg.num_experts_per_tok, dim=-1).values[:, -1]  # [N]
    k_needed = ((logits[:, ZERO_EXPERT] - threshold + ZERO_MARGIN) / m[:, 0]).max().clamp(min=0)
    gate[ZERO_EXPERT, 0] = -k_needed
    zero_model.load_weights(weights)

    with torch.no_grad():
        _, router_logits = zero_model(inputs)
    counts = experts_chosen(router_logits[ZERO_LAYER], cfg.num_experts_per_tok)
    assert counts[ZERO_EXPERT] == 0, f"expert {ZERO_EXPERT} still chosen {counts.tolist()}"
    others_mask = torch.arange(len(counts)) != ZERO_EXPERT
    assert (counts[others_mask] > 0).all(), f"routing collapsed: {counts.tolist()}"
    print(f"zero-expert model: gate[{ZERO_EXPERT}, 0] = {-k_needed.item():.3f}; "
          f"layer {ZERO_LAYER} picks per expert {counts.tolist()}")
    return zero_model


def train_golden(model, tokens, out_dir):
    """Replays run.yaml in torch: returns per-step metrics; writes train_final."""
    t = TRAIN
    optimizer = mt.make_optimizer(model, t["lr"], t["betas"], t["eps"], t["weight_decay"])
    reader = mt.BatchReader(tokens, t["global_batch"], t["seq_len"])
    steps = []
    for step in range(1, t["steps"] + 1):
        inputs, targets = reader.next()
        lr = mt.lr_at(step, t["lr"], t["schedule"], t["warmup_steps"], t["min_lr"], t["steps"])
        metrics = mt.train_step(model, optimizer, inputs, targets, t["micro_batches"], lr, t["grad_clip"])
        steps.append(dict(step=step, **{k: metrics[k] for k in ("loss", "ce_loss", "aux_loss", "lr", "grad_norm")}))
    clipped = sum(s["grad_norm"] > t["grad_clip"] for s in steps)
    print(f"training: {clipped} of {t['steps']} steps clipped (grad_clip {t['grad_clip']}); "
          f"grad_norm {[round(s['grad_norm'], 4) for s in steps]}")
    assert clipped > 0, "grad_clip never clipped: the fixture would not test clipping"
    mt.write_safetensors(os.path.join(out_dir, "train_final.safetensors"), model.weights())
    return steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="fixture directory (created)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and tokens")
    args = parser.parse_args()
    start = time.time()
    mt.set_deterministic(threads=1, seed=args.seed)
    os.makedirs(args.out, exist_ok=True)

    config = mt.config_from_dict(TINY_CONFIG)
    mt.save_config(config, os.path.join(args.out, "config.json"))

    model = mt.MixtralForCausalLM(config)
    mt.init_weights(model, seed=args.seed, std=0.1, norm_std=0.1)
    initial = model.weights()
    mt.write_safetensors(os.path.join(args.out, "model.safetensors"), initial)

    gen = torch.Generator().manual_seed(args.seed + 1)
    tokens = torch.randint(0, config.vocab_size, (NUM_TOKENS,), generator=gen).numpy()
    tokens_path = os.path.join(args.out, "tokens.bin")
    mt.write_token_file(tokens_path, tokens)
    tokens = mt.read_token_file(tokens_path, config.vocab_size)  # round-trip through the file

    inputs, targets = mt.BatchReader(tokens, GLOBAL_BATCH, SEQ_LEN).next()
    golden = golden_tensors(model, inputs, targets)
    batch_meta = {"global_batch": GLOBAL_BATCH, "seq_len": SEQ_LEN, "micro_batches": MICRO_BATCHES}
    mt.write_safetensors(os.path.join(args.out, "golden.safetensors"), golden, batch_meta)
    print(f"golden: loss {golden['loss'].item():.6f} (ce {golden['ce_loss'].item():.6f}, "
          f"aux {golden['aux_loss'].item():.6f}); R=1 loss {golden['loss_r1'].item():.6f}")

    zero_model = make_zero_expert_model(model, inputs)
    mt.write_safetensors(os.path.join(args.out, "model_zero_expert.safetensors"), zero_model.weights())
    zero_golden = golden_tensors(zero_model, inputs, targets)
    expert = f"model.layers.{ZERO_LAYER}.block_sparse_moe.experts.{ZERO_EXPERT}"
    for w in ("w1", "w2", "w3"):
        assert not zero_golden[f"grad.{expert}.{w}.weight"].any(), f"{expert}.{w} has a gradient"
    gate_grad = zero_golden[f"grad.model.layers.{ZERO_LAYER}.block_sparse_moe.gate.weight"][ZERO_EXPERT]
    assert gate_grad.abs().max() > 1e-5, "the starved expert's gate row should still learn (aux loss)"
    mt.write_safetensors(os.path.join(args.out, "golden_zero_expert.safetensors"), zero_golden,
                         dict(batch_meta, zero_layer=ZERO_LAYER, zero_expert=ZERO_EXPERT))

    with open(os.path.join(args.out, "run.yaml"), "w", encoding="utf-8") as f:
        f.write(RUN_YAML)
    check_run_yaml()

    model.load_weights(initial)
    steps = train_golden(model, tokens, args.out)
    with open(os.path.join(args.out, "train_golden.json"), "w", encoding="utf-8") as f:
        json.dump(steps, f, indent=2)
        f.write("\n")
    for s in steps:
        print(f"  step {s['step']}: loss {s['loss']:.6f} lr {s['lr']:.6g} grad_norm {s['grad_norm']:.6f}")

    for name, changes in VARIANTS.items():
        variant_dir = os.path.join(args.out, name)
        os.makedirs(variant_dir, exist_ok=True)
        variant_config = dataclasses.replace(config, **changes)
        mt.save_config(variant_config, os.path.join(variant_dir, "config.json"))
        with open(os.path.join(variant_dir, "run.yaml"), "w", encoding="utf-8") as f:
            f.write(VARIANT_RUN_YAML)
        variant_model = mt.MixtralForCausalLM(variant_config)
        own = {name: initial[name] for name in variant_model.weights()}
        variant_model.load_weights(own)
        if len(own) != len(initial):  # tied: the weights without lm_head, beside its run.yaml
            mt.write_safetensors(os.path.join(variant_dir, "model.safetensors"), own)
            with open(os.path.join(variant_dir, "run.yaml"), "w", encoding="utf-8") as f:
                f.write(VARIANT_RUN_YAML.replace("init: ../model.safetensors", "init: model.safetensors"))
        variant_steps = train_golden(variant_model, tokens, variant_dir)
        with open(os.path.join(variant_dir, "train_golden.json"), "w", encoding="utf-8") as f:
            json.dump(variant_steps, f, indent=2)
            f.write("\n")
        # The change must matter, or the sub-fixture tests nothing: the losses
        # differ by far more than check_training_run.py's tolerance (1e-4).
        diffs = [abs(v["loss"] - s["loss"]) / s["loss"] for v, s in zip(variant_steps, steps)]
        print(f"  {name}: loss relative to the main run {[f'{d:.1e}' for d in diffs]}")
        assert max(diffs) > 1e-3, f"{name} changes nothing"
    print(f"wrote {args.out} in {time.time() - start:.2f} s")


if __name__ == "__main__":
    main()
