#!/usr/bin/python3
"""Smoke test of the local cluster harness (tests/e2e/cluster.py).

Brings the cluster up (2 A40 + 2 V100 + 1 CPU node) and checks the parts
play their roles:

  1. a pod asking for nvidia.com/gpu: 1 with node affinity
     nvidia.com/gpu.product In [NVIDIA-A40] is bound by kube-scheduler to an
     A40 node, runs with its ConfigMap, claim and emptyDir mounted, its
     downward-API env and DNS name, and reaches Succeeded with the
     ConfigMap's content and its pod IP in its log; the termination message
     file ends up in state.terminated.message; `kubectl logs` works through
     the API server; deleting it completes;
  2. two one-GPU A40 pods run (one per A40 node) while a third stays
     Pending with "Insufficient nvidia.com/gpu"; once one is deleted (its
     `sleep` ignores SIGTERM as a container's PID 1 does, so the grace
     period ends it) the third runs;
  3. with --operator: the operator runs with the chart's ServiceAccount
     token and labels the GPU nodes (its RBAC works).

Exits 77 (CTest SKIP_RETURN_CODE) when the envtest binaries are missing.

    cluster_smoke_test.py [--operator build/operator/hetermoe-operator]
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import LocalCluster, Prerequisite  # noqa: E402

NS = "default"
A40_AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
    {"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-A40"]}]}]}}}

failures = []


def check(ok, message):
    print(("ok:   " if ok else "FAIL: ") + message, flush=True)
    if not ok:
        failures.append(message)
    return ok


def gpu_pod(name, command, grace=None, **spec):
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": NS, "labels": {"app": "smoke"}},
           "spec": {"restartPolicy": "Never", "affinity": A40_AFFINITY,
                    "containers": [{"name": "main", "image": "debian:bookworm", "command": command,
                                    "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}
    if grace is not None:
        pod["spec"]["terminationGracePeriodSeconds"] = grace
    pod["spec"].update(spec)
    return pod


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--operator", help="also start this hetermoe-operator binary with the chart's RBAC")
    ap.add_argument("--network", default="bridge", choices=("bridge", "loopback"))
    args = ap.parse_args()
    operator = args.operator if args.operator and os.path.exists(args.operator) else None
    if args.operator and not operator:
        print(f"note: {args.operator} does not exist; the operator part is skipped", flush=True)

    t0 = time.monotonic()
    cluster = LocalCluster(operator=operator, network=args.network)
    try:
        cluster.check_prerequisites()
    except Prerequisite as e:
        if e.kind != "envtest":
            raise
        print(f"SKIP: {e}")
        return 77
    with cluster as c:
        print(f"cluster up in {time.monotonic() - t0:.1f} s", flush=True)
        api = c.api

        # 1. One A40 pod with a ConfigMap, a claim, an emptyDir, env and DNS.
        c.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "hetermoe-test"},
                 "data": {"key": "value-from-the-configmap"}})
        c.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "smoke"},
                 "spec": {"clusterIP": "None", "selector": {"app": "smoke"},
                          "ports": [{"name": "x", "port": 1234}]}})
        claim_dir = c.create_claim("smoke-data")
        script = ("cat /etc/hetermoe-test/key; echo; echo ip=$(hostname -i); echo env_ip=$POD_IP; "
                  "echo node=$NODE; echo msg=$(GREETING); getent hosts one.smoke.default.svc.cluster.local; "
                  "echo from-the-pod > /data/out.txt; echo scratch > /scratch/x; echo private > /tmp/smoke-private; "
                  "touch /etc/hetermoe-test/x 2>/dev/null && echo configmap-writable || echo configmap-read-only; "
                  "echo all-done > /dev/termination-log")
        pod = gpu_pod("one", ["sh", "-c", script], hostname="one", subdomain="smoke",
                      volumes=[{"name": "cfg", "configMap": {"name": "hetermoe-test"}},
                               {"name": "data", "persistentVolumeClaim": {"claimName": "smoke-data"}},
                               {"name": "scratch", "emptyDir": {}}])
        ctr = pod["spec"]["containers"][0]
        ctr["volumeMounts"] = [{"name": "cfg", "mountPath": "/etc/hetermoe-test", "readOnly": True},
                               {"name": "data", "mountPath": "/data"},
                               {"name": "scratch", "mountPath": "/scratch"}]
        ctr["env"] = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                      {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                      {"name": "GREETING", "value": "hello-$(NODE)"}]
        c.apply(pod)
        done = c.wait_pod_phase(NS, "one", ("Succeeded", "Failed"), timeout=30)
        node = done["spec"].get("nodeName", "")
        check(node in ("a40-0", "a40-1"), f"kube-scheduler bound the A40 pod to an A40 node ({node})")
        check(done["status"]["phase"] == "Succeeded", f"the pod Succeeded ({done['status']['phase']})")
        log = c.logs(NS, "one")
        ip = done["status"].get("podIP", "")
        print("--- log of pod one\n" + log + "---", flush=True)
        check("value-from-the-configmap" in log, "the ConfigMap's content is in the pod's log")
        check(ip and f"ip={ip}" in log and f"env_ip={ip}" in log,
              f"hostname -i and the downward-API POD_IP give the pod IP {ip}")
        check(f"node={node}" in log and f"msg=hello-{node}" in log,
              "spec.nodeName, and $(VAR) expansion in env and command")
        check(f"{ip}" in log.split("getent")[0] and "one.smoke.default.svc.cluster.local" in log,
              "the pod resolves its own DNS name")
        check("configmap-read-only" in log, "the readOnly ConfigMap mount is read-only")
        check(open(os.path.join(claim_dir, "out.txt")).read() == "from-the-pod\n",
              "the pod wrote through its claim to the PV's host folder")
        check(not os.path.exists("/tmp/smoke-private"), "the pod's /tmp is its own")
        term = done["status"]["containerStatuses"][0]["state"].get("terminated", {})
        check(term.get("exitCode") == 0 and term.get("reason") == "Completed" and
              term.get("message", "").strip() == "all-done",
              f"state.terminated has exitCode 0, Completed and the termination message ({term})")
        kl = c.kubectl("logs", "one", check=False)
        check("value-from-the-configmap" in kl, "kubectl logs reaches the kubelet stand-in through the API server")
        c.api.delete(f"/api/v1/namespaces/{NS}/pods/one")
        c.wait_for(lambda: not api.exists(f"/api/v1/namespaces/{NS}/pods/one"), 15, "pod one deleted")
        check(True, "deleting a finished pod completes")

        # Hooks, and a failing pod: a held-back start, a kill, a termination
        # message taken from the log.
        c.delay_pod_start("late-*", 3)
        t_late = time.monotonic()
        c.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "late-1"},
                 "spec": {"restartPolicy": "Never", "containers": [
                     {"name": "main", "image": "debian:bookworm", "command": ["sh", "-c", "echo boom; exit 3"],
                      "terminationMessagePolicy": "FallbackToLogsOnError"}]}})

        # 2. Two one-GPU A40 pods run; a third waits for a GPU.
        for name in ("sleep-1", "sleep-2"):
            c.apply(gpu_pod(name, ["sleep", "300"], grace=1))
        for name in ("sleep-1", "sleep-2"):
            c.wait_pod_phase(NS, name, "Running", timeout=20)
        nodes = {c.pod(NS, n)["spec"]["nodeName"] for n in ("sleep-1", "sleep-2")}
        check(nodes == {"a40-0", "a40-1"}, f"the two sleepers run on both A40 nodes ({sorted(nodes)})")
        c.apply(gpu_pod("sleep-3", ["sleep", "300"], grace=1))

        def unschedulable():
            p = c.pod(NS, "sleep-3")
            for cond in p.get("status", {}).get("conditions", []):
                if cond["type"] == "PodScheduled" and cond["status"] == "False":
                    return cond.get("message")
            return None

        msg = c.wait_for(unschedulable, 20, "sleep-3 unschedulable")
        check("Insufficient nvidia.com/gpu" in msg and c.pod(NS, "sleep-3")["status"]["phase"] == "Pending",
              f"the third pod stays Pending: {msg}")
        t = time.monotonic()
        c.api.delete(f"/api/v1/namespaces/{NS}/pods/sleep-1")
        c.wait_for(lambda: not api.exists(f"/api/v1/namespaces/{NS}/pods/sleep-1"), 20, "sleep-1 deleted")
        check(time.monotonic() - t < 10, f"sleep-1 went within its 1 s grace period ({time.monotonic() - t:.1f} s)")
        third = c.wait_pod_phase(NS, "sleep-3", "Running", timeout=30)
        check(third["spec"]["nodeName"] in ("a40-0", "a40-1"), "the third pod runs once a GPU is free")
        check(c.kill_pod(NS, "sleep-2") == 1, "kill_pod signalled sleep-2's container")
        killed = c.wait_pod_phase(NS, "sleep-2", ("Failed", "Succeeded"), timeout=10)
        term = killed["status"]["containerStatuses"][0]["state"].get("terminated", {})
        check(killed["status"]["phase"] == "Failed" and term.get("exitCode") == 137 and term.get("reason") == "Error",
              f"a killed pod is Failed with exit code 137 ({term.get('exitCode')}, {term.get('reason')})")
        late = c.wait_pod_phase(NS, "late-1", ("Failed", "Succeeded"), timeout=20)
        started = time.monotonic() - t_late
        term = late["status"]["containerStatuses"][0]["state"].get("terminated", {})
        check(started >= 3, f"delay_pod_start held late-1 back ({started:.1f} s >= 3 s)")
        check(late["status"]["phase"] == "Failed" and term.get("exitCode") == 3 and
              term.get("message", "").strip() == "boom",
              f"exit code 3 fails the pod, FallbackToLogsOnError takes the log ({term})")

        # 3. The operator with the chart's RBAC only.
        if operator:
            def tiers():
                labels = {n["metadata"]["name"]: n["metadata"].get("labels", {}).get("hetermoe.io/gpu-tier")
                          for n in api.list("/api/v1/nodes")}
                return labels if labels.get("a40-0") and labels.get("v100-0") else None
            try:
                labels = c.wait_for(tiers, 30, "GPU tier labels from the operator", c.operator_logs)
                check(True, f"the operator (chart ServiceAccount token) labelled the nodes: {labels}")
            except TimeoutError as e:
                check(False, str(e))
            check("forbidden" not in c.operator_logs().lower(), "the operator met no RBAC refusal")
    print(f"total {time.monotonic() - t0:.1f} s", flush=True)
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
