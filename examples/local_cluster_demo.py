#!/usr/bin/python3
"""The operator on a local cluster, for a person to watch (examples/local-cluster.sh
builds what it needs, then runs this).

Brings up a cluster of real Kubernetes parts on this machine
(tests/e2e/cluster.py: etcd, kube-apiserver, kube-scheduler,
kube-controller-manager, a kubelet stand-in that runs pods as processes,
Prometheus), installs the chart with Helm, runs hetermoe-operator with the
release's ServiceAccount, applies examples/hetermoejob-cpu.yaml (with its
checkpoints on a claim), shows the job as `kubectl get hmj -w` does until it
finishes, then prints the loss and tokens/s Prometheus scraped and where the
final checkpoint is (copied to out/local-cluster/tiny-cpu/final/, as the
claim's folder goes with the cluster). Everything is torn down on exit or
Ctrl-C.

    local_cluster_demo.py --operator PATH --trainer-dir DIR [--keep-seconds N]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))
from cluster import RELEASE, LocalCluster, Prerequisite, load_yaml_documents, trainer_image  # noqa: E402

JOB = "tiny-cpu"
CLAIM = "tiny-checkpoints"


def say(msg):
    print(f"\n==> {msg}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--operator", required=True)
    ap.add_argument("--trainer-dir", required=True)
    ap.add_argument("--keep-seconds", type=float, default=0,
                    help="keep the cluster up this long after the job finishes (KUBECONFIG is printed)")
    args = ap.parse_args()
    trainer = os.path.join(os.path.abspath(args.trainer_dir), "hetermoe-trainer")

    work = tempfile.mkdtemp(prefix="hetermoe-demo-")
    # What the trainer image ships under /opt/hetermoe/examples/tiny.
    tiny = os.path.join(work, "image-tiny")
    shutil.copytree(os.path.join(REPO, "examples", "tiny"), tiny, ignore=shutil.ignore_patterns("tokens.bin"))
    subprocess.run([os.path.join(REPO, "examples", "tiny", "make-tokens.sh"), trainer,
                    os.path.join(tiny, "tokens.bin")], check=True, capture_output=True)
    image = trainer_image(args.trainer_dir)
    image["mounts"] = {"/opt/hetermoe/examples/tiny": tiny}

    say("starting a local cluster: etcd, kube-apiserver, kube-scheduler, kube-controller-manager, "
        "a kubelet stand-in, Prometheus")
    cluster = LocalCluster(images={"hetermoe/trainer:*": image}, prometheus=True, quiet=True)
    try:
        cluster.check_prerequisites()
    except Prerequisite as e:
        print(f"cannot start the local cluster: {e}", file=sys.stderr)
        return 77 if e.kind == "envtest" else 1
    with cluster as c:
        print(f"up in {c.timings['total']:.1f} s; nodes: "
              + ", ".join(n["metadata"]["name"] for n in c.api.list("/api/v1/nodes")))
        print(f"export KUBECONFIG={c.kubeconfig}")

        say(f"helm install {RELEASE} charts/hetermoe-operator -n {c.operator_namespace} --create-namespace")
        print(c.helm("install", RELEASE, os.path.join(REPO, "charts", "hetermoe-operator"),
                     "-n", c.operator_namespace, "--create-namespace", f"--kubeconfig={c.kubeconfig}").strip())
        print("(no Deployment controller runs here: the operator's pod is played by the binary, "
              "with the release's ServiceAccount token)")
        c.start_operator(args.operator)

        say(f"a ReadWriteMany claim {CLAIM} for the checkpoints (a host folder here)")
        claim_dir = c.create_claim(CLAIM)
        docs = []
        with open(os.path.join(REPO, "examples", "hetermoejob-cpu.yaml")) as f:
            docs = load_yaml_documents(f.read())
        for d in docs:
            if d["kind"] == "HeterMoEJob":
                d["spec"]["checkpoint"] = {"claimName": CLAIM, "intervalSteps": 100}
        say(f"kubectl apply -f examples/hetermoejob-cpu.yaml  (with spec.checkpoint.claimName: {CLAIM})")
        print(c.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs)).strip())

        say(f"kubectl get hmj {JOB} -w")
        watch = subprocess.Popen([os.path.join(c.helm_dir, "kubectl"), f"--kubeconfig={c.kubeconfig}",
                                  "get", "hmj", JOB, "-w"])
        try:
            def finished():
                s = c.api.get(f"/apis/hetermoe.io/v1alpha1/namespaces/default/hetermoejobs/{JOB}").get("status", {})
                return s if s.get("state") in ("Succeeded", "Failed") else None
            status = c.wait_for(finished, 1800, f"{JOB} to finish", interval=1)
            time.sleep(1.5)  # the watch prints the last change
        finally:
            watch.terminate()
            watch.wait()

        say(f"{JOB}: {status['state']}")
        for cond in status.get("conditions", []):
            if cond["type"] == "Failed" and cond["status"] == "True":
                print(f"why: {cond.get('reason')}: {cond.get('message')}")
        progress = status.get("progress", {})
        print(f"status.progress: step {progress.get('step')}/{progress.get('totalSteps')}, "
              f"loss {progress.get('loss')}, validation loss {progress.get('valLoss')} (training.validData)")
        loss = c.prometheus_query(f'last_over_time(hetermoe_trainer_loss{{hetermoe_job="{JOB}"}}[30m])')
        tps = c.prometheus_query(f'avg_over_time(hetermoe_trainer_tokens_per_second{{hetermoe_job="{JOB}"}}[30m])')
        if loss and tps:
            print(f"Prometheus: hetermoe_trainer_loss {float(loss[0]['value'][1]):.4f} (last scraped), "
                  f"tokens/s {float(tps[0]['value'][1]):.0f} (mean of the scrapes)")
        final = os.path.join(claim_dir, "default", JOB, "final")
        if os.path.isdir(final):
            # The claim's folder goes with the cluster: keep a copy.
            kept = os.path.join(REPO, "out", "local-cluster", JOB, "final")
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(final, kept)
            print(f"final checkpoint: {CLAIM}:/default/{JOB}/final/ on the claim, copied to "
                  f"{os.path.relpath(kept, REPO)}/: " + ", ".join(sorted(os.listdir(kept))))
        if args.keep_seconds > 0:
            say(f"the cluster stays up {args.keep_seconds:.0f} s more (Ctrl-C to stop): "
                f"export KUBECONFIG={c.kubeconfig}")
            time.sleep(args.keep_seconds)
        say("tearing the cluster down")
    shutil.rmtree(work, ignore_errors=True)
    if status["state"] == "Succeeded" and "valLoss" not in status.get("progress", {}):
        print("the example sets training.validData, but the job's status has no validation loss")
        return 1
    return 0 if status["state"] == "Succeeded" else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: the cluster was torn down", file=sys.stderr)
        sys.exit(130)
