"""PyTorch reference for the model, loss, optimizer and data of model.md.

This module is the independent truth hetermoe-trainer is tested and benchmarked
against. It is plain eager PyTorch written from the contract in
docs/model.md (Hugging Face Mixtral semantics), with no code shared
with the C++ trainer:

  * MixtralConfig / load_config / config_to_json   -- HF `config.json` keys
  * read_safetensors / write_safetensors            -- the tensor file format
  * read_token_file / write_token_file, BatchReader -- llm.c token files
  * MixtralForCausalLM                              -- the model; parameter
    names are exactly the HF safetensors names (`model.layers.0....`)
  * load_balancing_loss, micro_batch_loss,
    forward_backward                                 -- the training loss
  * make_optimizer, lr_at, train_step               -- AdamW, schedule, clipping

It is a library; make_golden.py, check_training_run.py and
bench/bench_vs_torch.py use it. Run it with Debian's interpreter, which has
python3-torch:

    /usr/bin/python3 -c "import mixtral_torch"     # from tests/reference/

Notation: B sequences of T tokens, N = B*T token rows, d hidden size,
H query heads, KV key/value heads, hd head dim, E experts, k = top-k,
f expert FFN width, V vocabulary, L layers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import sys
from typing import Dict, List, Optional, Tuple

try:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as exc:  # Fail loudly, never skip: CI installs python3-torch.
    sys.exit(
        f"error: the PyTorch reference needs numpy and torch ({exc}). Install Debian's "
        f"python3-torch and run with /usr/bin/python3 (a pyenv `python3` on PATH has no torch)."
    )


# ---------------------------------------------------------------------------
# Configuration (Hugging Face MixtralConfig keys and defaults)
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class MixtralConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096                 # d
    intermediate_size: int = 14336          # f
    num_hidden_layers: int = 32             # L
    num_attention_heads: int = 32           # H
    num_key_value_heads: int = 8            # KV
    head_dim: Optional[int] = None          # hd; None = d / H
    num_local_experts: int = 8              # E
    num_experts_per_tok: int = 2            # k
    max_position_embeddings: int = 4096 * 32
    rms_norm_eps: float = 1e-5
    rope_theta: float = 1e6
    router_aux_loss_coef: float = 0.001
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    sliding_window: Optional[int] = None    # W: query t sees keys t - W < j <= t (HF Mistral)
    rope_scaling: Optional[dict] = None     # HF rope_scaling: linear, dynamic or yarn (rope_inverse_frequencies)

    @property
    def hd(self) -> int:
        return self.head_dim if self.head_dim else self.hidden_size // self.num_attention_heads

    def validate(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if not 1 <= self.num_experts_per_tok <= self.num_local_experts:
            raise ValueError("need 1 <= num_experts_per_tok <= num_local_experts")
        if self.hd % 2:
            raise ValueError("head dim must be even for rotate-half RoPE")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError("sliding_window must be >= 1 or null")


def config_from_dict(raw: dict) -> MixtralConfig:
    """Builds a config from HF `config.json` keys; unknown keys are ignored."""
    fields = {f.name for f in dataclasses.fields(MixtralConfig)}
    kwargs = {key: value for key, value in raw.items() if key in fields}
    # HF: an explicit `null` for num_key_value_heads means "same as H" (MHA);
    # an absent key takes the default 8.
    if "num_key_value_heads" in raw and raw["num_key_value_heads"] is None:
        kwargs["num_key_value_heads"] = raw.get("num_attention_heads", MixtralConfig.num_attention_heads)
    config = MixtralConfig(**kwargs)
    config.validate()
    return config


def load_config(path: str) -> MixtralConfig:
    with open(path, "r", encoding="utf-8") as f:
        return config_from_dict(json.load(f))


def config_to_json(config: MixtralConfig) -> dict:
    """A HF config.json dict for the model."""
    out = dataclasses.asdict(config)
    if out["head_dim"] is None:
        del out["head_dim"]
    out.update(model_type="mixtral", architectures=["MixtralForCausalLM"], torch_dtype="float32")
    return out


def save_config(config: MixtralConfig, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config_to_json(config), f, indent=2, sort_keys=True)
        f.write("\n")


# ---------------------------------------------------------------------------
# Safetensors: u64 LE header length, JSON header, raw LE data
# ---------------------------------------------------------------------------

# dtype name -> numpy dtype of the stored element (BF16 is read as raw uint16).
_SAFETENSORS_DTYPES = {
    "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "F64": np.dtype("<f8"), "I32": np.dtype("<i4"), "I64": np.dtype("<i8"),
}


def read_safetensors(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Returns ({name: float32 tensor}, metadata). F16/BF16 are widened to F32."""
    with open(path, "rb") as f:
        blob = f.read()
    (header_len,) = struct.unpack("<Q", blob[:8])
    if 8 + header_len > len(blob):
        raise ValueError(f"{path}: header length {header_len} exceeds file size {len(blob)}")
    header = json.loads(blob[8:8 + header_len].decode("utf-8"))
    metadata = header.pop("__metadata__", {}) or {}
    data = memoryview(blob)[8 + header_len:]
    tensors = {}
    for name, info in header.items():
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        shape = list(info["shape"])
        count = int(np.prod(shape)) if shape else 1
        if end - begin != count * dtype.itemsize or end > len(data):
            raise ValueError(f"{path}: tensor {name} has bad data_offsets {begin}..{end}")
        array = np.frombuffer(data[begin:end], dtype=dtype).reshape(shape)
        if info["dtype"] == "BF16":  # bf16 = the top 16 bits of an f32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = torch.from_numpy(array.astype(np.float32))
    return tensors, metadata


def write_safetensors(path: str, tensors: Dict[str, torch.Tensor],
                      metadata: Optional[Dict[str, str]] = None, dtype: str = "F32") -> None:
    """Writes every tensor as F32 (or BF16, rounded by PyTorch) in name order
    (byte-for-byte deterministic).

    The JSON header is padded with spaces to a multiple of 8 bytes so the
    data section is aligned, as the reference implementation does.
    """
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu()
        if dtype == "BF16":
            array = np.ascontiguousarray(t.to(torch.bfloat16).view(torch.int16).numpy(), dtype="<i2")
        elif dtype == "F32":
            array = np.ascontiguousarray(t.to(torch.float32).numpy(), dtype="<f4")
        else:
            raise ValueError(f"write_safetensors: dtype {dtype} (F32 or BF16)")
        raw = array.tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for raw in chunks:
            f.write(raw)


# ---------------------------------------------------------------------------
# Token files (llm.c layout) and the batch reader
# ---------------------------------------------------------------------------

LLMC_MAGIC = 20240520
LLMC_HEADER_INTS = 256


def write_token_file(path: str, tokens) -> None:
    """llm.c header (magic, version, count) + uint16 ids (uint32, version 2, if any id > 65535)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    wide = tokens.size and int(tokens.max()) > 0xFFFF
    header = np.zeros(LLMC_HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = LLMC_MAGIC, 2 if wide else 1, tokens.size
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u4" if wide else "<u2").tobytes())


def read_token_file(path: str, vocab_size: Optional[int] = None) -> np.ndarray:
    """Reads a token file with or without the llm.c header; returns int64 ids.

    Without the header the file is raw uint16 (raw uint32 when vocab_size > 65535).
    """
    with open(path, "rb") as f:
        blob = f.read()
    header = np.frombuffer(blob[:4 * LLMC_HEADER_INTS], dtype="<i4") if len(blob) >= 4 * LLMC_HEADER_INTS else None
    if header is not None and header[0] == LLMC_MAGIC:
        if header[1] not in (1, 2):
            raise ValueError(f"{path}: unknown llm.c token file version {header[1]}")
        dtype = np.dtype("<u2") if header[1] == 1 else np.dtype("<u4")
        body = blob[4 * LLMC_HEADER_INTS:]
        count = int(header[2])
        if len(body) != count * dtype.itemsize:
            raise ValueError(f"{path}: header says {count} tokens, body has {len(body)} bytes")
    else:
        dtype = np.dtype("<u4") if vocab_size and vocab_size > 0xFFFF else np.dtype("<u2")
        body = blob
        if len(body) % dtype.itemsize:
            raise ValueError(f"{path}: size {len(body)} is not a multiple of {dtype.itemsize}")
    tokens = np.frombuffer(body, dtype=dtype).astype(np.int64)
    if vocab_size is not None and tokens.size and int(tokens.max()) >= vocab_size:
        bad = int(np.argmax(tokens >= vocab_size))
        raise ValueError(f"{path}: token {tokens[bad]} at position {bad} >= vocab_size {vocab_size}")
    return tokens


class BatchReader:
    """llm.c's sequential reader (model.md "Token data").

    A global batch of B sequences of length T takes the B*T+1 tokens from the
    position p: sequence i has inputs [p+i*T, p+i*T+T) and targets one token
    later. The position then advances by B*T and returns to 0 when fewer than
    B*T+1 tokens remain.
    """

    def __init__(self, tokens: np.ndarray, batch: int, seq_len: int):
        if len(tokens) < batch * seq_len + 1:
            raise ValueError(f"{len(tokens)} tokens are fewer than one batch ({batch}*{seq_len}+1)")
        self.tokens = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
        self.batch, self.seq_len, self.position = batch, seq_len, 0

    def next(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns (inputs, targets), each int64 [B, T]."""
        span = self.batch * self.seq_len
        window = self.tokens[self.position:self.position + span + 1]
        inputs = window[:-1].view(self.batch, self.seq_len)
        targets = window[1:].view(self.batch, self.seq_len)
        self.position += span
        if self.position + span + 1 > len(self.tokens):
            self.position = 0
        return inputs.clone(), targets.clone()


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------

def _at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    """float32 for fp16/bf16/fp32 inputs (HF upcasts norms and softmaxes), float64 stays."""
    return torch.promote_types(dtype, torch.float32)


class RMSNorm(nn.Module):
    """y = w * (x * rsqrt(mean(x^2) + eps)), in fp32 (HF MixtralRMSNorm)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.to(_at_least_fp32(x.dtype))
        variance = x32.pow(2).mean(-1, keepdim=True)
        return self.weight * (x32 * torch.rsqrt(variance + self.eps)).to(x.dtype)


def rope_inverse_frequencies(seq_len: int, head_dim: int, theta: float, scaling: Optional[dict] = None,
                             max_position_embeddings: int = 0) -> Tuple[torch.Tensor, float]:
    """inv_freq [hd/2] (float32) and the factor on cos/sin, following
    transformers' modeling_rope_utils for rope_scaling types default,
    linear, dynamic and yarn (_compute_*_parameters).
    """
    dim = head_dim
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    base = theta
    if kind == "dynamic":
        factor = scaling["factor"]
        seq = max(seq_len, max_position_embeddings)
        base = theta * ((factor * seq / max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))
    if kind == "linear":
        inv_freq = inv_freq / scaling["factor"]
    attention_factor = 1.0
    if kind == "yarn":
        factor = scaling["factor"]
        original = scaling.get("original_max_position_embeddings") or max_position_embeddings
        beta_fast, beta_slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1
        attention_factor = scaling.get("attention_factor") or (0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0)

        def correction_dim(rotations):
            return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

        low = max(math.floor(correction_dim(beta_fast)), 0)
        high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
        if low == high:
            high += 0.001
        pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
        extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
        ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
        keep = 1 - ramp
        inv_freq = interpolation * (1 - keep) + extrapolation * keep
    elif kind not in ("default", "linear", "dynamic"):
        raise ValueError(f"rope_scaling type {kind!r} is not implemented")
    return inv_freq, attention_factor


def rope_cos_sin(seq_len: int, head_dim: int, theta: float, scaling: Optional[dict] = None,
                 max_position_embeddings: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, hd] for positions 0..T-1, HF's rotate-half layout.

    inv_freq[i] = theta^(-2i/hd) computed in float32 exactly as HF does
    (scaled as rope_scaling says); the angle table repeats the hd/2
    frequencies over both halves of the head.
    """
    inv_freq, attention_factor = rope_inverse_frequencies(seq_len, head_dim, theta, scaling,
                                                          max_position_embeddings)  # [hd/2]
    positions = torch.arange(seq_len, dtype=torch.float32)                          # [T]
    freqs = torch.outer(positions, inv_freq)                                         # [T, hd/2]
    angles = torch.cat([freqs, freqs], dim=-1)                                       # [T, hd]
    return angles.cos() * attention_factor, angles.sin() * attention_factor


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] over the two halves of the last dim."""
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class MixtralAttention(nn.Module):
    """Causal grouped-query attention with rotate-half RoPE (and Mistral's
    sliding window when the config has one)."""

    def __init__(self, config: MixtralConfig):
        super().__init__()
        d, hd = config.hidden_size, config.hd
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, hd
        self.rope_theta = config.rope_theta
        self.rope_scaling, self.max_position_embeddings = config.rope_scaling, config.max_position_embeddings
        self.sliding_window = config.sliding_window
        self.q_proj = nn.Linear(d, self.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, self.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, self.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(self.num_heads * hd, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        H, KV, hd = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, hd).transpose(1, 2)    # [B, H, T, hd]
        k = self.k_proj(x).view(B, T, KV, hd).transpose(1, 2)   # [B, KV, T, hd]
        v = self.v_proj(x).view(B, T, KV, hd).transpose(1, 2)   # [B, KV, T, hd]
        cos, sin = rope_cos_sin(T, hd, self.rope_theta, self.rope_scaling, self.max_position_embeddings)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # HF repeat_kv: query head h reads KV head h // (H/KV).
        k = k.repeat_interleave(H // KV, dim=1)                  # [B, H, T, hd]
        v = v.repeat_interleave(H // KV, dim=1)                  # [B, H, T, hd]
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)       # [B, H, T, T]
        masked = torch.ones(T, T, dtype=torch.bool).triu(1)      # True above the diagonal
        if self.sliding_window is not None:                      # and for keys j <= t - W
            masked |= torch.ones(T, T, dtype=torch.bool).tril(-self.sliding_window)
        scores = scores.masked_fill(masked, float("-inf"))
        probs = F.softmax(scores, dim=-1, dtype=_at_least_fp32(q.dtype)).to(q.dtype)
        out = (probs @ v).transpose(1, 2).reshape(B, T, H * hd) # [B, T, H*hd]
        return self.o_proj(out)


class MixtralExpert(nn.Module):
    """SwiGLU FFN: w2(silu(w1 x) * w3 x)."""

    def __init__(self, config: MixtralConfig):
        super().__init__()
        d, f = config.hidden_size, config.intermediate_size
        self.w1 = nn.Linear(d, f, bias=False)
        self.w2 = nn.Linear(f, d, bias=False)
        self.w3 = nn.Linear(d, f, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class MixtralSparseMoeBlock(nn.Module):
    """Router (softmax over all E, top-k, renormalise) and the experts.

    Experts run one after another on the rows routed to them (HF's eager
    loop). An expert that receives no rows still runs on an empty batch, so
    its weights get an all-zero gradient instead of None: AdamW then decays
    it and its moments like any other parameter, which is what a trainer
    with dense gradient buffers does.
    """

    def __init__(self, config: MixtralConfig):
        super().__init__()
        self.num_experts, self.top_k = config.num_local_experts, config.num_experts_per_tok
        self.gate = nn.Linear(config.hidden_size, self.num_experts, bias=False)
        self.experts = nn.ModuleList(MixtralExpert(config) for _ in range(self.num_experts))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        B, T, d = x.shape
        rows = x.reshape(B * T, d)                                          # [N, d]
        router_logits = self.gate(rows)                                     # [N, E]
        probs = F.softmax(router_logits, dim=-1, dtype=_at_least_fp32(x.dtype))  # [N, E]
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)             # [N, k] each
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(rows)                                        # [N, d]
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(chosen == e)                          # rows routed to e
            y = expert(rows[token]) * weights[token, slot, None]            # [n_e, d]
            out = out.index_add(0, token, y)
        return out.view(B, T, d), router_logits


class MixtralDecoderLayer(nn.Module):
    def __init__(self, config: MixtralConfig):
        super().__init__()
        self.self_attn = MixtralAttention(config)
        self.block_sparse_moe = MixtralSparseMoeBlock(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        h = h + self.self_attn(self.input_layernorm(h))
        moe_out, router_logits = self.block_sparse_moe(self.post_attention_layernorm(h))
        return h + moe_out, router_logits


class MixtralModel(nn.Module):
    def __init__(self, config: MixtralConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(MixtralDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class MixtralForCausalLM(nn.Module):
    """state_dict() names are the HF safetensors names of model.md."""

    def __init__(self, config: MixtralConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.model = MixtralModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:  # one tensor, named model.embed_tokens.weight (HF drops lm_head)
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """input_ids int64 [B, T] -> (logits [B, T, V], router logits: L x [B*T, E])."""
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError("sequence longer than max_position_embeddings")
        h = self.model.embed_tokens(input_ids)                # [B, T, d]
        router_logits = []
        for layer in self.model.layers:
            h, layer_router_logits = layer(h)
            router_logits.append(layer_router_logits)
        return self.lm_head(self.model.norm(h)), router_logits

    def load_weights(self, tensors: Dict[str, torch.Tensor]) -> None:
        """Copies named tensors in; every parameter must be present with its shape."""
        own = dict(self.named_parameters())  # tied: lm_head is embed_tokens, listed once
        missing = sorted(set(own) - set(tensors))
        unexpected = sorted(set(tensors) - set(own))
        if missing or unexpected:
            raise ValueError(f"weights mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
        with torch.no_grad():
            for name, param in self.named_parameters():
                if tuple(tensors[name].shape) != tuple(param.shape):
                    raise ValueError(f"{name}: shape {tuple(tensors[name].shape)} != {tuple(param.shape)}")
                param.copy_(tensors[name])

    def weights(self) -> Dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in self.named_parameters()}


def init_weights(model: MixtralForCausalLM, seed: int, std: float, norm_std: float) -> None:
    """Deterministic init: matrices ~ N(0, std), RMSNorm weights ~ 1 + N(0, norm_std).

    Parameters are drawn in named_parameters() order from one generator, so
    the same (config, seed) always gives the same bytes.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            if param.dim() == 1:
                param.copy_(1.0 + norm_std * noise)
            else:
                param.copy_(std * noise)


# ---------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------

def load_balancing_loss(router_logits: List[torch.Tensor], num_experts: int, top_k: int) -> torch.Tensor:
    """HF `load_balancing_loss_func` without an attention mask.

    Rows of all layers are stacked (L*N rows). With mask[r, s, e] = 1 when
    top-k slot s of row r chose expert e:
        aux = E * sum_{s, e} mean_r(mask[r, s, e]) * mean_r(p[r, e])
    i.e. F_e = (number of (row, slot) pairs choosing e) / rows, so sum_e F_e = k
    and a perfectly uniform router gives aux = k (not 1). The mask is a
    constant; the gradient flows through the softmax probabilities only.
    """
    logits = torch.cat(router_logits, dim=0)                                  # [L*N, E]
    probs = F.softmax(logits, dim=-1, dtype=_at_least_fp32(logits.dtype))     # [L*N, E]
    _, chosen = torch.topk(probs, top_k, dim=-1)                              # [L*N, k]
    mask = F.one_hot(chosen, num_experts).to(probs.dtype)                     # [L*N, k, E]
    tokens_per_expert = mask.mean(dim=0)                                      # [k, E]
    prob_per_expert = probs.mean(dim=0)                                       # [E]
    return num_experts * torch.sum(tokens_per_expert * prob_per_expert.unsqueeze(0))


def micro_batch_loss(model: MixtralForCausalLM, inputs: torch.Tensor, targets: torch.Tensor):
    """(loss, ce, aux, logits) of one micro-batch: loss = CE mean + coef * aux."""
    cfg = model.config
    logits, router_logits = model(inputs)
    ce = F.cross_entropy(logits.reshape(-1, cfg.vocab_size).to(_at_least_fp32(logits.dtype)), targets.reshape(-1))
    aux = load_balancing_loss(router_logits, cfg.num_local_experts, cfg.num_experts_per_tok)
    return ce + cfg.router_aux_loss_coef * aux, ce, aux, logits


def forward_backward(model: MixtralForCausalLM, inputs: torch.Tensor, targets: torch.Tensor,
                     micro_batches: int) -> Dict[str, float]:
    """Accumulates into .grad the gradient of the step loss of a global batch.

    The step loss is the mean over R micro-batches (micro-batch j = sequences
    [j*G/R, (j+1)*G/R)) of (CE mean + coef * aux of that micro-batch). Grads
    are zeroed first. Returns the step's mean loss, ce_loss and aux_loss.
    """
    G = inputs.shape[0]
    if G % micro_batches:
        raise ValueError(f"global batch {G} is not divisible by micro_batches {micro_batches}")
    per = G // micro_batches
    model.zero_grad(set_to_none=False)
    for p in model.parameters():  # dense zero buffers, even for unused experts
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    totals = {"loss": 0.0, "ce_loss": 0.0, "aux_loss": 0.0}
    for j in range(micro_batches):
        rows = slice(j * per, (j + 1) * per)
        loss, ce, aux, _ = micro_batch_loss(model, inputs[rows], targets[rows])
        (loss / micro_batches).backward()
        totals["loss"] += loss.item() / micro_batches
        totals["ce_loss"] += ce.item() / micro_batches
        totals["aux_loss"] += aux.item() / micro_batches
    return totals


# ---------------------------------------------------------------------------
# Optimizer and schedule
# ---------------------------------------------------------------------------

def make_optimizer(model: nn.Module, lr: float, betas, eps: float, weight_decay: float) -> torch.optim.AdamW:
    """torch AdamW with weight decay on 2-D weights only (not RMSNorm weights)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)


def lr_at(step: int, lr: float, schedule: str = "constant", warmup_steps: int = 0,
          min_lr: float = 0.0, steps: int = 1) -> float:
    """Learning rate of optimizer step `step` (1-based).

    constant: lr. cosine: linear warm-up lr*s/warmup for s <= warmup, then
    min_lr + 0.5*(lr-min_lr)*(1+cos(pi*progress)), progress =
    (s-warmup)/max(1, steps-warmup) (so the last step uses min_lr).
    """
    if schedule == "constant":
        return lr
    if schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r}")
    if warmup_steps > 0 and step <= warmup_steps:
        return lr * step / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def train_step(model: MixtralForCausalLM, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
               targets: torch.Tensor, micro_batches: int, lr: float, grad_clip: float) -> Dict[str, float]:
    """One optimizer step. Returns loss, ce_loss, aux_loss (before the update),
    lr, and grad_norm (the global L2 norm before clipping, as
    clip_grad_norm_ returns it; with grad_clip <= 0 no clipping is applied)."""
    metrics = forward_backward(model, inputs, targets, micro_batches)
    if grad_clip > 0:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
    else:
        grad_norm = float(torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()])))
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    metrics.update(lr=lr, grad_norm=grad_norm)
    return metrics


def set_deterministic(threads: int = 1, seed: int = 0) -> None:
    """Seeds torch and fixes its intra-op thread count (1 = bitwise reproducible)."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
