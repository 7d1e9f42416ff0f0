#!/usr/bin/python3
"""A local Kubernetes cluster made of real parts, for end-to-end tests and demos.

etcd, kube-apiserver, kube-scheduler and kube-controller-manager (garbage
collector, namespace and resource-quota controllers) built from Debian's kubernetes 1.20
sources by tests/operator/setup-envtest.sh; Nodes carrying GPU Feature
Discovery labels and nvidia.com/gpu capacity; a kubelet stand-in
(kubelet.py) that runs the pods bound to those nodes as local processes; the
operator binary with the chart's ServiceAccount and RBAC only; optionally
Debian's Prometheus scraping the pods the way the chart's PodMonitor says.
Needs root (namespaces, bind mounts, a network bridge). See README.md.

Library:

    from cluster import LocalCluster
    with LocalCluster(operator="build/operator/hetermoe-operator",
                      images={"hetermoe/trainer:*": "build/trainer"}) as c:
        c.apply_file("examples/hetermoejob-a40-v100.yaml")
        c.wait_for(lambda: c.pod("default", "x-attention-0")["status"]["phase"] == "Succeeded")

CLI (the demo): brings the cluster up, prints KUBECONFIG, waits for Ctrl-C:

    python3 tests/e2e/cluster.py up --operator PATH --trainer-dir DIR [--prometheus]
"""
import argparse
import atexit
import ctypes
import glob
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from kubeapi import ApiError, Client  # noqa: E402
from kubelet import Kubelet  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))
CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                     "hetermoe")
CHART = os.path.join(REPO, "charts", "hetermoe-operator")
CRD = os.path.join(REPO, "crds", "hetermoe.io_hetermoejobs.yaml")
RELEASE = "hetermoe-operator"

# GPU Feature Discovery values of the GPUs the examples use.
GPUS = {
    "a40": {"product": "NVIDIA-A40", "family": "ampere", "compute": (8, 6), "memory_mib": 46068},
    # "emulate": how much slower than an A40 this GPU runs attention and the
    # experts (HeterMoE's measurements): pods on such nodes get
    # HETERMOE_EMULATE, so CPU ranks standing in for it run that much slower.
    "v100": {"product": "Tesla-V100-SXM2-32GB", "family": "volta", "compute": (7, 0), "memory_mib": 32768,
             "emulate": "attention=3.7,experts=1.25"},
    "a100": {"product": "NVIDIA-A100-SXM4-80GB", "family": "ampere", "compute": (8, 0), "memory_mib": 81920},
    "h100": {"product": "NVIDIA-H100-80GB-HBM3", "family": "hopper", "compute": (9, 0), "memory_mib": 81559},
}


class Prerequisite(RuntimeError):
    """Something the cluster needs is missing; `kind` says what: "envtest"
    (the Kubernetes binaries: tests skip), "helm" or "tool"."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


def gpu_node(name, gpu="a40", gpus=1, cpu="32", memory="256Gi", labels=None, taints=None):
    """A Node spec for LocalCluster(nodes=...): GFD labels for `gpu` (a key
    of GPUS, or a dict like its values) and nvidia.com/gpu: `gpus`."""
    g = GPUS[gpu] if isinstance(gpu, str) else gpu
    lab = {"nvidia.com/gpu.product": g["product"], "nvidia.com/gpu.family": g["family"],
           "nvidia.com/gpu.compute.major": str(g["compute"][0]), "nvidia.com/gpu.compute.minor": str(g["compute"][1]),
           "nvidia.com/gpu.memory": str(g["memory_mib"]), "nvidia.com/gpu.count": str(gpus),
           "nvidia.com/gpu.present": "true"}
    lab.update(labels or {})
    env = {"HETERMOE_EMULATE": g["emulate"]} if g.get("emulate") else {}
    return {"name": name, "labels": lab, "cpu": cpu, "memory": memory, "gpus": gpus, "taints": taints or [],
            "env": env}


def cpu_node(name, cpu="32", memory="128Gi", labels=None, taints=None):
    return {"name": name, "labels": dict(labels or {}), "cpu": cpu, "memory": memory, "gpus": 0,
            "taints": taints or []}


def default_nodes():
    """2 A40 and 2 V100 nodes (one GPU each) and one CPU-only node."""
    return [gpu_node("a40-0", "a40"), gpu_node("a40-1", "a40"), gpu_node("v100-0", "v100"),
            gpu_node("v100-1", "v100"), cpu_node("cpu-0")]


def parse_nodes(spec):
    """"a40:2,v100:2,cpu:1" (TYPE:COUNT[xGPUS]) -> node specs a40-0, a40-1, ..."""
    nodes = []
    for part in filter(None, spec.split(",")):
        kind, _, count = part.partition(":")
        count, _, per = (count or "1").partition("x")
        for i in range(int(count)):
            name = f"{kind}-{i}"
            nodes.append(cpu_node(name) if kind == "cpu" else gpu_node(name, kind, gpus=int(per or 1)))
    return nodes


def trainer_image(trainer_dir):
    """The stand-in for docker/trainer.Dockerfile's image: the build's
    hetermoe-trainer (and hetermoe-plan) on PATH, its ENTRYPOINT/CMD, and the
    tiny example it ships under /opt/hetermoe/examples/tiny."""
    d = os.path.abspath(trainer_dir)
    plan_dir = os.path.join(os.path.dirname(d), "planner")  # build/planner beside build/trainer
    return {"path": [d] + ([plan_dir] if os.path.isdir(plan_dir) else []),
            "entrypoint": ["hetermoe-trainer"], "cmd": ["--help"],
            "mounts": {"/opt/hetermoe/examples/tiny": os.path.join(REPO, "examples", "tiny")}}


def reap_stale_work_dirs():
    """Temp folders of clusters whose process died without stop() (SIGKILL)."""
    for d in glob.glob(os.path.join(tempfile.gettempdir(), "hetermoe-e2e-*")) + \
            glob.glob("/dev/shm/hetermoe-e2e-etcd-*"):
        try:
            with open(os.path.join(d, "owner.pid")) as f:
                os.kill(int(f.read().strip()), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (OSError, ValueError):
            pass  # not ours, or still being set up


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pdeathsig():
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def load_yaml_documents(text):
    import yaml  # python3-yaml (docker/debian-packages.sh test)
    return [d for d in yaml.safe_load_all(text) if d]


class Proc:
    """A child process in its own process group, killed with its parent."""

    def __init__(self, name, argv, log_path, env=None):
        self.name, self.argv, self.log_path = name, argv, log_path
        with open(log_path, "ab") as log:
            self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                      start_new_session=True, preexec_fn=_pdeathsig)

    def alive(self):
        return self.p.poll() is None

    def tail(self, n=3000):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:  # the whole group, whatever is left of it
            os.killpg(self.p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            pass
        return self.p.returncode


class LocalCluster:
    """See the module docstring and README.md. Arguments:

    nodes          node specs (gpu_node()/cpu_node()); default default_nodes()
    operator       path of hetermoe-operator, started after the cluster is up
                   with the chart's ServiceAccount token (None: not started)
    images         image glob -> folder of its binaries (prepended to PATH),
                   or {"path": DIR, "entrypoint": [...]}
    trainer_dir    shorthand for images["hetermoe/trainer:*"] = trainer_dir
    prometheus     also run Debian's Prometheus (prometheus_url)
    network        "bridge" (a network namespace per pod) or "loopback"
    helm_set       extra `--set k=v` for rendering the chart
    operator_args  extra operator flags
    controller_manager  run kube-controller-manager (garbage collector, namespace)
    work_dir       where everything lives (default: a new /tmp/hetermoe-e2e-*)
    keep           leave work_dir behind on stop()
    handle_signals SIGTERM/SIGHUP raise SystemExit in the main thread (so
                   `with` blocks tear down), unless a handler is installed
    """

    def __init__(self, nodes=None, operator=None, images=None, trainer_dir=None, prometheus=False,
                 network="bridge", operator_namespace="hetermoe-system", helm_set=(), operator_args=(),
                 controller_manager=True, work_dir=None, keep=False, assets=None, helm_dir=None, quiet=False,
                 handle_signals=True):
        self.nodes = nodes if nodes is not None else default_nodes()
        self.operator_binary = operator
        self.images = dict(images or {})
        if trainer_dir:
            self.images.setdefault("hetermoe/trainer:*", trainer_image(trainer_dir))
            self.images.setdefault("*hetermoe-trainer*", trainer_image(trainer_dir))
        self.want_prometheus = prometheus
        self.network = network
        self.operator_namespace = operator_namespace
        self.helm_set = list(helm_set)
        self.operator_args = list(operator_args)
        self.want_controller_manager = controller_manager
        self.keep = keep
        self.quiet = quiet
        self.assets = assets or os.environ.get("KUBEBUILDER_ASSETS") or os.path.join(CACHE, "envtest", "bin")
        self.helm_dir = helm_dir or os.environ.get("HETERMOE_HELM_DIR") or os.path.join(CACHE, "helm")
        self.work_dir = work_dir
        self._own_work_dir = work_dir is None
        self.procs = {}
        self.api = None
        self.kubelet = None
        self.kubeconfig = None
        self.server = None
        self.prometheus_url = None
        self.operator_kubeconfig = None
        self.operator_metrics_url = None
        self.operator_health_url = None
        self._rendered = None
        self._sd_thread = None
        self._stopping = threading.Event()
        self._stopped = False
        self.timings = {}
        self.handle_signals = handle_signals

    # ----------------------------------------------------------- lifecycle
    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log(self, msg):
        if not self.quiet:
            print(f"cluster: {msg}", flush=True)

    def check_prerequisites(self):
        missing = [b for b in ("kube-apiserver", "kube-scheduler", "etcd")
                   + (("kube-controller-manager",) if self.want_controller_manager else ())
                   if not os.access(os.path.join(self.assets, b), os.X_OK)]
        if missing:
            raise Prerequisite("envtest", f"{self.assets} lacks {', '.join(missing)}: run "
                               "tests/operator/setup-envtest.sh (it builds them from Debian's kubernetes source "
                               "package)")
        tools = ["openssl"] + (["ip"] if self.network == "bridge" else [])
        if self.want_prometheus:
            tools.append("prometheus")
        for tool in tools:
            if not shutil.which(tool):
                raise Prerequisite("tool", f"{tool} is missing (docker/debian-packages.sh test)")
        if (self.operator_binary or self.want_prometheus) and not os.access(os.path.join(self.helm_dir, "helm"),
                                                                              os.X_OK):
            raise Prerequisite("helm", f"no helm in {self.helm_dir}: run tests/charts/setup-helm.sh "
                               "(or set HETERMOE_HELM_DIR)")
        if os.geteuid() != 0:
            raise RuntimeError("the local cluster's kubelet needs root (mount and network namespaces)")

    def start(self):
        t0 = time.monotonic()
        self.check_prerequisites()
        if self._own_work_dir:
            reap_stale_work_dirs()
            self.work_dir = tempfile.mkdtemp(prefix="hetermoe-e2e-")
            with open(os.path.join(self.work_dir, "owner.pid"), "w") as f:
                f.write(str(os.getpid()))
        os.makedirs(os.path.join(self.work_dir, "logs"), exist_ok=True)
        atexit.register(self.stop)
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            # SIGTERM (e.g. from a test runner) unwinds like Ctrl-C, so
            # `with LocalCluster()` / try-finally tear everything down.
            def on_term(sig, _frame):
                raise SystemExit(128 + sig)
            for sig in (signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(sig) in (signal.SIG_DFL, None):
                    signal.signal(sig, on_term)
            if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
                signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            self._certificates()
            self._start_etcd_apiserver()
            self.timings["apiserver"] = time.monotonic() - t0
            self.kubelet = Kubelet(self.api, [n["name"] for n in self.nodes], self.work_dir, images=self.images,
                                   node_env={n["name"]: n.get("env") or {} for n in self.nodes},
                                   network=self.network, log=lambda m: self.log(f"kubelet: {m}"))
            self.kubelet.setup_network()
            self._cert("kubelet", "/CN=hetermoe-local-kubelet",
                       f"subjectAltName=IP:{self.kubelet.host_ip}\nextendedKeyUsage=serverAuth\n")
            self.kubelet.serve_logs(self._path("pki", "kubelet.crt"), self._path("pki", "kubelet.key"), self.ca_file)
            self._start_scheduler()
            if self.want_controller_manager:
                self._start_controller_manager()
            self._install_crd()
            for n in self.nodes:
                self.add_node(n)
            self.kubelet.start()
            self._wait_component("kube-scheduler")
            if self.want_controller_manager:
                self._wait_component("kube-controller-manager")
            if self.operator_binary or self.want_prometheus:
                self._render_chart()
            if self.want_prometheus:
                self._start_prometheus()
            if self.operator_binary:
                self.start_operator()
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - t0
        self.log(f"up in {self.timings['total']:.1f} s (kubeconfig {self.kubeconfig})")
        return self

    def stop(self):
        if self._stopped or self.work_dir is None:
            return
        self._stopped = True
        self._stopping.set()
        if "operator" in self.procs:
            self.procs["operator"].stop(signal.SIGTERM, timeout=15)
        if self.kubelet:
            self.kubelet.stop()
        if self._sd_thread:
            self._sd_thread.join(timeout=5)
        for name in ("prometheus", "kube-controller-manager", "kube-scheduler", "kube-apiserver", "etcd"):
            if name in self.procs:
                self.procs[name].stop()
        self.procs.clear()
        etcd_dir = getattr(self, "_etcd_dir", None)
        if etcd_dir:
            shutil.rmtree(etcd_dir, ignore_errors=True)
        if self._own_work_dir and not self.keep:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        elif self.keep:
            self.log(f"kept {self.work_dir}")

    # ----------------------------------------------------------- internals
    def _path(self, *parts):
        return os.path.join(self.work_dir, *parts)

    def _openssl(self, *args):
        r = subprocess.run(["openssl", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"openssl {' '.join(args)}: {r.stdout}")

    def _cert(self, name, subject, ext):
        d = self._path("pki")
        with open(f"{d}/{name}.ext", "w") as f:
            f.write(ext)
        self._openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", f"{d}/{name}.key",
                      "-out", f"{d}/{name}.csr")
        self._openssl("x509", "-req", "-days", "7", "-in", f"{d}/{name}.csr", "-CA", f"{d}/ca.crt", "-CAkey",
                      f"{d}/ca.key", "-CAcreateserial", "-extfile", f"{d}/{name}.ext", "-out", f"{d}/{name}.crt")

    def _certificates(self):
        """A throw-away CA; serving, client and service-account keys."""
        d = self._path("pki")
        os.makedirs(d)
        self._openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "7", "-subj", "/CN=hetermoe-e2e-ca",
                      "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.crt")
        self._cert("apiserver", "/CN=kube-apiserver",
                   "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc\n"
                   "extendedKeyUsage=serverAuth\n")
        client = "extendedKeyUsage=clientAuth\n"
        self._cert("admin", "/O=system:masters/CN=kubernetes-admin", client)
        self._cert("scheduler", "/CN=system:kube-scheduler", client)
        # Run with the built-in controller identity plus system:masters: with
        # --use-service-account-credentials=false the garbage collector needs
        # to delete any kind.
        self._cert("controller-manager", "/O=system:masters/CN=system:kube-controller-manager", client)
        self._cert("apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client", client)
        self._openssl("genrsa", "-out", f"{d}/sa.key", "2048")
        self._openssl("rsa", "-in", f"{d}/sa.key", "-pubout", "-out", f"{d}/sa.pub")
        self.ca_file = f"{d}/ca.crt"

    def _kubeconfig(self, path, cert=None, token=None, namespace=None):
        user = {"token": token} if token else {"client-certificate": self._path("pki", f"{cert}.crt"),
                                              "client-key": self._path("pki", f"{cert}.key")}
        ctx = {"cluster": "hetermoe-e2e", "user": "user"}
        if namespace:
            ctx["namespace"] = namespace
        cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "hetermoe-e2e",
               "clusters": [{"name": "hetermoe-e2e", "cluster": {"server": self.server,
                                                                 "certificate-authority": self.ca_file}}],
               "users": [{"name": "user", "user": user}],
               "contexts": [{"name": "hetermoe-e2e", "context": ctx}]}
        with open(path, "w") as f:
            json.dump(cfg, f, indent=1)  # JSON is YAML
        os.chmod(path, 0o600)
        return path

    def _spawn(self, name, argv, env=None):
        self.procs[name] = Proc(name, argv, self._path("logs", f"{name}.log"), env)
        return self.procs[name]

    def _start_etcd_apiserver(self):
        d = self._path("pki")
        base = "/dev/shm" if os.path.isdir("/dev/shm") else self.work_dir
        self._etcd_dir = tempfile.mkdtemp(prefix="hetermoe-e2e-etcd-", dir=base)
        with open(os.path.join(self._etcd_dir, "owner.pid"), "w") as f:
            f.write(str(os.getpid()))
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self._spawn("etcd", [os.path.join(self.assets, "etcd"), "--data-dir", self._etcd_dir + "/data",
                             "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
                             "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                             "--initial-cluster", f"default={peer_url}", "--name", "default"])
        self.server = f"https://127.0.0.1:{api_port}"
        issuer = "https://kubernetes.default.svc.cluster.local"
        self._spawn("kube-apiserver", [
            os.path.join(self.assets, "kube-apiserver"),
            f"--etcd-servers={etcd_url}", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}", "--insecure-port=0", f"--cert-dir={d}",
            f"--tls-cert-file={d}/apiserver.crt", f"--tls-private-key-file={d}/apiserver.key",
            f"--client-ca-file={d}/ca.crt", "--authorization-mode=RBAC",
            f"--service-account-issuer={issuer}", f"--api-audiences={issuer}",
            f"--service-account-key-file={d}/sa.pub", f"--service-account-signing-key-file={d}/sa.key",
            "--service-cluster-ip-range=10.96.0.0/16", "--allow-privileged=true",
            f"--kubelet-client-certificate={d}/apiserver-kubelet-client.crt",
            f"--kubelet-client-key={d}/apiserver-kubelet-client.key",
            "--kubelet-preferred-address-types=InternalIP",
            # The kubelet stand-in mounts no projected ServiceAccount tokens,
            # and no node lifecycle controller lifts the not-ready taint.
            "--disable-admission-plugins=ServiceAccount,TaintNodesByCondition",
            "--enable-priority-and-fairness=false", "--endpoint-reconciler-type=none"])
        self.kubeconfig = self._kubeconfig(self._path("admin.kubeconfig"), cert="admin")
        self.api = Client(self.server, self.ca_file, self._path("pki", "admin.crt"), self._path("pki", "admin.key"))
        self.wait_for(lambda: self._api_ready(), 90, "kube-apiserver ready",
                      lambda: self.procs["kube-apiserver"].tail())

    def _api_ready(self):
        for name in ("etcd", "kube-apiserver"):
            if not self.procs[name].alive():
                raise RuntimeError(f"{name} exited:\n{self.procs[name].tail()}")
        try:
            return self.api.request("GET", "/readyz", raw=True).strip() == "ok" and \
                self.api.exists("/api/v1/namespaces/default")
        except (ApiError, OSError):
            return False

    def _start_component(self, binary, cert, extra):
        """kube-scheduler or kube-controller-manager: its own client
        certificate, a secure port on loopback for /healthz, no leader election."""
        port = free_port()
        kc = self._kubeconfig(self._path(f"{cert}.kubeconfig"), cert=cert)
        os.makedirs(self._path(cert))
        self._spawn(binary, [
            os.path.join(self.assets, binary), f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}", "--leader-elect=false",
            "--bind-address=127.0.0.1", f"--secure-port={port}", "--port=0", f"--cert-dir={self._path(cert)}",
            *extra])
        self._health = getattr(self, "_health", {})
        self._health[binary] = f"https://127.0.0.1:{port}/healthz"

    def _start_scheduler(self):
        self._start_component("kube-scheduler", "scheduler", [])

    def _start_controller_manager(self):
        # Only what a kubelet-less cluster can keep: no node lifecycle (nodes
        # never heartbeat), no PV binder (claims come pre-bound).
        self._start_component("kube-controller-manager", "controller-manager",
                              ["--controllers=garbagecollector,namespace,resourcequota"])

    def _wait_component(self, name):
        ctx = ssl._create_unverified_context()

        def healthy():
            if not self.procs[name].alive():
                raise RuntimeError(f"{name} exited:\n{self.procs[name].tail()}")
            try:
                with urllib.request.urlopen(self._health[name], context=ctx, timeout=2) as r:
                    return r.status == 200
            except (urllib.error.URLError, OSError):
                return False

        self.wait_for(healthy, 60, f"{name} healthy", lambda: self.procs[name].tail())

    def _install_crd(self):
        with open(CRD) as f:
            crd = load_yaml_documents(f.read())[0]
        self.api.apply(crd)
        name = crd["metadata"]["name"]
        plural = crd["spec"]["names"]["plural"]
        group = crd["spec"]["group"]
        version = next(v["name"] for v in crd["spec"]["versions"] if v.get("storage"))

        def established():
            c = self.api.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            conds = (c.get("status") or {}).get("conditions") or []
            ok = any(x["type"] == "Established" and x["status"] == "True" for x in conds)
            return ok and self.api.exists(f"/apis/{group}/{version}/{plural}")

        self.wait_for(established, 30, f"CRD {name} served")

    # --------------------------------------------------------------- nodes
    def add_node(self, spec):
        """Registers a Node (a gpu_node()/cpu_node() spec) run by the kubelet stand-in."""
        name = spec["name"]
        labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                  "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64"}
        labels.update(spec.get("labels", {}))
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
                "spec": {"taints": spec.get("taints", [])} if spec.get("taints") else {}}
        self.api.apply(node)
        resources = {"cpu": str(spec.get("cpu", "16")), "memory": str(spec.get("memory", "64Gi")),
                     "pods": "110", "ephemeral-storage": "100Gi"}
        if spec.get("gpus"):
            resources["nvidia.com/gpu"] = str(spec["gpus"])
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

        def cond(t, s, reason, msg):
            return {"type": t, "status": s, "reason": reason, "message": msg, "lastHeartbeatTime": now,
                    "lastTransitionTime": now}

        status = {"capacity": resources, "allocatable": resources,
                  "conditions": [cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "ok"),
                                 cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "ok"),
                                 cond("PIDPressure", "False", "KubeletHasSufficientPID", "ok"),
                                 cond("Ready", "True", "KubeletReady", "the local kubelet stand-in is ready")],
                  "addresses": [{"type": "InternalIP", "address": self.kubelet.host_ip},
                                {"type": "Hostname", "address": name}],
                  "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet.log_port or 10250}},
                  "nodeInfo": {"machineID": name, "systemUUID": name, "bootID": name,
                               "kernelVersion": os.uname().release, "osImage": "hetermoe local kubelet",
                               "containerRuntimeVersion": "hetermoe-local://1", "kubeletVersion": "v1.20.2",
                               "kubeProxyVersion": "v1.20.2", "operatingSystem": "linux", "architecture": "amd64"}}
        self.api.patch_status(f"/api/v1/nodes/{name}", {"status": status})
        # Whatever taints the API server added for a new node (not-ready,
        # unreachable): no node lifecycle controller would lift them.
        current = self.api.get(f"/api/v1/nodes/{name}")
        taints = current["spec"].get("taints") or []
        keep = [t for t in taints if not t["key"].startswith("node.kubernetes.io/")]
        if keep != taints:
            self.api.merge_patch(f"/api/v1/nodes/{name}", {"spec": {"taints": keep or None}})
        if name not in self.kubelet.nodes:
            self.kubelet.nodes.add(name)
        self.kubelet.node_env[name] = dict(spec.get("env") or {})

    # -------------------------------------------------------------- claims
    def create_claim(self, name, namespace="default", size="1Gi", path=None, access_modes=("ReadWriteMany",)):
        """A PersistentVolumeClaim bound to a hostPath PersistentVolume the
        way kube-scheduler accepts without a PV controller (claim names its
        volume, bind-completed annotation, both Bound). Returns the host
        folder behind it."""
        path = path or self._path("volumes", f"{namespace}-{name}")
        os.makedirs(path, exist_ok=True)
        pv_name = f"pv-{namespace}-{name}"
        pv = {"apiVersion": "v1", "kind": "PersistentVolume",
              "metadata": {"name": pv_name, "annotations": {"pv.kubernetes.io/provisioned-by": "hetermoe-e2e"}},
              "spec": {"capacity": {"storage": size}, "accessModes": list(access_modes),
                       "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                       "hostPath": {"path": path, "type": "DirectoryOrCreate"},
                       "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": namespace,
                                    "name": name}}}
        self.api.apply(pv)
        pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": name, "namespace": namespace,
                            "annotations": {"pv.kubernetes.io/bind-completed": "yes",
                                            "pv.kubernetes.io/bound-by-controller": "yes"}},
               "spec": {"accessModes": list(access_modes), "resources": {"requests": {"storage": size}},
                        "storageClassName": "", "volumeName": pv_name}}
        created = self.api.apply(pvc)
        self.api.patch_status(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}",
                              {"status": {"phase": "Bound", "accessModes": list(access_modes),
                                          "capacity": {"storage": size}}})
        self.api.merge_patch(f"/api/v1/persistentvolumes/{pv_name}",
                             {"spec": {"claimRef": {"uid": created["metadata"]["uid"],
                                                    "resourceVersion": created["metadata"]["resourceVersion"]}}})
        self.api.patch_status(f"/api/v1/persistentvolumes/{pv_name}", {"status": {"phase": "Bound"}})
        return path

    # ------------------------------------------------------- chart/operator
    def helm(self, *args):
        r = subprocess.run([os.path.join(self.helm_dir, "helm"), *args], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args)}: {r.stderr}")
        return r.stdout

    def _render_chart(self):
        sets = []
        for kv in self.helm_set + (["trainerMetrics.podMonitor.enabled=true",
                                    "metrics.serviceMonitor.enabled=true"] if self.want_prometheus else []):
            sets += ["--set", kv]
        text = self.helm("template", RELEASE, CHART, "--namespace", self.operator_namespace, *sets)
        with open(self._path("chart.yaml"), "w") as f:
            f.write(text)
        self._rendered = load_yaml_documents(text)

    def _rendered_kind(self, kind):
        return [o for o in self._rendered if o.get("kind") == kind]

    def start_operator(self, binary=None, extra_args=()):
        """Starts (or restarts) the operator with the chart's ServiceAccount:
        applies only the chart's ServiceAccount and RBAC, asks the
        TokenRequest API for a token and runs the binary with a kubeconfig
        holding just that token, with the Deployment's arguments (ports moved
        to free loopback ones)."""
        self.operator_binary = os.path.abspath(binary or self.operator_binary)
        if self._rendered is None:
            self._render_chart()
        ns = self.operator_namespace
        if not self.api.exists(f"/api/v1/namespaces/{ns}"):
            self.api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        for kind in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
            for obj in self._rendered_kind(kind):
                self.api.apply(obj, namespace=ns)
        deployment = self._rendered_kind("Deployment")[0]
        pod_spec = deployment["spec"]["template"]["spec"]
        sa = pod_spec["serviceAccountName"]
        token = self.api.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token", {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": 7 * 24 * 3600}})["status"]["token"]
        self.operator_kubeconfig = self._kubeconfig(self._path("operator.kubeconfig"), token=token, namespace=ns)
        if not getattr(self, "_operator_ports", None):
            self._operator_ports = (free_port(), free_port())
        mport, hport = self._operator_ports
        args = []
        for a in pod_spec["containers"][0].get("args", []):
            if a.startswith("--metrics-bind-address"):
                a = f"--metrics-bind-address=127.0.0.1:{mport}"
            elif a.startswith("--health-probe-bind-address"):
                a = f"--health-probe-bind-address=127.0.0.1:{hport}"
            args.append(a)
        self.operator_metrics_url = f"http://127.0.0.1:{mport}/metrics"
        self.operator_health_url = f"http://127.0.0.1:{hport}"
        if "operator" in self.procs:
            self.procs.pop("operator").stop()
        argv = [self.operator_binary, f"--kubeconfig={self.operator_kubeconfig}"] + args + \
            self.operator_args + list(extra_args)
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        proc = self._spawn("operator", argv, env)
        self.log(f"operator: {' '.join(argv[1:])}")

        def ready():
            if not proc.alive():
                raise RuntimeError(f"the operator exited ({proc.p.returncode}):\n{proc.tail()}")
            try:
                with urllib.request.urlopen(self.operator_health_url + "/readyz", timeout=2) as r:
                    return r.status == 200
            except (urllib.error.URLError, OSError):
                return False

        self.wait_for(ready, 60, "operator ready", proc.tail)
        return proc

    def stop_operator(self, sig=signal.SIGTERM, timeout=15):
        proc = self.procs.pop("operator", None)
        return proc.stop(sig, timeout) if proc else None

    def operator_logs(self):
        try:
            with open(self._path("logs", "operator.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    # ----------------------------------------------------------- prometheus
    def _start_prometheus(self):
        """Debian's Prometheus has no Kubernetes SD: pods reach it through a
        file_sd file written from the API server's pod list, with the
        relabelings prometheus-operator would generate for the chart's
        PodMonitor; the operator is a static target labelled as its
        ServiceMonitor would label it."""
        pdir = self._path("prometheus")
        os.makedirs(pdir)
        self._sd_file = os.path.join(pdir, "pods.json")
        with open(self._sd_file, "w") as f:
            f.write("[]")
        port = free_port()
        if not getattr(self, "_operator_ports", None):
            self._operator_ports = (free_port(), free_port())
        jobs = []
        for pm in self._rendered_kind("PodMonitor"):
            jobs += self._pod_monitor_jobs(pm)
        for sm in self._rendered_kind("ServiceMonitor"):
            svc = sm["metadata"]["name"]
            ns = sm["metadata"].get("namespace", self.operator_namespace)
            ep = sm["spec"]["endpoints"][0]
            jobs.append({"job_name": f"serviceMonitor/{ns}/{svc}/0", "scrape_interval": "1s",
                         "scrape_timeout": "1s", "metrics_path": ep.get("path", "/metrics"),
                         "static_configs": [{"targets": [f"127.0.0.1:{self._operator_ports[0]}"],
                                             "labels": {"job": svc, "namespace": ns, "service": svc,
                                                        "endpoint": ep.get("port", "metrics"),
                                                        "pod": f"{svc}-local", "container": "operator"}}]})
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                  "scrape_configs": jobs}
        with open(os.path.join(pdir, "prometheus.yml"), "w") as f:
            json.dump(config, f, indent=1)
        self._spawn("prometheus", ["prometheus", f"--config.file={pdir}/prometheus.yml",
                                   f"--storage.tsdb.path={pdir}/data", f"--web.listen-address=127.0.0.1:{port}",
                                   "--storage.tsdb.retention.time=1d"])
        self.prometheus_url = f"http://127.0.0.1:{port}"

        def ready():
            if not self.procs["prometheus"].alive():
                raise RuntimeError(f"prometheus exited:\n{self.procs['prometheus'].tail()}")
            try:
                with urllib.request.urlopen(self.prometheus_url + "/-/ready", timeout=2) as r:
                    return r.status == 200
            except (urllib.error.URLError, OSError):
                return False

        self.wait_for(ready, 60, "prometheus ready", self.procs["prometheus"].tail)
        self._sd_thread = threading.Thread(target=self._sd_loop, name="prometheus-sd", daemon=True)
        self._sd_thread.start()

    @staticmethod
    def _sanitize(name):
        return "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)

    def _pod_monitor_jobs(self, pm):
        ns, name = pm["metadata"].get("namespace", self.operator_namespace), pm["metadata"]["name"]
        spec = pm["spec"]
        keep = [{"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)"}]
        nsel = spec.get("namespaceSelector", {})
        if not nsel.get("any"):
            names = nsel.get("matchNames") or [ns]
            keep.append({"action": "keep", "source_labels": ["__meta_kubernetes_namespace"],
                         "regex": "(" + "|".join(names) + ")"})
        sel = spec.get("selector", {})
        for k, v in (sel.get("matchLabels") or {}).items():
            s = self._sanitize(k)
            keep.append({"action": "keep", "regex": f"({v});true", "source_labels": [
                f"__meta_kubernetes_pod_label_{s}", f"__meta_kubernetes_pod_labelpresent_{s}"]})
        for e in sel.get("matchExpressions") or []:
            s = self._sanitize(e["key"])
            op = e["operator"]
            if op == "Exists":
                keep.append({"action": "keep", "source_labels": [f"__meta_kubernetes_pod_labelpresent_{s}"],
                             "regex": "true"})
            elif op == "DoesNotExist":
                keep.append({"action": "drop", "source_labels": [f"__meta_kubernetes_pod_labelpresent_{s}"],
                             "regex": "true"})
            else:
                keep.append({"action": "keep" if op == "In" else "drop",
                             "source_labels": [f"__meta_kubernetes_pod_label_{s}",
                                               f"__meta_kubernetes_pod_labelpresent_{s}"],
                             "regex": "(" + "|".join(e.get("values", [])) + ");true"})
        jobs = []
        for i, ep in enumerate(spec.get("podMetricsEndpoints", [])):
            relabel = list(keep)
            relabel.append({"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                            "regex": ep.get("port", "metrics")})
            for src, dst in (("__meta_kubernetes_namespace", "namespace"),
                             ("__meta_kubernetes_pod_container_name", "container"),
                             ("__meta_kubernetes_pod_name", "pod")):
                relabel.append({"source_labels": [src], "target_label": dst})
            relabel.append({"target_label": "job", "replacement": f"{ns}/{name}"})
            relabel.append({"target_label": "endpoint", "replacement": ep.get("port", "metrics")})
            for r in ep.get("relabelings", []):
                out = {}
                for k, v in r.items():
                    key = {"sourceLabels": "source_labels", "targetLabel": "target_label"}.get(k, k)
                    out[key] = v.lower() if k == "action" else v
                relabel.append(out)
            jobs.append({"job_name": f"podMonitor/{ns}/{name}/{i}", "scrape_interval": "1s", "scrape_timeout": "1s",
                         "metrics_path": ep.get("path", "/metrics"),
                         "file_sd_configs": [{"files": [self._sd_file], "refresh_interval": "1s"}],
                         "relabel_configs": relabel})
        return jobs

    def _sd_targets(self):
        targets = []
        for pod in self.api.list("/api/v1/pods"):
            st, m = pod.get("status", {}), pod["metadata"]
            ip = st.get("podIP")
            if not ip:
                continue
            meta = {"__meta_kubernetes_namespace": m["namespace"], "__meta_kubernetes_pod_name": m["name"],
                    "__meta_kubernetes_pod_ip": ip, "__meta_kubernetes_pod_uid": m["uid"],
                    "__meta_kubernetes_pod_node_name": pod["spec"].get("nodeName", ""),
                    "__meta_kubernetes_pod_host_ip": st.get("hostIP", ""),
                    "__meta_kubernetes_pod_phase": st.get("phase", ""),
                    "__meta_kubernetes_pod_ready": "true" if any(
                        c["type"] == "Ready" and c["status"] == "True" for c in st.get("conditions", [])) else "false"}
            for k, v in (m.get("labels") or {}).items():
                meta[f"__meta_kubernetes_pod_label_{self._sanitize(k)}"] = v
                meta[f"__meta_kubernetes_pod_labelpresent_{self._sanitize(k)}"] = "true"
            for k, v in (m.get("annotations") or {}).items():
                meta[f"__meta_kubernetes_pod_annotation_{self._sanitize(k)}"] = v
                meta[f"__meta_kubernetes_pod_annotationpresent_{self._sanitize(k)}"] = "true"
            for ref in m.get("ownerReferences") or []:
                if ref.get("controller"):
                    meta["__meta_kubernetes_pod_controller_kind"] = ref["kind"]
                    meta["__meta_kubernetes_pod_controller_name"] = ref["name"]
            for c in pod["spec"]["containers"]:
                for p in c.get("ports", []):
                    labels = dict(meta)
                    labels.update({"__meta_kubernetes_pod_container_name": c["name"],
                                   "__meta_kubernetes_pod_container_image": c.get("image", ""),
                                   "__meta_kubernetes_pod_container_init": "false",
                                   "__meta_kubernetes_pod_container_port_name": p.get("name", ""),
                                   "__meta_kubernetes_pod_container_port_number": str(p["containerPort"]),
                                   "__meta_kubernetes_pod_container_port_protocol": p.get("protocol", "TCP")})
                    targets.append({"targets": [f"{ip}:{p['containerPort']}"], "labels": labels})
        return targets

    def _sd_loop(self):
        last = None
        while not self._stopping.wait(0.5):
            try:
                text = json.dumps(self._sd_targets(), indent=1, sort_keys=True)
            except Exception:
                continue
            if text != last:
                tmp = self._sd_file + ".tmp"
                with open(tmp, "w") as f:
                    f.write(text)
                os.replace(tmp, self._sd_file)
                last = text

    def prometheus_query(self, expr):
        """The result list of an instant query."""
        url = self.prometheus_url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())["data"]["result"]

    # -------------------------------------------------------------- helpers
    def wait_for(self, predicate, timeout=30, what="condition", detail=None, interval=0.2):
        """Polls `predicate` until it returns something truthy (returned);
        TimeoutError naming `what` (and detail()) otherwise. Exceptions other
        than ApiError 404 propagate."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                v = predicate()
                if v:
                    return v
            except ApiError as e:
                if e.status != 404:
                    raise
            if time.monotonic() >= deadline:
                extra = f"\n{detail()}" if detail else ""
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}{extra}")
            time.sleep(interval)

    def apply(self, objs, namespace="default"):
        """Creates or replaces objects (a dict or a list of dicts)."""
        out = []
        for obj in objs if isinstance(objs, list) else [objs]:
            out.append(self.api.apply(obj, namespace=namespace))
        return out if isinstance(objs, list) else out[0]

    def apply_file(self, path, namespace="default"):
        with open(path) as f:
            return self.apply(load_yaml_documents(f.read()), namespace)

    def kubectl(self, *args, check=True, input=None):
        """Runs kubectl (from the helm folder, or PATH) as the admin."""
        exe = os.path.join(self.helm_dir, "kubectl")
        if not os.access(exe, os.X_OK):
            exe = shutil.which("kubectl") or exe
        r = subprocess.run([exe, f"--kubeconfig={self.kubeconfig}", *args], input=input, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        if check and r.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {r.stdout}")
        return r.stdout

    def pod(self, namespace, name):
        return self.api.get(f"/api/v1/namespaces/{namespace}/pods/{name}")

    def pods(self, namespace="default", selector=None):
        q = {"labelSelector": selector} if selector else {}
        return self.api.list(f"/api/v1/namespaces/{namespace}/pods", **q)

    def wait_pod_phase(self, namespace, name, phases=("Succeeded",), timeout=60):
        phases = (phases,) if isinstance(phases, str) else tuple(phases)
        return self.wait_for(
            lambda: (lambda p: p if p.get("status", {}).get("phase") in phases else None)(self.pod(namespace, name)),
            timeout, f"pod {namespace}/{name} in {'/'.join(phases)}",
            lambda: json.dumps(self.api.get(f"/api/v1/namespaces/{namespace}/pods/{name}").get("status"), indent=1)
            + "\n" + self.logs(namespace, name)[-2000:])

    def logs(self, namespace, name, container=None):
        """The pod's container output (the current pod of that name, or the
        last one the kubelet ran)."""
        return self.kubelet.logs(namespace, name, container) if self.kubelet else ""

    def delay_pod_start(self, pattern, seconds):
        """Pods matching `pattern` (fnmatch on name or ns/name) start
        `seconds` after being bound."""
        self.kubelet.delay_start(pattern, seconds)

    def kill_pod(self, namespace, name, sig=signal.SIGKILL, container=None):
        """Signals the pod's container process(es) (PID 1 of their PID
        namespace: only SIGKILL, or a signal they handle, has an effect)."""
        return self.kubelet.kill(namespace, name, sig, container)


# ---------------------------------------------------------------------- CLI
def main(argv=None):
    ap = argparse.ArgumentParser(description="A local Kubernetes cluster of real parts (see tests/e2e/README.md)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="bring the cluster up and wait for Ctrl-C")
    up.add_argument("--operator", help="hetermoe-operator binary to run with the chart's RBAC")
    up.add_argument("--trainer-dir", help="folder holding hetermoe-trainer (image hetermoe/trainer:*)")
    up.add_argument("--image", action="append", default=[], metavar="GLOB=DIR",
                    help="run images matching GLOB with DIR first in PATH (repeatable)")
    up.add_argument("--prometheus", action="store_true", help="also run Prometheus")
    up.add_argument("--nodes", help="node set, e.g. a40:2,v100:2,cpu:1 (TYPE:COUNT[xGPUS]; "
                                    f"types {', '.join(GPUS)}, cpu); default a40:2,v100:2,cpu:1")
    up.add_argument("--network", choices=("bridge", "loopback"), default="bridge")
    up.add_argument("--set", action="append", default=[], dest="helm_set", help="helm --set for the chart")
    up.add_argument("--work-dir", help="keep everything here (default: a temp folder, removed at exit)")
    up.add_argument("--no-controller-manager", action="store_true")
    args = ap.parse_args(argv)

    images = dict(i.split("=", 1) for i in args.image)
    cluster = LocalCluster(nodes=parse_nodes(args.nodes) if args.nodes else None, operator=args.operator,
                           images=images, trainer_dir=args.trainer_dir, prometheus=args.prometheus,
                           network=args.network, helm_set=args.helm_set, work_dir=args.work_dir,
                           controller_manager=not args.no_controller_manager)

    def on_signal(sig, _frame):
        raise SystemExit(128 + sig)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    # Even when started in the background (where SIGINT comes ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        cluster.start()
        kubectl = os.path.join(cluster.helm_dir, "kubectl")
        print(f"\nkubeconfig: {cluster.kubeconfig}")
        print(f"export KUBECONFIG={cluster.kubeconfig}")
        if os.access(kubectl, os.X_OK):
            print(f"kubectl:    {kubectl}")
        if cluster.prometheus_url:
            print(f"prometheus: {cluster.prometheus_url}")
        if cluster.operator_binary:
            print(f"operator:   metrics {cluster.operator_metrics_url}, log {cluster._path('logs', 'operator.log')}")
        print(f"pod logs:   {cluster._path('logs')}/<ns>_<pod>_<uid>/<container>.log (or kubectl logs)")
        print("Ctrl-C stops the cluster.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
