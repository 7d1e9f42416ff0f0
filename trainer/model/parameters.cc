#include "trainer/model/parameters.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <random>

#include "common/error.h"
#include "trainer/io/safetensors.h"
#include "trainer/io/safetensors_set.h"

namespace hetermoe::model {

ParameterLayout::ParameterLayout(const io::MixtralConfig& c) {
  const int64_t d = c.hidden_size, f = c.intermediate_size, hd = c.HeadDim();
  const int64_t q_out = c.num_attention_heads * hd, kv_out = c.num_key_value_heads * hd;
  embed = Add("model.embed_tokens.weight", {c.vocab_size, d}, true);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerOffsets lo;
    lo.input_norm = Add(p + "input_layernorm.weight", {d}, false);
    lo.q = Add(p + "self_attn.q_proj.weight", {q_out, d}, true);
    lo.k = Add(p + "self_attn.k_proj.weight", {kv_out, d}, true);
    lo.v = Add(p + "self_attn.v_proj.weight", {kv_out, d}, true);
    lo.o = Add(p + "self_attn.o_proj.weight", {d, q_out}, true);
    lo.post_norm = Add(p + "post_attention_layernorm.weight", {d}, false);
    lo.gate = Add(p + "block_sparse_moe.gate.weight", {c.num_local_experts, d}, true);
    for (int64_t e = 0; e < c.num_local_experts; ++e) {
      const std::string ep = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
      ExpertOffsets eo;
      eo.w1 = Add(ep + "w1.weight", {f, d}, true);
      eo.w2 = Add(ep + "w2.weight", {d, f}, true);
      eo.w3 = Add(ep + "w3.weight", {f, d}, true);
      lo.experts.push_back(eo);
    }
    layers.push_back(std::move(lo));
  }
  final_norm = Add("model.norm.weight", {d}, false);
  // Tied (tie_word_embeddings): the head reads embed_tokens, and its weight
  // gradient adds into embed_tokens' (every gradient accumulates); there is
  // no lm_head tensor, as transformers saves tied models.
  lm_head = c.tie_word_embeddings ? embed : Add("lm_head.weight", {c.vocab_size, d}, true);
}

int64_t ParameterLayout::Add(std::string name, std::vector<int64_t> shape, bool decay) {
  int64_t numel = 1;
  for (int64_t s : shape) numel *= s;
  tensors_.push_back({std::move(name), std::move(shape), total_, numel, decay});
  total_ += numel;
  return total_ - numel;
}

ParameterLayout ParameterLayout::Subset(const std::vector<bool>& keep) const {
  if (keep.size() != tensors_.size()) throw Error("ParameterLayout::Subset: mask size mismatch");
  ParameterLayout out = *this;
  out.tensors_.clear();
  out.total_ = 0;
  std::map<int64_t, int64_t> moved;  // old offset -> new
  for (size_t i = 0; i < tensors_.size(); ++i) {
    if (!keep[i]) continue;
    const TensorSlot& t = tensors_[i];
    moved[t.offset] = out.Add(t.name, t.shape, t.weight_decay);
  }
  auto remap = [&](int64_t& offset) {
    const auto it = moved.find(offset);
    offset = it == moved.end() ? kAbsent : it->second;
  };
  remap(out.embed);
  remap(out.final_norm);
  remap(out.lm_head);
  for (LayerOffsets& l : out.layers) {
    for (int64_t* o : {&l.input_norm, &l.q, &l.k, &l.v, &l.o, &l.post_norm, &l.gate}) remap(*o);
    for (ExpertOffsets& e : l.experts) {
      remap(e.w1);
      remap(e.w2);
      remap(e.w3);
    }
  }
  return out;
}

const TensorSlot* ParameterLayout::Find(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

void InitParameters(const ParameterLayout& layout, double std_dev, uint64_t seed, float* params) {
  InitParameters(layout, std_dev, seed, layout, params);
}

void InitParameters(const ParameterLayout& layout, double std_dev, uint64_t seed, const ParameterLayout& into,
                    float* params) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, static_cast<float>(std_dev));
  for (const auto& t : layout.tensors()) {
    const TensorSlot* slot = &into == &layout ? &t : into.Find(t.name);
    float* p = slot ? params + slot->offset : nullptr;
    if (t.shape.size() == 1) {
      if (p)
        for (int64_t i = 0; i < t.numel; ++i) p[i] = 1.0f;
    } else if (p) {
      for (int64_t i = 0; i < t.numel; ++i) p[i] = normal(rng);
    } else {
      for (int64_t i = 0; i < t.numel; ++i) normal(rng);  // the same draws, so the held tensors match
    }
  }
}

uint64_t LoadParameters(const ParameterLayout& layout, const std::string& path, float* params, bool others_allowed) {
  io::SafetensorsSet file = io::SafetensorsSet::Open(path);
  for (const auto& t : layout.tensors()) {
    if (!file.Has(t.name))
      throw Error(file.source() + ": tensor \"" + t.name + "\" is missing (the config expects it)");
    file.ReadInto(t.name, t.shape, params + t.offset);
  }
  if (others_allowed) return file.bytes_read();
  const bool tied = layout.lm_head == layout.embed;
  for (const std::string& name : file.Names()) {
    if (layout.Find(name)) continue;
    // Some tied checkpoints store the shared table twice; accept the copy
    // only when it is one.
    if (tied && name == "lm_head.weight") {
      const TensorSlot& embed = *layout.Find("model.embed_tokens.weight");
      std::vector<float> head(embed.numel);
      file.ReadInto(name, embed.shape, head.data());
      if (!std::equal(head.begin(), head.end(), params + embed.offset))
        throw Error(file.source() + ": tensor \"lm_head.weight\" differs from \"model.embed_tokens.weight\", but "
                    "the config ties them (tie_word_embeddings)");
      continue;
    }
    throw Error(file.source() + ": unexpected tensor \"" + name + "\" (not part of the model described by the config)");
  }
  return file.bytes_read();
}

void SaveParameters(const ParameterLayout& layout, const std::string& path, const float* buffer,
                    const std::string& prefix) {
  std::vector<io::TensorToWrite> out;
  out.reserve(layout.tensors().size());
  for (const auto& t : layout.tensors()) out.push_back({prefix + t.name, t.shape, buffer + t.offset});
  io::WriteSafetensors(path, out, {{"format", "pt"}});
}

}  // namespace hetermoe::model
