"""A small Kubernetes REST client (Python standard library only).

What tests/e2e's local cluster and its kubelet stand-in need from the API
server: JSON requests with a client certificate or a bearer token, the paths
of the kinds they touch, and list+watch with relist on 410 Gone.

    api = Client("https://127.0.0.1:6443", ca_file="ca.crt",
                 cert_file="admin.crt", key_file="admin.key")
    api.create(pod)                          # path from apiVersion/kind
    api.get("/api/v1/namespaces/default/pods/x")
    api.patch_status(pod_path, {"status": {...}})
"""
import http.client
import json
import ssl
import threading
import time
import urllib.parse

# apiVersion/kind -> (API prefix, plural, namespaced)
KINDS = {
    ("v1", "Namespace"): ("/api/v1", "namespaces", False),
    ("v1", "Node"): ("/api/v1", "nodes", False),
    ("v1", "Pod"): ("/api/v1", "pods", True),
    ("v1", "Service"): ("/api/v1", "services", True),
    ("v1", "ConfigMap"): ("/api/v1", "configmaps", True),
    ("v1", "Secret"): ("/api/v1", "secrets", True),
    ("v1", "ServiceAccount"): ("/api/v1", "serviceaccounts", True),
    ("v1", "PersistentVolume"): ("/api/v1", "persistentvolumes", False),
    ("v1", "PersistentVolumeClaim"): ("/api/v1", "persistentvolumeclaims", True),
    ("v1", "Event"): ("/api/v1", "events", True),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"):
        ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    ("rbac.authorization.k8s.io/v1", "Role"): ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"):
        ("/apis/apiextensions.k8s.io/v1", "customresourcedefinitions", False),
    ("coordination.k8s.io/v1", "Lease"): ("/apis/coordination.k8s.io/v1", "leases", True),
    ("scheduling.k8s.io/v1", "PriorityClass"): ("/apis/scheduling.k8s.io/v1", "priorityclasses", False),
}  # other kinds (custom resources) are found through discovery


class ApiError(Exception):
    def __init__(self, status, method, path, body):
        self.status, self.method, self.path, self.body = status, method, path, body
        try:
            message = json.loads(body).get("message", body)
        except ValueError:
            message = body
        super().__init__(f"{method} {path}: HTTP {status}: {message}")


def now_rfc3339():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Client:
    def __init__(self, server, ca_file, cert_file=None, key_file=None, token=None, timeout=30):
        url = urllib.parse.urlsplit(server)
        self.server = server
        self.host, self.port = url.hostname, url.port or 443
        self.token = token
        self.timeout = timeout
        self.ctx = ssl.create_default_context(cafile=ca_file)
        if cert_file:
            self.ctx.load_cert_chain(cert_file, key_file)
        self._local = threading.local()

    # ------------------------------------------------------------------ raw
    def _conn(self, fresh=False, timeout=None):
        if fresh:
            return http.client.HTTPSConnection(self.host, self.port, context=self.ctx,
                                               timeout=timeout or self.timeout)
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._local.conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx,
                                                               timeout=self.timeout)
        return c

    def _headers(self, content_type=None):
        h = {"Accept": "application/json", "User-Agent": "hetermoe-e2e"}
        if content_type:
            h["Content-Type"] = content_type
        if self.token:
            h["Authorization"] = "Bearer " + self.token
        return h

    def request(self, method, path, body=None, content_type="application/json", query=None, raw=False):
        if query:
            path = path + ("&" if "?" in path else "?") + urllib.parse.urlencode(query)
        data = None
        if body is not None:
            data = body if isinstance(body, (bytes, str)) else json.dumps(body)
            if isinstance(data, str):
                data = data.encode()
        for attempt in range(3):
            conn = self._conn()
            try:
                conn.request(method, path, body=data, headers=self._headers(content_type if data else None))
                resp = conn.getresponse()
                text = resp.read().decode("utf-8", "replace")
                break
            except (ConnectionError, http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
                time.sleep(0.2)
        if resp.status >= 400:
            raise ApiError(resp.status, method, path, text)
        if raw:
            return text
        return json.loads(text) if text else None

    # ---------------------------------------------------------------- paths
    def resource(self, api_version, kind):
        """(API prefix, plural, namespaced) of a kind: KINDS, else discovery
        (custom resources of any version)."""
        key = (api_version, kind)
        if key not in KINDS:
            prefix = ("/api/" if "/" not in api_version else "/apis/") + api_version
            for r in self.get(prefix).get("resources", []):
                if r["kind"] == kind and "/" not in r["name"]:
                    KINDS[key] = (prefix, r["name"], r["namespaced"])
                    break
            else:
                raise KeyError(f"kubeapi: the API server serves no {kind} in {api_version}")
        return KINDS[key]

    def collection_path(self, api_version, kind, namespace=None):
        prefix, plural, namespaced = self.resource(api_version, kind)
        if namespaced and namespace:
            return f"{prefix}/namespaces/{namespace}/{plural}"
        return f"{prefix}/{plural}"

    def object_path(self, obj, default_namespace="default"):
        """The REST path of an object (apiVersion, kind, metadata.name/namespace)."""
        namespaced = self.resource(obj["apiVersion"], obj["kind"])[2]
        ns = obj["metadata"].get("namespace") or (default_namespace if namespaced else None)
        return self.collection_path(obj["apiVersion"], obj["kind"], ns) + "/" + obj["metadata"]["name"]

    # -------------------------------------------------------------- helpers
    def get(self, path, **query):
        return self.request("GET", path, query=query or None)

    def exists(self, path):
        try:
            self.get(path)
            return True
        except ApiError as e:
            if e.status == 404:
                return False
            raise

    def list(self, path, **query):
        return self.request("GET", path, query=query or None)["items"]

    def create(self, obj, namespace=None):
        ns = namespace or obj["metadata"].get("namespace") or "default"
        return self.request("POST", self.collection_path(obj["apiVersion"], obj["kind"], ns), obj)

    def delete(self, path, grace_seconds=None, uid=None, propagation=None, missing_ok=True):
        body = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        if uid:
            body["preconditions"] = {"uid": uid}
        if propagation:
            body["propagationPolicy"] = propagation
        try:
            return self.request("DELETE", path, body)
        except ApiError as e:
            if missing_ok and e.status in (404, 409):
                return None
            raise

    def merge_patch(self, path, patch):
        return self.request("PATCH", path, patch, content_type="application/merge-patch+json")

    def patch_status(self, path, patch):
        return self.merge_patch(path + "/status", patch)

    def apply(self, obj, namespace=None):
        """Create, or replace what exists (keeping its resourceVersion)."""
        obj = json.loads(json.dumps(obj))
        if namespace and self.resource(obj["apiVersion"], obj["kind"])[2]:
            obj["metadata"].setdefault("namespace", namespace)
        try:
            return self.create(obj)
        except ApiError as e:
            if e.status != 409:
                raise
        path = self.object_path(obj)
        for _ in range(5):
            current = self.get(path)
            obj["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            try:
                return self.request("PUT", path, obj)
            except ApiError as e:
                if e.status != 409:
                    raise
        raise RuntimeError(f"kubeapi: could not update {path} (conflicts)")

    # ----------------------------------------------------------------- watch
    def watch(self, path, resource_version, stop, timeout_seconds=30, holder=None):
        """Yields watch events (dicts with type/object) until the server ends
        the stream or `stop` is set; raises ApiError on HTTP errors (410)."""
        query = {"watch": "1", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                 "timeoutSeconds": str(timeout_seconds)}
        conn = self._conn(fresh=True, timeout=timeout_seconds + 10)
        if holder is not None:
            holder.append(conn)
        try:
            conn.request("GET", path + "?" + urllib.parse.urlencode(query), headers=self._headers())
            resp = conn.getresponse()
            if resp.status >= 400:
                raise ApiError(resp.status, "WATCH", path, resp.read().decode("utf-8", "replace"))
            while not stop.is_set():
                line = resp.readline()
                if not line:
                    return
                line = line.strip()
                if line:
                    yield json.loads(line)
        finally:
            if holder is not None and conn in holder:
                holder.remove(conn)
            conn.close()


class Informer:
    """List+watch of one collection, keeping a cache and calling
    `handler(event_type, obj)` (ADDED, MODIFIED, DELETED) from its thread.
    A 410 Gone (HTTP or in-stream ERROR) or a broken stream means relist;
    relists report what changed meanwhile as ordinary events."""

    def __init__(self, client, path, handler, name="informer"):
        self.client, self.path, self.handler = client, path, handler
        self.cache = {}
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._conns = []
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @staticmethod
    def key(obj):
        m = obj["metadata"]
        return (m.get("namespace", ""), m["name"])

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        for c in list(self._conns):
            try:
                if c.sock:
                    c.sock.shutdown(2)
            except OSError:
                pass
        self._thread.join(timeout=5)

    def _emit(self, kind, obj):
        try:
            self.handler(kind, obj)
        except Exception as e:  # a handler bug must not kill the informer
            print(f"kubeapi: informer handler error on {self.path}: {e!r}", flush=True)

    def _relist(self):
        body = self.client.request("GET", self.path)
        seen = {}
        for obj in body["items"]:
            seen[self.key(obj)] = obj
        for k, old in list(self.cache.items()):
            if k not in seen:
                del self.cache[k]
                self._emit("DELETED", old)
        for k, obj in seen.items():
            old = self.cache.get(k)
            self.cache[k] = obj
            if old is None:
                self._emit("ADDED", obj)
            elif old["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                self._emit("MODIFIED", obj)
        self.synced.set()
        return body["metadata"]["resourceVersion"]

    def _run(self):
        rv = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._relist()
                for ev in self.client.watch(self.path, rv, self._stop, holder=self._conns):
                    kind, obj = ev["type"], ev["object"]
                    if kind == "ERROR":
                        rv = None
                        break
                    rv = obj["metadata"].get("resourceVersion", rv)
                    if kind == "BOOKMARK":
                        continue
                    k = self.key(obj)
                    if kind == "DELETED":
                        self.cache.pop(k, None)
                    else:
                        self.cache[k] = obj
                    self._emit(kind, obj)
            except ApiError as e:
                if e.status == 410:
                    rv = None
                else:
                    time.sleep(0.5)
            except Exception:
                if self._stop.is_set():
                    return
                rv = None
                time.sleep(0.5)
