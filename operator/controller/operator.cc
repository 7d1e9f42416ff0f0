// Operator wiring: see operator.h.
#include "operator/controller/operator.h"

#include <unistd.h>

#include "operator/machinery/health_server.h"
#include "operator/machinery/informer.h"
#include "operator/controller/job_controller.h"
#include "operator/machinery/leader_election.h"
#include "operator/machinery/log.h"
#include "operator/controller/node_labeller.h"
#include "operator/controller/progress_poller.h"
#include "operator/core/children.h"
#include "operator/core/placement.h"
#include "operator/kube/resource.h"

namespace hetermoe::op {

Operator::Operator(KubeConfig config, OperatorOptions options) : options_(std::move(options)) {
  if (options_.identity.empty()) {
    char host[256] = {0};
    gethostname(host, sizeof host - 1);
    options_.identity = std::string(host) + "_" + std::to_string(getpid());
  }
  metrics_ = std::make_unique<OperatorMetrics>();
  ClientOptions copts;
  copts.qps = options_.client_qps;
  copts.burst = options_.client_burst;
  OperatorMetrics* m = metrics_.get();
  copts.on_request = [m](const std::string& method, int code) { m->Request(method, code); };
  client_ = std::make_unique<KubeClient>(std::move(config), copts);
  placement_ = MakeDefaultPolicy();

  auto informer = [&](const Resource& r, const std::string& ns, const std::string& selector) {
    Informer::Options o;
    o.resource = r;
    o.namespace_ = ns;
    o.label_selector = selector;
    o.watch_timeout_seconds = options_.watch_timeout_seconds;
    return std::make_unique<Informer>(*client_, o);
  };
  jobs_ = informer(kHeterMoEJobs, options_.namespace_, "");
  pods_ = informer(kPods, options_.namespace_, kLabelJobName);
  services_ = informer(kServices, options_.namespace_, kLabelJobName);
  config_maps_ = informer(kConfigMaps, options_.namespace_, kLabelJobName);
  nodes_ = informer(kNodes, "", "");
  labeller_ = std::make_unique<NodeLabeller>(*client_, *nodes_, options_.tier_rule, m);
  JobController::Options jopts;
  jopts.tier_rule = options_.tier_rule;
  jopts.identity = options_.identity;
  jobs_controller_ = std::make_unique<JobController>(
      *client_, JobController::Informers{jobs_.get(), pods_.get(), services_.get(), config_maps_.get(), nodes_.get()},
      *placement_, jopts, m);
  progress_ = std::make_unique<ProgressPoller>(*client_, *jobs_, *pods_, options_.progress_tick_seconds);
}

Operator::~Operator() { StopAll(true); }

bool Operator::IsLeader() const { return !options_.leader_elect || (elector_ && elector_->IsLeader()); }

bool Operator::Ready() const {
  for (const auto* i : {jobs_.get(), pods_.get(), services_.get(), config_maps_.get(), nodes_.get()})
    if (!i->HasSynced()) return false;
  return true;
}

int Operator::health_port() const { return health_ ? health_->port() : 0; }

void Operator::StartControllers() {
  if (controllers_started_.exchange(true)) return;
  labeller_->Start(1);
  jobs_controller_->Start(options_.workers);
  progress_->Start();
  LogInfo("controllers started", {{"identity", options_.identity}, {"workers", std::to_string(options_.workers)}});
}

void Operator::Start() {
  if (!options_.metrics_bind_address.empty()) metrics_port_ = metrics_->Serve(options_.metrics_bind_address);
  if (!options_.health_bind_address.empty())
    health_ = std::make_unique<HealthServer>(options_.health_bind_address, [this] { return Ready(); });
  for (auto* i : {nodes_.get(), jobs_.get(), pods_.get(), services_.get(), config_maps_.get()}) i->Start();
  for (auto* i : {nodes_.get(), jobs_.get(), pods_.get(), services_.get(), config_maps_.get()})
    if (!i->WaitForSync(options_.sync_timeout_seconds))
      throw Error("cache of " + i->options().resource.plural + " did not sync within " +
                  std::to_string(static_cast<int>(options_.sync_timeout_seconds)) + " s: " + i->last_error());
  LogInfo("caches synced", {{"nodes", std::to_string(nodes_->Size())}, {"jobs", std::to_string(jobs_->Size())}});
  if (!options_.leader_elect) {
    StartControllers();
    return;
  }
  LeaderElector::Options lo;
  lo.namespace_ = options_.lease_namespace;
  lo.name = options_.lease_name;
  lo.identity = options_.identity;
  lo.lease_seconds = options_.lease_seconds;
  lo.renew_deadline_seconds = options_.renew_deadline_seconds;
  lo.retry_period_seconds = options_.retry_period_seconds;
  LeaderElector::Callbacks cb;
  OperatorMetrics* m = metrics_.get();
  const std::string lease = options_.lease_name;
  m->Leader(lease, false);
  cb.on_started_leading = [this, m, lease] {
    m->Leader(lease, true);
    StartControllers();
  };
  cb.on_stopped_leading = [this, m, lease] {
    m->Leader(lease, false);
    if (!stopped_) {
      LogError("lost leadership", {{"identity", options_.identity}});
      // Another replica leads now: stop acting at once (the binary then exits).
      progress_->Stop();
      jobs_controller_->Stop();
      labeller_->Stop();
      if (options_.on_lost_leadership) options_.on_lost_leadership();
    }
  };
  cb.on_new_leader = [this](const std::string& leader) {
    if (leader != options_.identity) LogInfo("leader is elsewhere", {{"leader", leader}});
  };
  elector_ = std::make_unique<LeaderElector>(*client_, lo, cb);
  elector_thread_ = std::thread([this] { elector_->Run(); });
}

void Operator::StopAll(bool release) {
  if (stopped_.exchange(true)) return;
  if (elector_ && !release) {
    // A crash: stop the elector without handing the Lease back.
    elector_->Abandon();
  }
  if (elector_) elector_->Stop();
  if (elector_thread_.joinable()) elector_thread_.join();
  progress_->Stop();
  jobs_controller_->Stop();
  labeller_->Stop();
  for (auto* i : {jobs_.get(), pods_.get(), services_.get(), config_maps_.get(), nodes_.get()}) i->Stop();
  health_.reset();
}

void Operator::Stop() { StopAll(true); }
void Operator::Kill() { StopAll(false); }

}  // namespace hetermoe::op
