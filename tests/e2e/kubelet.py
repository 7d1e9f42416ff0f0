"""A kubelet stand-in for tests/e2e's local cluster.

Runs the pods kube-scheduler bound to its nodes as local processes, the way a
kubelet + container runtime would, and reports them through pods/status:

  * network: each pod gets an IP. "bridge" mode (default): a network
    namespace per pod with a veth on a host bridge (10.N.0.0/16, gateway
    10.N.0.1), so every pod has its own ports and loopback, like real pods;
    "loopback" mode: a unique 127.0.x.y address in the host's network (pods
    then share the port space: two pods binding 0.0.0.0:PORT collide).
  * per container: `python3 kubelet.py launch` (below) joins the pod's
    network namespace and unshares mount/UTS/IPC/PID namespaces (util-linux
    2.38's `unshare --fork` loses the child's signal status): the container's
    command is PID 1 of its own PID namespace (as in a container: a signal
    without a handler is ignored, SIGKILL always works; when it exits
    everything it started dies), its hostname is the pod's, and bind mounts
    give it:
    ConfigMap/Secret volumes (files materialised at start), PVC volumes (the
    bound PV's hostPath), emptyDir, hostPath, a per-pod /etc/hosts and
    /etc/resolv.conf, a private /tmp (what the container's writable layer
    would hold; the rest of the file system is the host's) and a
    termination-message file at terminationMessagePath.
  * DNS: /etc/hosts of every pod lists `<hostname>.<subdomain>.<ns>.svc`
    (and `.svc.cluster.local`) for every running pod whose subdomain names a
    headless Service selecting it, as cluster DNS would; rewritten in place
    (same inode, so bind mounts see it) as pods come and go.
  * env: literal values, $(VAR) expansion, valueFrom fieldRef (metadata.name,
    .namespace, .uid, .labels['k'], .annotations['k'], spec.nodeName,
    spec.serviceAccountName, status.podIP, status.hostIP), resourceFieldRef,
    configMapKeyRef, secretKeyRef, envFrom.
  * images: the image name (first matching glob) picks a folder of binaries
    prepended to PATH (`images={"hetermoe/trainer:*": "/path/build/trainer"}`)
    or a dict {"path": DIR or [DIRS], "entrypoint": [...], "cmd": [...],
    "env": {...}, "workingDir": DIR, "mounts": {container path: host path}}
    standing in for the image's ENTRYPOINT/CMD/ENV/WORKDIR and the files it
    ships (bind-mounted read-only); an image that matches nothing runs with
    the host's PATH (its root file system is the host's).
  * status: Running (podIP, hostIP, conditions, containerStatuses running,
    ready) when started; on exit Succeeded/Failed with state.terminated
    {exitCode (128+signal when killed), reason Completed/Error, message,
    startedAt, finishedAt}; waiting ContainerCreating while a ConfigMap or
    claim it mounts is missing or unbound.
  * deletion: SIGTERM to every container, SIGKILL after the grace period,
    then the DELETE with gracePeriodSeconds=0 that confirms it.
  * restartPolicy: pods never restart in place (terminal once exited).

Hooks: delay_start(pattern, seconds) holds matching pods back; kill(ns, name,
sig) signals a pod's containers. Logs: log_path()/logs().
"""
import base64
import fcntl
import http.server
import fnmatch
import ipaddress
import json
import os
import queue
import re
import sys
import signal
import socketserver
import ssl
import subprocess
import threading
import time
import urllib.parse

from kubeapi import ApiError, Informer, now_rfc3339

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IMAGE_BIN = "/opt/hetermoe-local-image/bin"  # where an image stand-in's binary folders appear
LOCK_FILE = "/run/hetermoe-e2e.lock"
STATE_DIR = "/run/hetermoe-e2e"


def _set_pdeathsig():
    """In the child before exec: die with the thread that started us."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _run(*argv, check=True):
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"kubelet: {' '.join(argv)} failed: {r.stdout.strip()}")
    return r


def _expand(text, env):
    """Kubernetes' $(VAR) expansion: defined names are replaced, $$ is $,
    anything else is left as written."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i):
            end = text.find(")", i + 2)
            name = text[i + 2:end] if end >= 0 else None
            if name is not None and name in env:
                out.append(env[name])
                i = end + 1
            else:
                out.append("$(")
                i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _label_selector_matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


class VolumeNotReady(Exception):
    """A ConfigMap/Secret/claim the pod mounts is missing or not bound yet."""


class PodFailure(Exception):
    """The pod cannot run here at all (unsupported volume, no command)."""


class Container:
    def __init__(self, spec, init=False):
        self.spec = spec
        self.name = spec["name"]
        self.init = init
        self.proc = None
        self.log_path = None
        self.termination_file = None
        self.started_at = None
        self.finished_at = None
        self.exit_code = None
        self.exit_file = None
        self.message = ""
        self.reason = None

    def host_pid(self):
        """PID (host view) of the container's PID 1: the child of unshare."""
        if not self.proc or self.proc.poll() is not None:
            return None
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                kids = f.read().split()
            return int(kids[0]) if kids else None
        except OSError:
            return None

    def status(self, image_id=""):
        s = {"name": self.name, "image": self.spec.get("image", ""), "imageID": image_id,
             "restartCount": 0, "lastState": {}}
        if self.proc is not None:
            s["containerID"] = f"hetermoe-local://{self.proc.pid}"
        if self.exit_code is not None:
            term = {"exitCode": self.exit_code, "reason": self.reason, "startedAt": self.started_at,
                    "finishedAt": self.finished_at}
            if self.message:
                term["message"] = self.message
            if self.proc is not None:
                term["containerID"] = s["containerID"]
            s.update(state={"terminated": term}, ready=False, started=False)
        elif self.proc is not None:
            s.update(state={"running": {"startedAt": self.started_at}}, ready=True, started=True)
        else:
            s.update(state={"waiting": {"reason": "PodInitializing" if not self.init else "ContainerCreating"}},
                     ready=False, started=False)
        return s


class PodRuntime:
    def __init__(self, pod, not_before):
        m = pod["metadata"]
        self.uid, self.namespace, self.name = m["uid"], m["namespace"], m["name"]
        self.pod = pod
        self.not_before = not_before
        self.state = "pending"  # pending -> running -> terminated ; deleting overlays
        self.ip = None
        self.netns = None
        self.host_veth = None
        self.dir = None
        self.hosts_file = None
        self.start_time = None
        self.init_containers = [Container(c, init=True) for c in pod["spec"].get("initContainers", [])]
        self.containers = [Container(c) for c in pod["spec"]["containers"]]
        self.deleting = False
        self.kill_deadline = None
        self.waiting_reported = None
        self.status_dirty = False
        self.phase = "Pending"
        self.volume_dirs = {}
        self.hosts_content = None
        self.resolv_file = None
        self.object_gone = False

    @property
    def key(self):
        return (self.namespace, self.name)

    def hostname(self):
        return self.pod["spec"].get("hostname") or self.name

    def fqdns(self, domain):
        spec = self.pod["spec"]
        if not spec.get("subdomain"):
            return []
        base = f"{self.hostname()}.{spec['subdomain']}.{self.namespace}.svc"
        return [f"{base}.{domain}", base]

    def all_containers(self):
        return self.init_containers + self.containers


class Kubelet:
    """Plays the kubelet for `nodes` (names). Start with start(); stop()
    kills every pod it runs and removes what it set up on the host."""

    def __init__(self, client, nodes, work_dir, images=None, network="bridge", cluster_domain="cluster.local",
                 log=None, node_env=None):
        self.client = client
        self.nodes = set(nodes)
        # What a node's device plugin/runtime would put into its containers'
        # environment (the emulated GPU's speed): below the pod's own env.
        self.node_env = dict(node_env or {})
        self.work_dir = work_dir
        self.images = dict(images or {})
        self.network = network
        self.domain = cluster_domain
        self.log = log or (lambda msg: print(f"kubelet: {msg}", flush=True))
        self.pods = {}  # uid -> PodRuntime
        self.finished = {}  # (ns, name) -> last PodRuntime (for logs after deletion)
        self.done = set()  # uids run to the end: never started again
        self.services = {}
        self._events = queue.Queue()
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self._delays = []  # (pattern, seconds)
        self._signals = queue.Queue()
        self._ip_next = 2
        self._hosts_dirty = True
        self._registration = os.path.join(STATE_DIR, f"kubelet-{os.getpid()}-{id(self)}.pid")
        self.bridge = None
        self.gateway = None
        self.prefix_len = None
        self._thread = None
        self._informers = []
        self._log_server = None
        self.log_port = None
        os.makedirs(os.path.join(work_dir, "pods"), exist_ok=True)
        os.makedirs(os.path.join(work_dir, "logs"), exist_ok=True)

    # ------------------------------------------------------------ public API
    @property
    def host_ip(self):
        return self.gateway if self.network == "bridge" else "127.0.0.1"

    def setup_network(self):
        """Creates the bridge (bridge mode). Called by start(); callable
        earlier when the nodes' addresses must be known."""
        if self.network == "bridge" and self.bridge is None:
            self._setup_bridge()
        elif self.network not in ("bridge", "loopback"):
            raise ValueError(f"kubelet: network must be bridge or loopback, not {self.network}")

    def start(self):
        os.makedirs(STATE_DIR, exist_ok=True)
        with open(self._registration, "w") as f:
            f.write(str(os.getpid()))
        self.setup_network()
        self._informers = [
            Informer(self.client, "/api/v1/pods", lambda t, o: self._events.put(("pod", t, o)), "pods").start(),
            Informer(self.client, "/api/v1/services", lambda t, o: self._events.put(("svc", t, o)),
                     "services").start(),
        ]
        for inf in self._informers:
            if not inf.synced.wait(30):
                raise RuntimeError("kubelet: could not list pods/services")
        self._thread = threading.Thread(target=self._loop, name="kubelet", daemon=True)
        self._thread.start()
        return self

    def serve_logs(self, cert_file, key_file, client_ca_file):
        """Serves /containerLogs/NS/POD/CONTAINER (follow, tailLines,
        limitBytes) over HTTPS on the nodes' InternalIP, for clients with a
        certificate from `client_ca_file`: the kube-apiserver proxies
        `kubectl logs` there."""
        kubelet = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                parts = url.path.strip("/").split("/")
                q = urllib.parse.parse_qs(url.query)
                if len(parts) != 4 or parts[0] != "containerLogs":
                    self.send_error(404, "only /containerLogs/NS/POD/CONTAINER is served")
                    return
                _, ns, pod, container = parts
                path = kubelet.log_path(ns, pod, container)
                if not path or not os.path.exists(path):
                    self.send_error(404, f"no logs for {ns}/{pod}/{container}")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.end_headers()
                with open(path, "rb") as f:
                    data = f.read()
                    if "tailLines" in q:
                        n = int(q["tailLines"][0])
                        lines = data.splitlines(keepends=True)
                        data = b"".join(lines[-n:]) if n > 0 else b""
                    if "limitBytes" in q:
                        data = data[:int(q["limitBytes"][0])]
                    self.wfile.write(data)
                    follow = q.get("follow", ["false"])[0] == "true"
                    while follow and not kubelet._stop.is_set():
                        chunk = f.read()
                        if chunk:
                            self.wfile.write(chunk)
                            self.wfile.flush()
                            continue
                        rt = kubelet.runtime(ns, pod)
                        c = next((c for c in rt.all_containers() if c.name == container), None) if rt else None
                        if c is None or c.exit_code is not None or rt.uid not in kubelet.pods:
                            break
                        time.sleep(0.2)

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_file, key_file)
        ctx.load_verify_locations(client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
        server = Server((self.host_ip, 0), Handler)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self.log_port = server.server_address[1]
        self._log_server = server
        threading.Thread(target=server.serve_forever, name="kubelet-logs", daemon=True).start()

    def stop(self):
        self._stop.set()
        if self._log_server:
            self._log_server.shutdown()
            self._log_server.server_close()
        for inf in self._informers:
            inf.stop()
        if self._thread:
            self._thread.join(timeout=30)
        # Whatever still runs (the loop normally killed it): SIGKILL, reap.
        with self._lock:
            for rt in list(self.pods.values()):
                self._kill_now(rt)
                self._cleanup(rt)
            self.pods.clear()
        self._teardown_bridge()
        self._release_mount_targets()

    def delay_start(self, pattern, seconds):
        """Pods whose name matches `pattern` (fnmatch; or "ns/name") start
        `seconds` after the kubelet first sees them bound."""
        with self._lock:
            self._delays.append((pattern, float(seconds)))

    def clear_delays(self):
        with self._lock:
            self._delays.clear()

    def kill(self, namespace, name, sig=signal.SIGKILL, container=None):
        """Sends `sig` to the PID 1 of the pod's (or one container's) running
        containers. Returns the number signalled."""
        n = 0
        with self._lock:
            for rt in self.pods.values():
                if rt.key != (namespace, name):
                    continue
                for c in rt.all_containers():
                    if container and c.name != container:
                        continue
                    pid = c.host_pid()
                    if pid:
                        try:
                            os.kill(pid, sig)
                            n += 1
                        except ProcessLookupError:
                            pass
        return n

    def runtime(self, namespace, name):
        with self._lock:
            for rt in self.pods.values():
                if rt.key == (namespace, name):
                    return rt
            return self.finished.get((namespace, name))

    def log_path(self, namespace, name, container=None):
        rt = self.runtime(namespace, name)
        if rt is None:
            return None
        cs = rt.all_containers()
        c = next((c for c in cs if c.name == container), None) if container else \
            next((c for c in rt.containers if c.log_path), None)
        return c.log_path if c else None

    def logs(self, namespace, name, container=None):
        path = self.log_path(namespace, name, container)
        if not path or not os.path.exists(path):
            return ""
        with open(path, errors="replace") as f:
            return f.read()

    # ------------------------------------------------------------- network
    def _setup_bridge(self):
        os.makedirs(STATE_DIR, exist_ok=True)
        with open(LOCK_FILE, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._reap_stale_bridges()
            used = _run("ip", "-o", "-4", "addr", "show").stdout + _run("ip", "-o", "-4", "route").stdout
            for n in range(240, 255):
                if f" 10.{n}." in used or f"\n10.{n}." in "\n" + used:
                    continue
                name = f"hmbr{n}"
                if _run("ip", "link", "show", name, check=False).returncode == 0:
                    continue
                _run("ip", "link", "add", name, "type", "bridge")
                _run("ip", "addr", "add", f"10.{n}.0.1/16", "dev", name)
                _run("ip", "link", "set", name, "up")
                with open(os.path.join(STATE_DIR, name + ".pid"), "w") as f:
                    f.write(str(os.getpid()))
                self.bridge, self.gateway, self.prefix_len, self._net = name, f"10.{n}.0.1", 16, n
                return
        raise RuntimeError("kubelet: no free 10.N.0.0/16 (N in 240..254) for the pod bridge")

    @staticmethod
    def _reap_stale_bridges():
        """Bridges and namespaces left by a cluster whose process died."""
        for f in os.listdir(STATE_DIR):
            if not f.endswith(".pid"):
                continue
            try:
                pid = int(open(os.path.join(STATE_DIR, f)).read().strip())
                os.kill(pid, 0)
                continue  # alive
            except (ValueError, OSError):
                pass
            name = f[:-4]
            if name.startswith("hmbr"):
                _run("ip", "link", "del", name, check=False)
            elif name.startswith("hm-"):
                _run("ip", "netns", "del", name, check=False)
            os.unlink(os.path.join(STATE_DIR, f))

    @staticmethod
    def _delete_link(kind, name):
        """Deletes a bridge ("link") or network namespace ("netns") and its
        pid file in STATE_DIR (leftovers of a killed run are found by it)."""
        _run("ip", kind, "del", name, check=False)
        try:
            os.unlink(os.path.join(STATE_DIR, name + ".pid"))
        except OSError:
            pass

    def _teardown_bridge(self):
        if self.bridge:
            self._delete_link("link", self.bridge)
            self.bridge = None

    def _assign_ip(self, rt):
        n = self._ip_next
        self._ip_next += 1
        if self.network == "loopback":
            return f"127.0.{1 + n // 250}.{n % 250 + 2}"
        return str(ipaddress.ip_address(f"10.{self._net}.0.0") + n)

    def _setup_pod_network(self, rt):
        if self.network != "bridge":
            return
        short = rt.uid.replace("-", "")[:10]
        rt.netns, rt.host_veth = f"hm-{short}", f"hv{short}"
        with open(os.path.join(STATE_DIR, rt.netns + ".pid"), "w") as f:
            f.write(str(os.getpid()))
        _run("ip", "netns", "add", rt.netns)
        _run("ip", "link", "add", rt.host_veth, "type", "veth", "peer", "name", "eth0", "netns", rt.netns)
        _run("ip", "link", "set", rt.host_veth, "master", self.bridge, "up")
        ns = ["ip", "-n", rt.netns]
        _run(*ns, "addr", "add", f"{rt.ip}/{self.prefix_len}", "dev", "eth0")
        _run(*ns, "link", "set", "lo", "up")
        _run(*ns, "link", "set", "eth0", "up")
        _run(*ns, "route", "add", "default", "via", self.gateway)

    # --------------------------------------------------------------- loop
    def _loop(self):
        last_hosts = 0.0
        while not self._stop.is_set():
            try:
                self._drain_events()
                with self._lock:
                    for rt in list(self.pods.values()):
                        self._step(rt)
                now = time.monotonic()
                if self._hosts_dirty or now - last_hosts > 2:
                    self._write_hosts()
                    last_hosts = now
            except Exception as e:  # keep playing the kubelet; say what broke
                self.log(f"error: {e!r}")
            self._stop.wait(0.1)
        with self._lock:
            for rt in list(self.pods.values()):
                self._kill_now(rt)

    def _drain_events(self):
        while True:
            try:
                what, kind, obj = self._events.get_nowait()
            except queue.Empty:
                return
            if what == "svc":
                key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
                if kind == "DELETED":
                    self.services.pop(key, None)
                else:
                    self.services[key] = obj
                self._hosts_dirty = True
                continue
            self._on_pod(kind, obj)

    def _on_pod(self, kind, pod):
        uid = pod["metadata"]["uid"]
        node = pod["spec"].get("nodeName")
        with self._lock:
            rt = self.pods.get(uid)
            if kind == "DELETED":
                if rt:
                    rt.pod = pod
                    self._begin_delete(rt, object_gone=True)
                return
            if node not in self.nodes:
                return
            if rt is None:
                if pod["metadata"].get("deletionTimestamp"):
                    # Nothing runs for it (terminal, or never started): confirm.
                    self._confirm_delete(pod)
                    return
                if uid in self.done or pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                    return
                rt = PodRuntime(pod, time.monotonic() + self._delay_for(pod))
                self.pods[uid] = rt
                if rt.not_before > time.monotonic():
                    self.log(f"{rt.namespace}/{rt.name} on {node}: start held back "
                             f"{rt.not_before - time.monotonic():.1f} s")
                return
            rt.pod = pod
            if pod["metadata"].get("deletionTimestamp") and not rt.deleting:
                self._begin_delete(rt)

    def _delay_for(self, pod):
        m = pod["metadata"]
        for pattern, seconds in self._delays:
            if fnmatch.fnmatch(m["name"], pattern) or fnmatch.fnmatch(f"{m['namespace']}/{m['name']}", pattern):
                return seconds
        return 0.0

    def _step(self, rt):
        if rt.deleting:
            self._step_delete(rt)
            return
        if rt.state == "pending" and time.monotonic() >= rt.not_before:
            self._try_start(rt)
        elif rt.state == "running":
            self._poll(rt)
        if rt.status_dirty:
            self._write_status(rt)
        if rt.state == "terminated" and not rt.status_dirty:
            # Terminal and reported: nothing more to do for it but confirm its deletion.
            self._retire(rt)

    def _retire(self, rt):
        self.pods.pop(rt.uid, None)
        self.done.add(rt.uid)
        self.finished[rt.key] = rt

    # ------------------------------------------------------------ starting
    def _try_start(self, rt):
        try:
            if rt.dir is None:
                rt.dir = os.path.join(self.work_dir, "pods", f"{rt.namespace}_{rt.name}_{rt.uid[:8]}")
                os.makedirs(rt.dir, exist_ok=True)
            self._prepare_volumes(rt)
        except VolumeNotReady as e:
            if rt.waiting_reported != str(e):
                rt.waiting_reported = str(e)
                self.log(f"{rt.namespace}/{rt.name}: waiting: {e}")
                self._write_waiting(rt, "ContainerCreating", str(e))
            rt.not_before = time.monotonic() + 1.0
            return
        except PodFailure as e:
            self.log(f"{rt.namespace}/{rt.name}: cannot run: {e}")
            self._fail_before_start(rt, "CreateContainerConfigError", str(e))
            return
        rt.ip = self._assign_ip(rt)
        self._setup_pod_network(rt)
        rt.hosts_file = os.path.join(rt.dir, "hosts")
        open(rt.hosts_file, "w").close()
        # Cluster DNS's search path; no name server (pods reach none here), so
        # a name /etc/hosts lacks fails at once instead of timing out.
        rt.resolv_file = os.path.join(rt.dir, "resolv.conf")
        with open(rt.resolv_file, "w") as f:
            f.write(f"search {rt.namespace}.svc.{self.domain} svc.{self.domain} {self.domain}\n"
                    "nameserver 127.0.0.1\noptions ndots:5 attempts:1 timeout:1\n")
        rt.start_time = now_rfc3339()
        rt.state = "running"
        self._hosts_dirty = True
        self._write_hosts()
        try:
            self._start_next(rt)
        except PodFailure as e:
            self._kill_now(rt)
            self._fail_before_start(rt, "CreateContainerConfigError", str(e))
            return
        self.log(f"{rt.namespace}/{rt.name} on {rt.pod['spec']['nodeName']}: started, IP {rt.ip}")

    def _start_next(self, rt):
        """Starts the next init container, or all app containers."""
        for c in rt.init_containers:
            if c.exit_code is None:
                if c.proc is None:
                    self._spawn(rt, c)
                    rt.status_dirty = True
                return
        for c in rt.containers:
            if c.proc is None:
                self._spawn(rt, c)
        rt.status_dirty = True

    def _prepare_volumes(self, rt):
        ns = rt.namespace
        for vol in rt.pod["spec"].get("volumes", []):
            name = vol["name"]
            if name in rt.volume_dirs:
                continue
            vdir = os.path.join(rt.dir, "volumes", name)
            if "configMap" in vol or "secret" in vol:
                src = vol.get("configMap") or vol.get("secret")
                is_cm = "configMap" in vol
                ref = src.get("name") if is_cm else src.get("secretName")
                path = f"/api/v1/namespaces/{ns}/{'configmaps' if is_cm else 'secrets'}/{ref}"
                try:
                    obj = self.client.get(path)
                except ApiError as e:
                    if e.status == 404 and src.get("optional"):
                        obj = {}
                    elif e.status == 404:
                        raise VolumeNotReady(f"{'configmap' if is_cm else 'secret'} \"{ref}\" not found")
                    else:
                        raise
                files = {}
                for k, v in (obj.get("data") or {}).items():
                    files[k] = base64.b64decode(v) if not is_cm else v.encode()
                for k, v in (obj.get("binaryData") or {}).items():
                    files[k] = base64.b64decode(v)
                items = src.get("items")
                os.makedirs(vdir, exist_ok=True)
                mode = src.get("defaultMode", 0o644)
                chosen = [(it["key"], it["path"], it.get("mode", mode)) for it in items] if items else \
                         [(k, k, mode) for k in files]
                for key, rel, m in chosen:
                    if key not in files:
                        if src.get("optional"):
                            continue
                        raise VolumeNotReady(f"key {key} not in {ref}")
                    target = os.path.join(vdir, rel)
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    with open(target, "wb") as f:
                        f.write(files[key])
                    os.chmod(target, m)
                rt.volume_dirs[name] = vdir
            elif "persistentVolumeClaim" in vol:
                claim = vol["persistentVolumeClaim"]["claimName"]
                try:
                    pvc = self.client.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}")
                except ApiError as e:
                    if e.status == 404:
                        raise VolumeNotReady(f"persistentvolumeclaim \"{claim}\" not found")
                    raise
                pv_name = pvc["spec"].get("volumeName")
                if not pv_name or pvc.get("status", {}).get("phase") != "Bound":
                    raise VolumeNotReady(f"persistentvolumeclaim \"{claim}\" is not bound")
                pv = self.client.get(f"/api/v1/persistentvolumes/{pv_name}")
                src = (pv["spec"].get("hostPath") or pv["spec"].get("local") or {}).get("path")
                if not src:
                    raise PodFailure(f"volume {pv_name}: only hostPath/local volumes are supported here")
                os.makedirs(src, exist_ok=True)
                rt.volume_dirs[name] = src
            elif "emptyDir" in vol:
                os.makedirs(vdir, exist_ok=True)
                rt.volume_dirs[name] = vdir
            elif "hostPath" in vol:
                hp = vol["hostPath"]
                if hp.get("type") in ("DirectoryOrCreate",) or not os.path.exists(hp["path"]):
                    if hp.get("type") in ("", None, "DirectoryOrCreate"):
                        os.makedirs(hp["path"], exist_ok=True)
                rt.volume_dirs[name] = hp["path"]
            else:
                kinds = [k for k in vol if k != "name"]
                raise PodFailure(f"volume {name}: type {kinds} is not supported by the local kubelet")

    def _env(self, rt, c):
        pod, spec = rt.pod, c.spec
        image = self._image(spec.get("image", ""))
        env = {"PATH": ":".join(image["path"] + [DEFAULT_PATH]), "HOSTNAME": rt.hostname(), "HOME": "/root"}
        env.update(image.get("env") or {})
        env.update(self.node_env.get(pod["spec"].get("nodeName", ""), {}))
        ns = rt.namespace

        def field(path):
            m = pod["metadata"]
            simple = {"metadata.name": m["name"], "metadata.namespace": ns, "metadata.uid": m["uid"],
                      "spec.nodeName": pod["spec"].get("nodeName", ""),
                      "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
                      "status.podIP": rt.ip or "", "status.podIPs": rt.ip or "",
                      "status.hostIP": self.host_ip or ""}
            if path in simple:
                return simple[path]
            mm = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
            if mm:
                return (m.get(mm.group(1)) or {}).get(mm.group(2), "")
            raise PodFailure(f"env fieldRef {path} is not supported")

        def keyref(ref, secret):
            kind = "secrets" if secret else "configmaps"
            try:
                obj = self.client.get(f"/api/v1/namespaces/{ns}/{kind}/{ref['name']}")
            except ApiError as e:
                if e.status == 404 and ref.get("optional"):
                    return None
                raise PodFailure(f"{kind} {ref['name']}: {e}")
            v = (obj.get("data") or {}).get(ref["key"])
            if v is None:
                if ref.get("optional"):
                    return None
                raise PodFailure(f"{kind} {ref['name']} has no key {ref['key']}")
            return base64.b64decode(v).decode() if secret else v

        for src in spec.get("envFrom", []):
            prefix = src.get("prefix", "")
            for kind, secret in (("configMapRef", False), ("secretRef", True)):
                if kind in src:
                    try:
                        obj = self.client.get(f"/api/v1/namespaces/{ns}/{'secrets' if secret else 'configmaps'}/"
                                              f"{src[kind]['name']}")
                    except ApiError as e:
                        if e.status == 404 and src[kind].get("optional"):
                            continue
                        raise PodFailure(str(e))
                    for k, v in (obj.get("data") or {}).items():
                        env[prefix + k] = base64.b64decode(v).decode() if secret else v
        for e in spec.get("env", []):
            if "valueFrom" in e:
                vf = e["valueFrom"]
                if "fieldRef" in vf:
                    v = field(vf["fieldRef"]["fieldPath"])
                elif "resourceFieldRef" in vf:
                    r = vf["resourceFieldRef"]
                    res = r["resource"].split(".", 1)
                    v = str((spec.get("resources", {}).get(res[0], {}) or {}).get(res[1], "0"))
                elif "configMapKeyRef" in vf:
                    v = keyref(vf["configMapKeyRef"], False)
                elif "secretKeyRef" in vf:
                    v = keyref(vf["secretKeyRef"], True)
                else:
                    raise PodFailure(f"env {e['name']}: unsupported valueFrom {list(vf)}")
                if v is None:
                    continue
            else:
                v = _expand(e.get("value", ""), env)
            env[e["name"]] = v
        return env

    def _image(self, image):
        """What stands in for `image`: {"path": [dirs], "entrypoint", "cmd",
        "env", "mounts": {container path: host path}} (first matching glob)."""
        for pattern, target in self.images.items():
            if fnmatch.fnmatch(image, pattern):
                t = dict(target) if isinstance(target, dict) else {"path": target}
                p = t.get("path") or []
                # The binaries' folders are mounted at fixed container paths,
                # as an image has them: a host folder under /tmp would be
                # hidden by the container's private /tmp.
                mounts = dict(t.get("mounts") or {})
                t["path"] = []
                for i, host_dir in enumerate([p] if isinstance(p, str) else list(p)):
                    target_dir = f"{IMAGE_BIN}/{i}"
                    mounts[target_dir] = os.path.abspath(host_dir)
                    t["path"].append(target_dir)
                t["mounts"] = mounts
                return t
        return {"path": []}

    def _mount_target(self, path, is_file):
        if path == "/tmp" or path.startswith("/tmp/"):
            return  # made by the launcher in the container's private /tmp
        """Creates a missing bind-mount target (an empty folder or file) on
        the host: a mount point must exist. They are listed in
        STATE_DIR/created-paths and removed, when still empty, by the last
        local kubelet to stop (removing a mount point would detach the mounts
        other running pods made on it)."""
        if os.path.lexists(path):
            return
        created = []
        p = os.path.dirname(path)
        while p and p != "/" and not os.path.exists(p):
            created.append(p)
            p = os.path.dirname(p)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if is_file:
            open(path, "a").close()
        else:
            os.makedirs(path, exist_ok=True)
        created.insert(0, path)
        with open(LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            with open(os.path.join(STATE_DIR, "created-paths"), "a") as f:
                f.write("".join(p + "\n" for p in created))

    def _release_mount_targets(self):
        os.makedirs(STATE_DIR, exist_ok=True)
        with open(LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                os.unlink(self._registration)
            except OSError:
                pass
            for f in os.listdir(STATE_DIR):
                if f.startswith("kubelet-") and f.endswith(".pid"):
                    try:
                        os.kill(int(f.split("-")[1]), 0)
                        return  # another local kubelet runs: leave them
                    except (ValueError, OSError):
                        os.unlink(os.path.join(STATE_DIR, f))
            listing = os.path.join(STATE_DIR, "created-paths")
            try:
                paths = set(open(listing).read().split("\n")) - {""}
            except OSError:
                return
            for path in sorted(paths, key=len, reverse=True):
                try:
                    if os.path.isdir(path) and not os.path.islink(path):
                        os.rmdir(path)  # only when empty
                    elif os.path.isfile(path) and os.path.getsize(path) == 0:
                        os.unlink(path)
                except OSError:
                    pass
            os.unlink(listing)

    def _spawn(self, rt, c):
        spec = c.spec
        env = self._env(rt, c)
        image = self._image(spec.get("image", ""))
        if spec.get("command"):
            argv = spec["command"] + spec.get("args", [])
        else:  # the image's ENTRYPOINT, with args or else its CMD
            argv = (image.get("entrypoint") or []) + (spec.get("args") or image.get("cmd") or [])
        argv = [_expand(a, env) for a in argv]
        if not argv:
            raise PodFailure(f"container {c.name}: no command (the local kubelet knows no image entrypoints; "
                             "map the image to {'path': DIR, 'entrypoint': [...]})")
        mounts = [(rt.hosts_file, "/etc/hosts", False), (rt.resolv_file, "/etc/resolv.conf", True)]
        for target, src in (image.get("mounts") or {}).items():  # what the image ships
            self._mount_target(target, os.path.isfile(src))
            mounts.append((src, target, True))
        for vm in spec.get("volumeMounts", []):
            src = rt.volume_dirs.get(vm["name"])
            if src is None:
                raise PodFailure(f"container {c.name}: volumeMount {vm['name']} names no volume")
            if vm.get("subPath"):
                src = os.path.join(src, vm["subPath"])
                if not os.path.exists(src):
                    os.makedirs(src, exist_ok=True)
            self._mount_target(vm["mountPath"], os.path.isfile(src))
            mounts.append((src, vm["mountPath"], bool(vm.get("readOnly"))))
        tm_path = spec.get("terminationMessagePath", "/dev/termination-log")
        c.termination_file = os.path.join(rt.dir, f"termination-{c.name}")
        open(c.termination_file, "w").close()
        self._mount_target(tm_path, True)
        mounts.append((c.termination_file, tm_path, False))
        workdir = spec.get("workingDir") or image.get("workingDir")
        if workdir:
            self._mount_target(workdir, False)
        c.exit_file = os.path.join(rt.dir, f"exit-{c.name}.json")
        for f in (c.exit_file,):
            if os.path.exists(f):
                os.unlink(f)
        # A private /tmp per container (what its writable layer would hold).
        tmp = os.path.join(rt.dir, "containers", c.name, "tmp")
        os.makedirs(tmp, exist_ok=True)
        os.chmod(tmp, 0o1777)
        launch = {"netns": f"/run/netns/{rt.netns}" if rt.netns else None, "hostname": rt.hostname()[:63],
                  "tmp": tmp,
                  "mounts": mounts, "workingDir": workdir, "argv": argv, "env": env,
                  "exit_file": c.exit_file}
        launch_file = os.path.join(rt.dir, f"launch-{c.name}.json")
        with open(launch_file, "w") as f:
            json.dump(launch, f, indent=1)
        logdir = os.path.join(self.work_dir, "logs", f"{rt.namespace}_{rt.name}_{rt.uid[:8]}")
        os.makedirs(logdir, exist_ok=True)
        c.log_path = os.path.join(logdir, f"{c.name}.log")
        logf = open(c.log_path, "ab")
        try:
            c.proc = subprocess.Popen([sys.executable, "-S", "-B", os.path.abspath(__file__), "launch", launch_file],
                                      stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                      env={"PATH": DEFAULT_PATH}, start_new_session=True,
                                      preexec_fn=_set_pdeathsig)
        finally:
            logf.close()
        c.started_at = now_rfc3339()

    # ------------------------------------------------------------- running
    def _poll(self, rt):
        changed = False
        for c in rt.all_containers():
            if c.proc is not None and c.exit_code is None and c.proc.poll() is not None:
                self._finish_container(rt, c)
                changed = True
        if not changed:
            return
        if any(c.exit_code not in (None, 0) for c in rt.init_containers):
            self._terminate_pod(rt, "Failed")  # app containers never start
            return
        if any(c.exit_code is None for c in rt.init_containers) or any(c.proc is None for c in rt.containers):
            self._start_next(rt)
            return
        if all(c.exit_code is not None for c in rt.containers):
            ok = all(c.exit_code == 0 for c in rt.containers)
            self._terminate_pod(rt, "Succeeded" if ok else "Failed")
        else:
            rt.status_dirty = True

    def _finish_container(self, rt, c):
        rc = c.proc.returncode
        c.exit_code = 128 - rc if rc < 0 else rc
        c.finished_at = now_rfc3339()
        c.reason = "Completed" if c.exit_code == 0 else "Error"
        msg = ""
        try:
            with open(c.exit_file) as f:
                result = json.load(f)
            c.exit_code = result["exitCode"]
            c.reason = result.get("reason") or ("Completed" if c.exit_code == 0 else "Error")
            msg = result.get("message", "")
        except (OSError, ValueError, KeyError, AttributeError):
            pass  # the launcher itself was killed: its status stands
        if msg:  # could not start
            c.message = msg
            self.log(f"{rt.namespace}/{rt.name}: container {c.name} could not start: {msg}")
            return
        try:
            with open(c.termination_file, errors="replace") as f:
                msg = f.read(4096)
        except OSError:
            pass
        if not msg.strip() and c.exit_code != 0 and \
                c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            try:
                with open(c.log_path, "rb") as f:
                    f.seek(0, 2)
                    size = f.tell()
                    f.seek(max(0, size - 2048))
                    tail = f.read().decode("utf-8", "replace").splitlines()[-80:]
                msg = "\n".join(tail)
            except OSError:
                pass
        c.message = msg
        self.log(f"{rt.namespace}/{rt.name}: container {c.name} exited with {c.exit_code}")

    def _terminate_pod(self, rt, phase):
        rt.state = "terminated"
        rt.phase = phase
        rt.status_dirty = True
        self._hosts_dirty = True
        self._write_status(rt)
        self._cleanup(rt)

    # ------------------------------------------------------------ deleting
    def _begin_delete(self, rt, object_gone=False):
        rt.deleting = True
        rt.object_gone = object_gone
        grace = rt.pod["metadata"].get("deletionGracePeriodSeconds")
        if grace is None:
            grace = rt.pod["spec"].get("terminationGracePeriodSeconds", 30)
        rt.kill_deadline = time.monotonic() + float(grace)
        sent = 0
        for c in rt.all_containers():
            pid = c.host_pid()
            if pid:
                try:
                    os.kill(pid, signal.SIGTERM)
                    sent += 1
                except ProcessLookupError:
                    pass
        self._hosts_dirty = True
        self.log(f"{rt.namespace}/{rt.name}: deleting (grace {grace} s, {sent} container(s) signalled)")

    def _step_delete(self, rt):
        alive = [c for c in rt.all_containers() if c.proc is not None and c.proc.poll() is None]
        if alive and time.monotonic() < rt.kill_deadline:
            return
        if alive:
            self._kill_now(rt)
        for c in rt.all_containers():
            if c.proc is not None and c.exit_code is None:
                self._finish_container(rt, c)
        self._cleanup(rt)
        if not rt.object_gone:
            self._confirm_delete(rt.pod)
        self._retire(rt)
        self._hosts_dirty = True

    def _confirm_delete(self, pod):
        m = pod["metadata"]
        try:
            self.client.delete(f"/api/v1/namespaces/{m['namespace']}/pods/{m['name']}", grace_seconds=0,
                               uid=m["uid"])
        except ApiError as e:
            self.log(f"{m['namespace']}/{m['name']}: final delete failed: {e}")

    def _kill_now(self, rt):
        for c in rt.all_containers():
            if c.proc is None or c.proc.poll() is not None:
                continue
            pid = c.host_pid()
            for target in filter(None, (pid, c.proc.pid)):
                try:
                    os.kill(target, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                c.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def _cleanup(self, rt):
        """After the last container exited: the pod's network namespace goes
        (its mount namespaces went with its processes)."""
        if rt.netns:
            self._delete_link("netns", rt.netns)
            rt.netns = None

    # --------------------------------------------------------------- status
    def _conditions(self, rt, ready):
        now = now_rfc3339()
        existing = {c["type"]: c for c in rt.pod.get("status", {}).get("conditions", [])}
        want = {"Initialized": "True", "Ready": "True" if ready else "False",
                "ContainersReady": "True" if ready else "False", "PodScheduled": "True"}
        out = []
        for t, s in want.items():
            c = dict(existing.get(t, {"type": t}))
            if c.get("status") != s:
                c["lastTransitionTime"] = now
            c["status"] = s
            c.setdefault("lastProbeTime", None)
            if s == "False" and t in ("Ready", "ContainersReady"):
                c["reason"] = "PodCompleted" if rt.phase == "Succeeded" else "ContainersNotReady"
            else:
                c.pop("reason", None)
            out.append(c)
        return out

    def _write_status(self, rt):
        running = rt.state == "running"
        phase = "Running" if running else rt.phase
        ready = running and all(c.proc is not None and c.exit_code is None for c in rt.containers)
        status = {"phase": phase, "hostIP": self.host_ip, "startTime": rt.start_time,
                  "conditions": self._conditions(rt, ready),
                  "containerStatuses": [c.status() for c in rt.containers]}
        if rt.init_containers:
            status["initContainerStatuses"] = [c.status() for c in rt.init_containers]
        if rt.ip:
            status["podIP"] = rt.ip
            status["podIPs"] = [{"ip": rt.ip}]
        try:
            self.client.patch_status(f"/api/v1/namespaces/{rt.namespace}/pods/{rt.name}", {"status": status})
            rt.status_dirty = False
        except ApiError as e:
            if e.status == 404:
                rt.status_dirty = False
            else:
                self.log(f"{rt.namespace}/{rt.name}: status write failed: {e}")

    def _write_waiting(self, rt, reason, message):
        statuses = []
        for c in rt.containers:
            s = c.status()
            s["state"] = {"waiting": {"reason": reason, "message": message}}
            statuses.append(s)
        try:
            self.client.patch_status(f"/api/v1/namespaces/{rt.namespace}/pods/{rt.name}",
                                     {"status": {"phase": "Pending", "hostIP": self.host_ip,
                                                 "containerStatuses": statuses}})
        except ApiError as e:
            self.log(f"{rt.namespace}/{rt.name}: status write failed: {e}")

    def _fail_before_start(self, rt, reason, message):
        for c in rt.containers:
            c.exit_code, c.reason, c.message = 128, reason, message
            c.started_at = c.finished_at = now_rfc3339()
        rt.start_time = rt.start_time or now_rfc3339()
        self._terminate_pod(rt, "Failed")

    # ---------------------------------------------------------------- hosts
    def _hosts_entries(self):
        entries = []
        for rt in self.pods.values():
            if rt.state != "running" or rt.deleting or not rt.ip:
                continue
            sub = rt.pod["spec"].get("subdomain")
            if not sub:
                continue
            svc = self.services.get((rt.namespace, sub))
            if not svc or svc["spec"].get("clusterIP") != "None":
                continue
            if not _label_selector_matches(svc["spec"].get("selector") or {},
                                           rt.pod["metadata"].get("labels") or {}):
                continue
            entries.append((rt.uid, rt.ip, rt.fqdns(self.domain)))
        return sorted(entries, key=lambda e: e[2])

    def _write_hosts(self):
        self._hosts_dirty = False
        entries = self._hosts_entries()
        for rt in self.pods.values():
            if not rt.hosts_file or rt.state != "running":
                continue
            lines = ["# Kubernetes-managed hosts file (hetermoe local kubelet).",
                     "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
                     "fe00::0\tip6-localnet", "fe00::0\tip6-mcastprefix", "fe00::1\tip6-allnodes",
                     "fe00::2\tip6-allrouters",
                     "\t".join([rt.ip] + rt.fqdns(self.domain) + [rt.hostname()])]
            for uid, ip, names in entries:
                if uid != rt.uid:
                    lines.append("\t".join([ip] + names))
            content = "\n".join(lines) + "\n"
            if rt.hosts_content == content:
                continue
            # In place (same inode): the pod's bind mount sees the new text.
            with open(rt.hosts_file, "r+") as f:
                f.write(content)
                f.truncate()
            rt.hosts_content = content


# ------------------------------------------------------------------ launcher
# `python3 kubelet.py launch FILE`: runs one container. Joins the pod's
# network namespace, unshares mount/UTS/IPC/PID namespaces, forks the
# container's PID 1 (which mounts /proc, a private /tmp, its volumes,
# /etc/hosts, /etc/resolv.conf and the termination-message file, sets the
# hostname and execs the command), waits
# for it and writes {"exitCode", "reason", "message"} to exit_file: the
# container's real status (128+N when killed by signal N), which the
# launcher's own exit status cannot carry through a signal.
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = \
    0x00020000, 0x04000000, 0x08000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = \
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18


def _launch(path):
    import ctypes
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    with open(path) as f:
        spec = json.load(f)

    def check(rc, what):
        if rc != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"{what}: {os.strerror(e)}")

    def mount(src, dst, fstype, flags):
        check(libc.mount(src and src.encode(), dst.encode(), fstype and fstype.encode(), ctypes.c_ulong(flags),
                         None), f"mount {src} on {dst}")

    # Through a folder descriptor: the container's mounts (a private /tmp)
    # are in the launcher's mount namespace too.
    exit_dir = os.open(os.path.dirname(spec["exit_file"]), os.O_RDONLY | os.O_DIRECTORY)
    exit_name = os.path.basename(spec["exit_file"])

    def result(code, reason=None, message=""):
        opener = lambda p, flags: os.open(p, flags, 0o644, dir_fd=exit_dir)  # noqa: E731
        with open(exit_name + ".tmp", "w", opener=opener) as f:
            json.dump({"exitCode": code, "reason": reason, "message": message}, f)
        os.replace(exit_name + ".tmp", exit_name, src_dir_fd=exit_dir, dst_dir_fd=exit_dir)

    try:
        if spec.get("netns"):
            fd = os.open(spec["netns"], os.O_RDONLY)
            check(libc.setns(fd, CLONE_NEWNET), "setns")
            os.close(fd)
        check(libc.unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID), "unshare")
        mount(None, "/", None, MS_REC | MS_PRIVATE)
    except OSError as e:
        print(f"kubelet launcher: {e}", file=sys.stderr, flush=True)
        result(128, "ContainerCannotRun", str(e))
        return 128
    # The container must not outlive the launcher (killed with the kubelet).
    pid = os.fork()
    if pid == 0:
        try:
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
            mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            name = spec["hostname"].encode()
            check(libc.sethostname(name, len(name)), "sethostname")
            # Sources are opened first: they may live under the host's /tmp,
            # which the container's private /tmp hides next.
            fds = [(os.open(src, os.O_PATH), dst, ro) for src, dst, ro in spec["mounts"]]
            if spec.get("tmp"):
                mount(spec["tmp"], "/tmp", None, MS_BIND)
            for fd, dst, ro in fds:
                if not os.path.lexists(dst):  # under the private /tmp
                    if os.path.isdir(f"/proc/self/fd/{fd}"):
                        os.makedirs(dst, exist_ok=True)
                    else:
                        os.makedirs(os.path.dirname(dst), exist_ok=True)
                        open(dst, "a").close()
                mount(f"/proc/self/fd/{fd}", dst, None, MS_BIND)
                if ro:
                    mount(None, dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
                os.close(fd)
            if spec.get("workingDir"):
                os.chdir(spec["workingDir"])
            for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
                signal.signal(s, signal.SIG_DFL)
            os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
        except OSError as e:
            print(f"kubelet launcher: {e}", file=sys.stderr, flush=True)
            result(128, "StartError", f"failed to start container: {e}")
            os._exit(128)
    # Signals for the container go to its PID 1 directly (by the kubelet).
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    code = 128 - code if code < 0 else code
    try:
        os.stat(exit_name, dir_fd=exit_dir)  # the child could not start: its result stands
    except FileNotFoundError:
        result(code)
    return code


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "launch":
    sys.exit(_launch(sys.argv[2]))
