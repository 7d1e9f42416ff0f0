#!/usr/bin/python3
"""HeterMoEJobs train end to end on a local cluster of real Kubernetes parts.

The cluster (cluster.py): etcd, kube-apiserver, kube-scheduler and
kube-controller-manager built from Debian's kubernetes sources, 2 "A40" and
2 "V100" nodes with GPU Feature Discovery labels and one nvidia.com/gpu each
(plus a CPU node), the kubelet stand-in running each pod's trainer as a
process, hetermoe-operator with the chart's ServiceAccount and RBAC, and
Debian's Prometheus scraping what the chart's PodMonitor/ServiceMonitor
select. Scenarios, each checked against an independent truth:

  zebra     examples/hetermoejob-a40-v100.yaml (model, data and training size
            changed for a CPU; attention-0 started 10 s after the expert pods)
            reaches Succeeded; kube-scheduler put attention pods on A40 and
            expert pods on V100 nodes; rank 0's metrics.jsonl has one line per
            step with exchange_bytes > 0; its losses equal ONE process training
            the operator's own run file (1e-5 for steps 1-12, 1e-3 after, once
            near-tied router choices may flip); status.progress has the last
            step and loss; Prometheus has the job's loss and tokens/s and the
            operator's reconcile counters.
  cpu       examples/hetermoejob-cpu.yaml as written reaches Succeeded (not
            by default: the README's demo, e2e.demo, runs the same example).
  faults    a reference job, then the same job with a trainer killed after a
            checkpoint, and one with a pod deleted after a checkpoint: each
            restarts once as a whole, resumes from its checkpoint and ends with
            the reference's final loss (1e-5); one restart Warning each. All
            three share a claim and never see each other's checkpoints.
  bad-data  a job whose data file does not exist is Failed in its first
            attempt with a message naming the file.
  quota     a pod refused by a ResourceQuota: Created=False with the API
            server's message, and a FailedCreate Warning Event.

    hetermoejob_e2e_test.py --operator PATH --trainer-dir DIR [--only NAME ...]

Exit 77 (skip) only when the cluster's binaries are missing.
"""
import argparse
import copy
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from cluster import REPO, LocalCluster, Prerequisite, load_yaml_documents, trainer_image  # noqa: E402

NS = "default"
RTOL = 1e-5
DRIFT_RTOL = 1e-3  # pods vs one process after router near-ties may have flipped (zebra scenario)
GPU_PRODUCT = "nvidia.com/gpu.product"


class Failure(AssertionError):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)
    print(f"ok:   {msg}", flush=True)


def close(a, b, rtol=RTOL):
    return abs(a - b) <= rtol * max(abs(a), abs(b), 1e-12)


# ------------------------------------------------------------------ helpers
def job_status(c, name, ns=NS):
    return c.api.get(f"/apis/hetermoe.io/v1alpha1/namespaces/{ns}/hetermoejobs/{name}").get("status", {})


def condition(status, kind):
    for cond in status.get("conditions", []):
        if cond["type"] == kind:
            return cond
    return None


def wait_state(c, name, states, timeout, ns=NS):
    states = (states,) if isinstance(states, str) else states

    def detail():
        s = job_status(c, name, ns)
        out = [json.dumps(s, indent=1)]
        for p in c.pods(ns, f"hetermoe.io/job-name={name}"):
            pn = p["metadata"]["name"]
            out.append(f"--- {pn} {p.get('status', {}).get('phase')} on {p['spec'].get('nodeName')}\n"
                       + c.logs(ns, pn)[-1500:])
        out.append("--- operator\n" + c.operator_logs()[-3000:])
        return "\n".join(out)
    return c.wait_for(lambda: job_status(c, name, ns).get("state") in states and job_status(c, name, ns),
                      timeout, f"job {ns}/{name} in {'/'.join(states)}", detail, interval=0.5)


def warnings(c, name, ns=NS):
    return [e for e in c.api.list(f"/api/v1/namespaces/{ns}/events")
            if e["involvedObject"].get("name") == name and e.get("type") == "Warning"]


def read_metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_file_of(c, job, ns=NS):
    cm = c.api.get(f"/api/v1/namespaces/{ns}/configmaps/{job}-plan")
    return cm["data"]


def without_parallel(run_yaml):
    """The operator's run file minus its parallel section: one process."""
    out, skipping = [], False
    for line in run_yaml.splitlines():
        if line and not line[0].isspace():
            skipping = line.startswith("parallel:")
        if not skipping:
            out.append(line)
    return "\n".join(out) + "\n"


def single_process_losses(trainer, plan_data, data_file, work):
    """Trains the operator's own run file in one process (no parallel section)."""
    os.makedirs(work, exist_ok=True)
    with open(os.path.join(work, "config.json"), "w") as f:
        f.write(plan_data["config.json"])
    run = os.path.join(work, "run.yaml")
    with open(run, "w") as f:
        f.write(without_parallel(plan_data["run.yaml"]))
    subprocess.run([trainer, "--config", run, "--no-progress", "--set", f"data.train={data_file}",
                    "--set", f"output.dir={os.path.join(work, 'out')}", "--set", "output.checkpoint_every=0",
                    "--set", "train.threads=2"], check=True, capture_output=True, text=True)
    return [m["loss"] for m in read_metrics(os.path.join(work, "out", "metrics.jsonl"))]


def example(path):
    with open(os.path.join(REPO, "examples", path)) as f:
        return load_yaml_documents(f.read())


def one_thread(template):
    """Ranks share 2 cores here: one OpenMP thread each (a template env var,
    as a user would set it)."""
    c = template["spec"]["containers"][0]
    c.setdefault("env", []).append({"name": "OMP_NUM_THREADS", "value": "1"})


def tiny_config_text():
    with open(os.path.join(REPO, "examples", "tiny", "config.json")) as f:
        return f.read()


# ---------------------------------------------------------------- scenarios
def zebra(c, args, data_dir, ckpt_dir):
    """The A40/V100 example: one zebra run across the nodes' pods."""
    docs = example("hetermoejob-a40-v100.yaml")
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    job = next(d for d in docs if d["kind"] == "HeterMoEJob")
    name = job["metadata"]["name"]
    cm["data"]["config.json"] = tiny_config_text()              # where the model lives
    t = job["spec"]["training"]                                  # a size a CPU trains in seconds
    t.update(steps=24, globalBatch=8, seqLen=64, warmupSteps=4, lr=3.0e-3, minLr=3.0e-4)
    job["spec"]["checkpoint"]["intervalSteps"] = 8
    # Node-level dedup: the ranks learn their nodes from the pods' spec.nodeName.
    job["spec"].setdefault("dispatch", {})["dedupDepth"] = "node"
    # A run of seconds: rank 0 serves its last values long enough to be scraped
    # (10 s: with 1 s service discovery and scrapes, a loaded CI machine once
    # missed a 3 s window).
    job["spec"]["monitoring"] = {"metricsLingerSeconds": 10}
    for role in ("attention", "expert"):
        one_thread(job["spec"][role]["template"])
    c.delay_pod_start(f"{name}-attention-0", 10)                 # expert pods start 10 s earlier
    t0 = time.monotonic()
    c.apply([cm, job])
    status = wait_state(c, name, ("Succeeded", "Failed"), timeout=600)
    check(status["state"] == "Succeeded", f"{name} Succeeded in {time.monotonic() - t0:.0f} s "
          f"(plan: {status.get('plan', {}).get('summary')})")
    check(status.get("restarts", 0) == 0, "no restart although attention-0 started 10 s after the expert pods")

    nodes = {n["metadata"]["name"]: n["metadata"]["labels"] for n in c.api.list("/api/v1/nodes")}
    pods = c.pods(NS, f"hetermoe.io/job-name={name}")
    roles = {}
    for p in pods:
        role = p["metadata"]["labels"]["hetermoe.io/role"]
        product = nodes[p["spec"]["nodeName"]].get(GPU_PRODUCT)
        roles.setdefault(role, set()).add(product)
    check(roles.get("attention") == {"NVIDIA-A40"} and roles.get("expert") == {"Tesla-V100-SXM2-32GB"},
          f"kube-scheduler placed attention pods on A40 and expert pods on V100 nodes ({roles})")
    # spec.dispatch.dedupDepth node reached the trainers, and so did each
    # pod's node (HETERMOE_NODE_NAME from spec.nodeName): rank 0 lists the
    # ranks' nodes, numbered in rank order as the pods landed.
    node_of_rank = {}
    for p in pods:
        env = {e["name"]: e.get("value") for e in p["spec"]["containers"][0].get("env", [])}
        node_of_rank[int(env["RANK"])] = p["spec"]["nodeName"]
    numbering = {}
    want = " ".join(str(numbering.setdefault(node_of_rank[r], len(numbering))) for r in sorted(node_of_rank))
    said = [l for l in c.logs(NS, f"{name}-attention-0").splitlines() if l.startswith("dedup: node")]
    check(said and said[0].endswith(f": {want})"),
          f"rank 0 runs dedup node with the pods' nodes ({said[0] if said else 'no dedup line'}; "
          f"nodes by rank {[node_of_rank[r] for r in sorted(node_of_rank)]})")

    metrics = read_metrics(os.path.join(ckpt_dir, NS, name, "metrics.jsonl"))
    steps = [m["step"] for m in metrics]
    check(steps == list(range(1, 25)), f"rank 0's metrics.jsonl: one line per step 1..24 (got {steps})")
    check(all(m.get("exchange_bytes", 0) > 0 for m in metrics),
          f"every step moved tokens between attention and expert pods "
          f"(exchange_bytes {metrics[0].get('exchange_bytes')}..{metrics[-1].get('exchange_bytes')})")

    plan_data = run_file_of(c, name)
    check("parallel:" in plan_data["run.yaml"] and "launch: env" in plan_data["run.yaml"],
          "the operator's run file has the parallel section every pod joins with")
    single = single_process_losses(args.trainer, plan_data, os.path.join(data_dir, "tokens.bin"),
                                   os.path.join(args.work, "zebra-single"))
    # The pods sum in another order than one process (all-reduce, dedup,
    # micro-batch split), so the losses agree to ~1e-8 until a token's router
    # choice between two near-tied experts flips; from there the two runs
    # drift apart as any two runs of a MoE do (measured on the tokenized
    # licences: <= 7e-8 through step 13, up to 6e-5 by step 21). So: 1e-5 for
    # the first half, 1e-3 for every step.
    rel = [abs(a["loss"] - b) / abs(b) for a, b in zip(metrics, single)]
    check(len(single) == 24 and max(rel[:12]) <= RTOL and max(rel) <= DRIFT_RTOL,
          f"the pods' losses equal one process training the operator's run file (steps 1-12: max rel diff "
          f"{max(rel[:12]):.2e} <= {RTOL:g}; all 24: {max(rel):.2e} <= {DRIFT_RTOL:g})")

    progress = status.get("progress", {})
    check(progress.get("step") == 24 and close(progress.get("loss", float("nan")), metrics[-1]["loss"]),
          f"status.progress holds the last step and loss ({progress})")
    check(os.path.isdir(os.path.join(ckpt_dir, NS, name, "final")), "the final checkpoint is in the job's folder")

    # Prometheus (scraping rank 0 as the PodMonitor selects it, and the
    # operator). The pod has finished, so its series ended: look back.
    loss = c.wait_for(lambda: c.prometheus_query(f'last_over_time(hetermoe_trainer_loss{{hetermoe_job="{name}"}}[10m])'),
                      30, "Prometheus series hetermoe_trainer_loss of the job")
    tps = c.prometheus_query(f'max_over_time(hetermoe_trainer_tokens_per_second{{hetermoe_job="{name}"}}[10m])')
    check(loss and tps and loss[0]["metric"].get("rank") == "0",
          f"Prometheus has the job's loss ({float(loss[0]['value'][1]):.4f}, rank 0) and tokens/s "
          f"({float(tps[0]['value'][1]) if tps else 0:.0f}) series")
    rec = c.wait_for(lambda: c.prometheus_query('controller_runtime_reconcile_total{controller="hetermoejob"}'),
                     30, "the operator's reconcile counter in Prometheus")
    check(any(float(r["value"][1]) > 0 for r in rec), "Prometheus has the operator's reconcile counters")
    return metrics


def cpu_example(c, args):
    """examples/hetermoejob-cpu.yaml exactly as written."""
    docs = example("hetermoejob-cpu.yaml")
    name = next(d for d in docs if d["kind"] == "HeterMoEJob")["metadata"]["name"]
    t0 = time.monotonic()
    c.apply(docs)
    status = wait_state(c, name, ("Succeeded", "Failed"), timeout=900)
    check(status["state"] == "Succeeded",
          f"examples/hetermoejob-cpu.yaml as written: Succeeded in {time.monotonic() - t0:.0f} s, "
          f"final loss {status.get('progress', {}).get('loss')}")
    # training.validData/evalEvery/evalBatches reached the trainer: its last
    # evaluation is in the job's status.
    val = status.get("progress", {}).get("valLoss")
    check(isinstance(val, (int, float)) and math.isfinite(val) and val > 0,
          f"status.progress.valLoss from training.validData: {val}")


def fault_job(name, claim, steps=20, interval=6):
    job = [d for d in example("hetermoejob-cpu.yaml") if d["kind"] == "HeterMoEJob"][0]
    job = copy.deepcopy(job)
    job["metadata"]["name"] = name
    t = job["spec"]["training"]
    t.update(steps=steps, warmupSteps=4, seqLen=64, globalBatch=8)
    job["spec"]["checkpoint"] = {"claimName": claim, "intervalSteps": interval}
    job["spec"]["runPolicy"] = {"backoffLimit": 2, "cleanPodPolicy": "None"}
    for role in ("attention", "expert"):
        one_thread(job["spec"][role]["template"])
    return job


def faults(c, args, ckpt_dir):
    """Reference, killed trainer, deleted pod: same final loss, one restart each."""
    claim = "e2e-checkpoints"
    ref = "ref"
    c.apply(fault_job(ref, claim))
    wait_state(c, ref, "Succeeded", timeout=600)
    ref_metrics = read_metrics(os.path.join(ckpt_dir, NS, ref, "metrics.jsonl"))
    ref_loss = ref_metrics[-1]["loss"]
    check(len(ref_metrics) == 20, f"reference job: 20 steps, final loss {ref_loss:.6f}")

    def interrupt(name, action):
        c.apply(fault_job(name, claim))
        folder = os.path.join(ckpt_dir, NS, name)
        c.wait_for(lambda: os.path.isdir(os.path.join(folder, "checkpoint-6")), 300,
                   f"{name}'s checkpoint-6")
        check(not os.path.exists(os.path.join(folder, "final")),
              f"{name} starts in its own folder (not resumed from {ref}'s final/ on the shared claim)")
        first = read_metrics(os.path.join(folder, "metrics.jsonl"))
        check(first and first[0]["step"] == 1, f"{name}'s first attempt started at step 1")
        action(name)
        status = wait_state(c, name, ("Succeeded", "Failed"), timeout=600)
        check(status["state"] == "Succeeded" and status.get("restarts") == 1,
              f"{name}: restarted once as a whole and Succeeded (restarts {status.get('restarts')})")
        logs = c.logs(NS, f"{name}-attention-0")
        check("resumed from" in logs and "checkpoint-" in logs,
              f"{name}'s second attempt resumed from its checkpoint: "
              f"{next((ln for ln in logs.splitlines() if 'resumed from' in ln), '')}")
        metrics = read_metrics(os.path.join(folder, "metrics.jsonl"))
        final = metrics[-1]["loss"]
        check(metrics[-1]["step"] == 20 and close(final, ref_loss),
              f"{name}: final loss {final:.6f} equals the uninterrupted run's {ref_loss:.6f} (rel {RTOL})")
        restarts = [e for e in warnings(c, name) if e["reason"] in ("PodFailed", "PodDeleted")
                    or "restarting" in e.get("message", "")]
        check(len(restarts) == 1, f"{name}: one restart Warning Event ({[e['message'] for e in restarts]})")

    def kill(name):
        c.kill_pod(NS, f"{name}-expert-1")   # SIGKILL: exit 137, retryable

    def delete(name):
        c.api.delete(f"/api/v1/namespaces/{NS}/pods/{name}-expert-0")

    interrupt("killed", kill)
    interrupt("deleted", delete)
    for job in (ref, "killed", "deleted"):
        others = [d for d in os.listdir(os.path.join(ckpt_dir, NS)) if d != job]
        check(os.path.isdir(os.path.join(ckpt_dir, NS, job, "final")),
              f"{job}'s checkpoints stay in {NS}/{job}/ on the shared claim (beside {others})")


def bad_data(c, args):
    name = "bad-data"
    job = fault_job(name, "e2e-checkpoints")
    job["spec"]["training"]["data"] = "/data/missing-tokens.bin"
    job["spec"]["runPolicy"] = {"backoffLimit": 3}
    c.apply(job)
    status = wait_state(c, name, ("Succeeded", "Failed"), timeout=300)
    failed = condition(status, "Failed") or {}
    check(status["state"] == "Failed" and status.get("restarts", 0) == 0,
          f"a job whose data file is missing fails in its first attempt (restarts {status.get('restarts', 0)})")
    check("missing-tokens.bin" in failed.get("message", ""), f"the Failed condition names the file: "
          f"{failed.get('message')}")


def quota(c, args):
    ns = "quota"
    c.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    c.apply({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-pods", "namespace": ns},
             "spec": {"hard": {"pods": "0"}}}, namespace=ns)
    # The quota controller fills status.hard; admission enforces it from then on.
    c.wait_for(lambda: c.api.get(f"/api/v1/namespaces/{ns}/resourcequotas/no-pods").get("status", {}).get("hard"),
               30, "the ResourceQuota's status")
    job = fault_job("quota-job", "unused")
    job["metadata"]["namespace"] = ns
    del job["spec"]["checkpoint"]
    c.apply(job, namespace=ns)

    def refused():
        created = condition(job_status(c, "quota-job", ns), "Created")
        return created if created and created["status"] == "False" and created["reason"] == "CreateFailed" else None
    created = c.wait_for(refused, 60, "Created=False/CreateFailed on the quota job")
    check("exceeded quota" in created["message"], f"the condition carries the API server's message: "
          f"{created['message']}")
    events = c.wait_for(lambda: [e for e in warnings(c, "quota-job", ns) if e["reason"] == "FailedCreate"], 30,
                        "a FailedCreate Warning Event")
    check("exceeded quota" in events[0]["message"], "a FailedCreate Warning Event with the server's message")


SCENARIOS = ("zebra", "cpu", "faults", "bad-data", "quota")
DEFAULT = ("zebra", "faults", "bad-data", "quota")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--operator", required=True)
    ap.add_argument("--trainer-dir", required=True, help="folder holding hetermoe-trainer")
    ap.add_argument("--work", default=None)
    ap.add_argument("--only", action="append", choices=SCENARIOS)
    args = ap.parse_args()
    args.trainer = os.path.join(os.path.abspath(args.trainer_dir), "hetermoe-trainer")
    args.work = args.work or tempfile.mkdtemp(prefix="hetermoe-e2e-test-")
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    only = args.only or DEFAULT

    # The trainer image's stand-in, with the tiny example and its token file
    # where the image has them (docker/trainer.Dockerfile).
    tiny = os.path.join(args.work, "image-tiny")
    shutil.copytree(os.path.join(REPO, "examples", "tiny"), tiny,
                    ignore=shutil.ignore_patterns("tokens.bin"))
    subprocess.run([os.path.join(REPO, "examples", "tiny", "make-tokens.sh"), args.trainer,
                    os.path.join(tiny, "tokens.bin")], check=True, capture_output=True)
    image = trainer_image(args.trainer_dir)
    image["mounts"] = {"/opt/hetermoe/examples/tiny": tiny}

    try:
        cluster = LocalCluster(operator=args.operator, images={"hetermoe/trainer:*": image}, prometheus=True)
        cluster.check_prerequisites()
    except Prerequisite as e:
        if getattr(e, "kind", "envtest") == "envtest":
            print(f"SKIP: {e}")
            sys.exit(77)
        raise
    t0 = time.monotonic()
    with cluster as c:
        data_dir = c.create_claim("mixtral-data")
        shutil.copy(os.path.join(tiny, "tokens.bin"), os.path.join(data_dir, "tokens.bin"))
        ckpt_dir = c.create_claim("mixtral-checkpoints")
        fault_dir = c.create_claim("e2e-checkpoints")
        try:
            if "zebra" in only:
                zebra(c, args, data_dir, ckpt_dir)
            if "cpu" in only:
                cpu_example(c, args)
            if "faults" in only:
                faults(c, args, fault_dir)
            if "bad-data" in only:
                bad_data(c, args)
            if "quota" in only:
                quota(c, args)
        except (Failure, TimeoutError) as e:
            print(f"FAIL: {e}", flush=True)
            sys.exit(1)
    print(f"PASS: {', '.join(only)} in {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()
