// The single-GPU backend: one DeviceMicroBatch through every stage with all
// experts local (cuda_model.h), and the optimizer on the device.
#include "trainer/backend/cuda_backend.h"

#include <cuda_runtime.h>

#include <cmath>

#include "common/error.h"
#include "kernels/adamw.cuh"
#include "kernels/grad_norm.cuh"
#include "kernels/shared/math.h"
#include "trainer/backend/cuda_model.h"

namespace hetermoe::backend {

struct CudaBackend::Impl {
  Impl(const io::MixtralConfig& c, const model::ParameterLayout& l, const BackendOptions& o)
      : m(c, l, o), micro(m) {
    norm_partials.Bind(&m.allocator);
    norm_partials.Resize(kernels::kNormBlocks);
    norm_out.Bind(&m.allocator);
    norm_out.Resize(1);
  }

  model::LossParts Forward(const model::MicroBatch& mb) {
    micro.EmbedForward(mb);
    for (int64_t l = 0; l < m.config.num_hidden_layers; ++l) {
      micro.AttentionForward(l);
      micro.ExpertsForward(l);
      micro.CombineForward(l);
    }
    return micro.HeadForward();
  }

  void Backward(float loss_scale) {
    micro.HeadBackward(loss_scale);
    for (int64_t l = m.config.num_hidden_layers - 1; l >= 0; --l) {
      micro.CombineBackward(l);
      micro.ExpertsBackward(l);
      micro.AttentionBackward(l);
    }
    micro.EmbedBackward();
    unscaled = false;
  }

  // Sum of squares of the gradient buffer, in double.
  double GradSumOfSquares() {
    HM_CUDA_CHECK(kernels::LaunchSumOfSquares(m.grads.data(), m.layout.total(), norm_partials.data(),
                                              norm_out.data(), m.s()));
    double sum = 0.0;
    HM_CUDA_CHECK(cudaMemcpyAsync(&sum, norm_out.data(), sizeof(double), cudaMemcpyDeviceToHost, m.s()));
    HM_CUDA_CHECK(cudaStreamSynchronize(m.s()));
    return sum;
  }

  double ClipGradNorm(double max_norm) {
    const double loss_scale = (m.policy.dynamic_loss_scaling && !unscaled) ? m.scaler.scale() : 1.0;
    const double norm = std::sqrt(GradSumOfSquares()) / loss_scale;
    if (!std::isfinite(norm)) {
      // fp16 overflow (or a diverged run): OptimizerStep decides what to do.
      found_nonfinite = true;
      return norm;
    }
    const double factor = math::ClipCoefficient(norm, max_norm) / loss_scale;
    if (factor != 1.0)
      HM_CUDA_CHECK(kernels::LaunchScale(m.grads.data(), m.layout.total(), static_cast<float>(factor), m.s()));
    unscaled = true;
    return norm;
  }

  void OptimizerStep(double lr) {
    if (m.policy.dynamic_loss_scaling) {
      if (!unscaled && !found_nonfinite) ClipGradNorm(0.0);
      if (!m.scaler.Update(found_nonfinite)) return;  // skipped: parameters and step unchanged
    }
    ++m.optimizer_step;
    const auto& a = m.options.adamw;
    const math::AdamWStep step = math::MakeAdamWStep(lr, a.beta1, a.beta2, a.eps, a.weight_decay, m.optimizer_step);
    for (const auto& t : m.layout.tensors())
      HM_CUDA_CHECK(kernels::LaunchAdamW(m.params.data() + t.offset, m.grads.data() + t.offset,
                                         m.exp_avg.data() + t.offset, m.exp_avg_sq.data() + t.offset, t.numel, step,
                                         t.weight_decay, m.s()));
    m.RefreshCompute16();
  }

  DeviceModel m;
  DeviceMicroBatch micro;
  kernels::DeviceBuffer<double> norm_partials, norm_out;
  bool unscaled = true, found_nonfinite = false;
};

CudaBackend::CudaBackend(const io::MixtralConfig& config, const model::ParameterLayout& layout,
                         const BackendOptions& options)
    : impl_(std::make_unique<Impl>(config, layout, options)) {}

CudaBackend::~CudaBackend() = default;

std::string CudaBackend::name() const {
  return impl_->m.Describe();
}

std::string CudaBackend::precision() const { return std::string(kernels::ComputeDtypeName(impl_->m.policy.compute)); }

void CudaBackend::Upload(const HostState& state) {
  DeviceModel& m = impl_->m;
  const size_t n = static_cast<size_t>(m.layout.total()), bytes = sizeof(float) * n;
  if (state.params.size() != n || state.exp_avg.size() != n || state.exp_avg_sq.size() != n)
    throw Error("CUDA backend: host state does not match the parameter layout");
  HM_CUDA_CHECK(cudaMemcpyAsync(m.params.data(), state.params.data(), bytes, cudaMemcpyHostToDevice, m.s()));
  HM_CUDA_CHECK(cudaMemcpyAsync(m.exp_avg.data(), state.exp_avg.data(), bytes, cudaMemcpyHostToDevice, m.s()));
  HM_CUDA_CHECK(cudaMemcpyAsync(m.exp_avg_sq.data(), state.exp_avg_sq.data(), bytes, cudaMemcpyHostToDevice, m.s()));
  m.optimizer_step = state.optimizer_step;
  m.RefreshCompute16();
  HM_CUDA_CHECK(cudaStreamSynchronize(m.s()));
}

void CudaBackend::Download(HostState* state) {
  DeviceModel& m = impl_->m;
  const int64_t n = m.layout.total();
  state->params.resize(n);
  state->exp_avg.resize(n);
  state->exp_avg_sq.resize(n);
  m.ToHost(m.params.data(), state->params.data(), n);
  m.ToHost(m.exp_avg.data(), state->exp_avg.data(), n);
  m.ToHost(m.exp_avg_sq.data(), state->exp_avg_sq.data(), n);
  state->optimizer_step = m.optimizer_step;
}

void CudaBackend::ZeroGrads() {
  DeviceModel& m = impl_->m;
  HM_CUDA_CHECK(cudaMemsetAsync(m.grads.data(), 0, m.grads.bytes(), m.s()));
  impl_->unscaled = true;  // zero is zero at any scale
  impl_->found_nonfinite = false;
}

model::LossParts CudaBackend::Forward(const model::MicroBatch& batch) { return impl_->Forward(batch); }
void CudaBackend::Backward(float loss_scale) { impl_->Backward(loss_scale); }

model::LossParts CudaBackend::ForwardBackward(const model::MicroBatch& batch, float loss_scale) {
  const model::LossParts loss = impl_->Forward(batch);
  impl_->Backward(loss_scale);
  return loss;
}

std::vector<std::vector<int64_t>> CudaBackend::ExpertCounts() const { return impl_->micro.ExpertCounts(); }

double CudaBackend::ClipGradNorm(double max_norm) { return impl_->ClipGradNorm(max_norm); }
void CudaBackend::OptimizerStep(double lr) { impl_->OptimizerStep(lr); }

std::vector<float> CudaBackend::DownloadGrads() {
  DeviceModel& m = impl_->m;
  std::vector<float> g(m.layout.total());
  m.ToHost(m.grads.data(), g.data(), m.layout.total());
  return g;
}

std::vector<float> CudaBackend::DownloadLogits() { return impl_->micro.DownloadLogits(); }

int64_t CudaBackend::skipped_steps() const { return impl_->m.scaler.skipped_steps(); }

double CudaBackend::LossScale() const {
  return impl_->m.policy.dynamic_loss_scaling ? impl_->m.scaler.scale() : 1.0;
}

std::unique_ptr<Backend> MakeCudaBackend(const io::MixtralConfig& config, const model::ParameterLayout& layout,
                                         const BackendOptions& options) {
  return std::make_unique<CudaBackend>(config, layout, options);
}

}  // namespace hetermoe::backend
