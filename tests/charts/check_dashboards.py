#!/usr/bin/python3
"""The chart's Grafana dashboards query metrics that really exist.

Checks charts/hetermoe-operator/dashboards/{trainer,operator}.json:

  * both files are valid JSON, schemaVersion 39, with a uid, a title and no
    `id`; a `datasource` template variable (type datasource, query
    prometheus); every panel (rows aside) has targets with an expr, and every
    panel, target and query variable uses the datasource `${datasource}`.
  * trainer.json against a real Prometheus: Debian's `prometheus` scrapes,
    every second, a static target carrying the labels the chart's PodMonitor
    gives trainer pods (namespace=default, hetermoe_job=tiny, role=attention,
    rank=0, node=n1); once it does, hetermoe-trainer trains on the golden
    fixture (a few thousand steps, checkpoints on the way) serving /metrics
    on that target's port, and lingers after training. Every target expr,
    with the dashboard variables substituted ($namespace=default, $job=tiny,
    $__rate_interval=30s, $__interval=5s, $__range=5m), is evaluated through
    /api/v1/query and must return at least one series (not only NaN when
    Prometheus scraped the run while it trained), each carrying the labels
    its legendFormat names; panels whose description mentions DCGM (GPU
    counters from NVIDIA's DCGM exporter, absent here) only need a valid
    query. The template variables' label_values() queries must offer
    `default` and `tiny`.
  * operator.json: every expr parses (`promtool check rules` on recording
    rules made from them), and every operator metric name it uses
    (controller_runtime_*, workqueue_*, rest_client_*, leader_election_*,
    hetermoe_jobs_*; _bucket/_sum/_count stripped) appears in the operator's
    source tree.

Prints one line per trainer query with the number of series returned and
"FAIL: ..." for every problem; exits 0 only if all checks pass.

    check_dashboards.py --trainer PATH --fixture GOLDEN_DIR --dashboards DIR \\
                        --operator-src DIR --work DIR
"""
import argparse
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# What the PodMonitor's relabelings give a trainer pod's series.
TARGET_LABELS = {"namespace": "default", "hetermoe_job": "tiny", "role": "attention",
                 "rank": "0", "node": "n1"}
VARIABLES = {"namespace": "default", "job": "tiny", "__rate_interval": "30s",
             "__interval": "5s", "__range": "5m"}
OPERATOR_PREFIXES = ("controller_runtime_", "workqueue_", "rest_client_", "leader_election_",
                     "hetermoe_jobs_")
# Trainer run: long enough (a few seconds) to be scraped while it trains, with
# checkpoints on the way, so rates and histograms have real samples.
STEPS, CHECKPOINT_EVERY = 3000, 500

failures = []


def fail(message):
    failures.append(message)
    print(f"FAIL: {message}", flush=True)


# ------------------------------------------------------------ dashboard JSON
def load_dashboard(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        fail(f"{path}: {e}")
        return None


def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))  # a collapsed row holds its panels


def variable_query(var):
    q = var.get("query")
    return q.get("query", "") if isinstance(q, dict) else (q or "")


def check_structure(name, d, want_title):
    """Static checks; returns [(panel, target)] of the dashboard's queries."""
    if d.get("schemaVersion") != 39:
        fail(f"{name}: schemaVersion is {d.get('schemaVersion')!r}, expected 39")
    if not d.get("uid"):
        fail(f"{name}: no uid")
    if "id" in d:
        fail(f"{name}: has an `id` (leave it to Grafana)")
    if d.get("title") != want_title:
        fail(f"{name}: title is {d.get('title')!r}, expected {want_title!r}")
    variables = d.get("templating", {}).get("list", [])
    ds = [v for v in variables if v.get("name") == "datasource"]
    if not ds or ds[0].get("type") != "datasource" or ds[0].get("query") != "prometheus":
        fail(f"{name}: needs a template variable `datasource` of type datasource, query prometheus")
    for v in variables:
        if v.get("type") == "query" and v.get("datasource") != DATASOURCE:
            fail(f"{name}: variable {v.get('name')}: datasource {v.get('datasource')!r} "
                 f"is not the ${{datasource}} variable")
    queries = []
    ids = set()
    for p in all_panels(d.get("panels", [])):
        title = p.get("title", "?")
        if p.get("id") in ids:
            fail(f"{name}: panel {title!r}: duplicate id {p.get('id')}")
        ids.add(p.get("id"))
        if "gridPos" not in p:
            fail(f"{name}: panel {title!r}: no gridPos")
        if p.get("type") == "row":
            continue
        if p.get("datasource") != DATASOURCE:
            fail(f"{name}: panel {title!r}: datasource {p.get('datasource')!r} "
                 f"is not the ${{datasource}} variable")
        targets = p.get("targets") or []
        if not targets:
            fail(f"{name}: panel {title!r} has no targets")
        for t in targets:
            if "datasource" in t and t["datasource"] != DATASOURCE:
                fail(f"{name}: panel {title!r} target {t.get('refId')}: datasource "
                     f"{t['datasource']!r} is not the ${{datasource}} variable")
            if not (t.get("expr") or "").strip():
                fail(f"{name}: panel {title!r} target {t.get('refId')}: no expr")
                continue
            queries.append((p, t))
    return queries


def substitute(expr, where):
    """Grafana's variables -> test values; $1 (label_replace) stays."""
    def repl(m):
        var = m.group(1) or m.group(2) or m.group(3)
        if var.isdigit():
            return m.group(0)
        if var not in VARIABLES:
            fail(f"{where}: unknown variable ${var}")
            return m.group(0)
        return VARIABLES[var]
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", repl, expr)


def legend_labels(target):
    return re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat") or "")


# ------------------------------------------------------------ processes
def die_with_parent():
    """preexec_fn: the child gets SIGKILL when this script dies, even by
    SIGKILL (a ctest timeout), so no trainer or Prometheus outlives it."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(prom_port, path, params):
    """GET /api/v1/<path>; returns (http status, parsed body or error text)."""
    url = f"http://127.0.0.1:{prom_port}/api/v1/{path}?" + urllib.parse.urlencode(params, doseq=True)
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read().decode())
    except urllib.error.HTTPError as e:
        body = e.read().decode(errors="replace")
        try:
            return e.code, json.loads(body)
        except ValueError:
            return e.code, body


def instant(prom_port, expr):
    status, body = api(prom_port, "query", {"query": expr})
    if status == 200 and isinstance(body, dict) and body.get("status") == "success":
        return body["data"]["result"]
    return None


def write_prometheus_config(args, metrics_port):
    """A static target with the labels the PodMonitor gives a trainer pod."""
    labels = ", ".join(f"{k}: {json.dumps(v)}" for k, v in TARGET_LABELS.items())
    path = os.path.join(args.work, "prometheus.yml")
    with open(path + ".tmp", "w") as f:
        f.write("global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
                "scrape_configs:\n"
                "  - job_name: hetermoe-trainer\n"
                "    static_configs:\n"
                f"      - targets: ['127.0.0.1:{metrics_port}']\n"
                f"        labels: {{{labels}}}\n")
    os.rename(path + ".tmp", path)
    return path


def start_prometheus(args, metrics_port, procs):
    """Prometheus first, so that it scrapes the run from its first steps (a
    target discovered later can wait seconds for its first scrape)."""
    config = write_prometheus_config(args, metrics_port)
    # Prometheus cannot bind port 0 and say which: retry if a port is taken.
    for attempt in range(5):
        port = free_port()
        log = open(os.path.join(args.work, f"prometheus-{attempt}.log"), "w")
        prom = subprocess.Popen(
            ["prometheus", f"--config.file={config}",
             f"--storage.tsdb.path={args.work}/tsdb-{attempt}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=log, preexec_fn=die_with_parent)
        log.close()
        procs.append(prom)
        deadline = time.time() + 10
        while time.time() < deadline and prom.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return prom, port
            except OSError:
                pass
            time.sleep(0.1)
        prom.kill()
        prom.wait()
    raise RuntimeError("prometheus did not start (ports taken?)")


def start_trainer(args, metrics_port, procs):
    """Starts the run serving /metrics on metrics_port; None if the port was
    taken meanwhile."""
    log_path = os.path.join(args.work, "trainer.log")
    log = open(log_path, "w")
    trainer = subprocess.Popen(
        [args.trainer, "--config", os.path.join(args.fixture, "run.yaml"),
         "--set", f"output.dir={args.work}/out", "--set", f"train.steps={STEPS}",
         "--set", f"output.checkpoint_every={CHECKPOINT_EVERY}",
         "--set", "output.keep_checkpoints=1",
         # A validation file (the training tokens will do) so that the
         # validation-loss series exists too.
         "--set", f"data.valid={os.path.join(args.fixture, 'tokens.bin')}",
         "--set", f"train.eval_every={CHECKPOINT_EVERY}", "--set", "train.eval_batches=1",
         "--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1",
         "--metrics-linger", "90", "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=log, preexec_fn=die_with_parent)
    procs.append(trainer)
    log.close()
    deadline = time.time() + 20
    while time.time() < deadline:
        with open(log_path) as f:
            text = f.read()
        if f"serving Prometheus metrics on port {metrics_port}" in text:
            return trainer
        if trainer.poll() is not None:
            if "cannot serve metrics" in text:
                return None
            break
        time.sleep(0.02)
    raise RuntimeError(f"the trainer did not serve metrics on port {metrics_port} "
                       f"(exit {trainer.poll()}):\n{text[-2000:]}")


def wait_for_target(prom_port, metrics_port):
    """Prometheus syncs new targets only every few seconds: wait until it
    scrapes (still in vain) the port the trainer will serve on."""
    deadline = time.time() + 20
    while time.time() < deadline:
        if instant(prom_port, f'up{{instance="127.0.0.1:{metrics_port}"}}'):
            return
        time.sleep(0.2)
    raise RuntimeError(f"Prometheus never scraped 127.0.0.1:{metrics_port}")


def start_run(args, procs):
    """Prometheus, then the trainer on the port Prometheus scrapes."""
    metrics_port = free_port()
    prom, prom_port = start_prometheus(args, metrics_port, procs)
    for _ in range(5):
        wait_for_target(prom_port, metrics_port)
        trainer = start_trainer(args, metrics_port, procs)
        if trainer:
            return trainer, prom_port
        # Someone took the port between free_port() and the trainer's bind.
        metrics_port = free_port()
        write_prometheus_config(args, metrics_port)
        prom.send_signal(signal.SIGHUP)  # reload
    raise RuntimeError("the trainer could not bind a metrics port")


def wait_for_scrapes(prom_port, trainer):
    """Until Prometheus saw the last step, then a few lingering scrapes more.
    Returns whether it also scraped the run twice while it trained (then
    rates and quantiles over the run must be numbers, not NaN)."""
    deadline = time.time() + 45
    step = None
    while time.time() < deadline:
        if trainer.poll() is not None:
            raise RuntimeError(f"trainer exited early ({trainer.returncode})")
        r = instant(prom_port, "max(hetermoe_trainer_step)")
        step = float(r[0]["value"][1]) if r else None
        if step == STEPS:
            break
        time.sleep(0.25)
    else:
        raise RuntimeError(f"Prometheus never saw hetermoe_trainer_step == {STEPS} (last: {step})")
    # The final checkpoint is written after the last step: give it scrapes.
    time.sleep(3)
    r = instant(prom_port, "hetermoe_trainer_step[1m]")  # the raw samples
    samples = [float(v) for _, v in r[0]["values"]] if r else []
    scrapes = len(samples)
    during = sum(1 for v in samples if v < STEPS)
    print(f"scraped the trainer {scrapes} times, {during} of them while it trained", flush=True)
    return during >= 2


# ------------------------------------------------------------ checks
def check_trainer(args, d):
    queries = check_structure("trainer.json", d, "HeterMoE training")
    procs = []
    try:
        trainer, prom_port = start_run(args, procs)
        numbers_expected = wait_for_scrapes(prom_port, trainer)
        if not numbers_expected:
            print("note: the run ended before Prometheus scraped it twice; NaN results are "
                  "not checked", flush=True)

        for v in d.get("templating", {}).get("list", []):
            if v.get("type") != "query":
                continue
            q = substitute(variable_query(v), f"trainer.json: variable {v.get('name')}")
            m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)\s*", q)
            if not m:
                fail(f"trainer.json: variable {v.get('name')}: not a label_values(metric, label) query: {q}")
                continue
            status, body = api(prom_port, f"label/{m.group(2)}/values", {"match[]": m.group(1)})
            values = body.get("data", []) if isinstance(body, dict) else []
            want = VARIABLES.get(v.get("name"))
            print(f"variable {v.get('name')}: {values}  <- {q}", flush=True)
            if status != 200 or want not in values:
                fail(f"trainer.json: variable {v.get('name')} offers {values}, not {want!r}: {q}")

        for panel, target in queries:
            where = f"trainer.json: {panel.get('title')!r} {target.get('refId')}"
            expr = substitute(target["expr"], where)
            optional = "DCGM" in (panel.get("description") or "")
            status, body = api(prom_port, "query", {"query": expr})
            ok = status == 200 and isinstance(body, dict) and body.get("status") == "success"
            result = body["data"]["result"] if ok else []
            nan = sum(1 for s in result if s["value"][1] in ("NaN", "+Inf", "-Inf"))
            sample = ""
            if result:
                labels = ",".join(f"{k}={v}" for k, v in sorted(result[0]["metric"].items()))
                sample = f"  e.g. {{{labels}}} {float(result[0]['value'][1]):.4g}"
            print(f"{len(result):3d} series  {panel.get('title')} [{target.get('refId')}]{sample}"
                  f"{f'  ({nan} NaN/Inf)' if nan else ''}"
                  f"{'  (DCGM, may be empty)' if optional else ''}", flush=True)
            if not ok:
                error = body.get("error") if isinstance(body, dict) else body
                fail(f"{where}: HTTP {status}: {error}\n    {expr}")
                continue
            if not result and not optional:
                fail(f"{where}: no series\n    {expr}")
            elif result and nan == len(result) and numbers_expected:
                fail(f"{where}: only NaN/Inf although Prometheus scraped the run while it "
                     f"trained\n    {expr}")
            for label in legend_labels(target):
                if any(label not in s["metric"] for s in result):
                    fail(f"{where}: legend uses {{{{{label}}}}}, which a returned series lacks: "
                         f"{[s['metric'] for s in result]}")
    except RuntimeError as e:
        fail(str(e))
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def operator_sources(root):
    texts = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                with open(os.path.join(dirpath, name), errors="replace") as f:
                    texts.append(f.read())
            except OSError:
                pass
    return "\n".join(texts)


def check_operator(args, d):
    queries = check_structure("operator.json", d, "HeterMoE operator")
    rules = os.path.join(args.work, "operator-dashboard-rules.yml")
    exprs = []
    with open(rules, "w") as f:
        f.write("groups:\n  - name: operator-dashboard\n    rules:\n")
        for i, (panel, target) in enumerate(queries):
            expr = substitute(target["expr"], f"operator.json: {panel.get('title')!r} {target.get('refId')}")
            exprs.append(expr)
            # JSON strings are valid YAML double-quoted scalars.
            f.write(f"      - record: dashboard:panel_{panel.get('id')}_{target.get('refId')}_{i}\n"
                    f"        expr: {json.dumps(expr)}\n")
    check = subprocess.run(["promtool", "check", "rules", rules], capture_output=True, text=True)
    print(f"promtool check rules: {len(exprs)} operator queries, exit {check.returncode}", flush=True)
    if check.returncode != 0:
        fail(f"operator.json: promtool check rules:\n{check.stdout}{check.stderr}")

    source = operator_sources(args.operator_src)
    names = set()
    for v in d.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            exprs.append(variable_query(v))
    for expr in exprs:
        for name in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
            if name.startswith(OPERATOR_PREFIXES):
                names.add(re.sub(r"_(bucket|sum|count)$", "", name))
    for name in sorted(names):
        found = re.search(rf"(?<![\w:]){re.escape(name)}(?![\w:])", source) is not None
        print(f"operator metric {name}: {'in' if found else 'NOT in'} {args.operator_src}", flush=True)
        if not found:
            fail(f"operator.json uses {name}, which the operator source never mentions")
    if not names:
        fail("operator.json uses none of the operator's metrics")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trainer", required=True)
    ap.add_argument("--fixture", required=True)
    ap.add_argument("--dashboards", required=True)
    ap.add_argument("--operator-src", required=True)
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    # SIGTERM/SIGINT unwind through the finally that kills the processes.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _: sys.exit(128 + signum))
    for tool in ("prometheus", "promtool"):
        if not shutil.which(tool):
            fail(f"{tool} is not installed (apt-get install prometheus)")
            return 1
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)

    started = time.time()
    operator = load_dashboard(os.path.join(args.dashboards, "operator.json"))
    if operator is not None:
        check_operator(args, operator)
    trainer = load_dashboard(os.path.join(args.dashboards, "trainer.json"))
    if trainer is not None:
        check_trainer(args, trainer)
    if failures:
        print(f"{len(failures)} check(s) failed", flush=True)
        return 1
    print(f"PASS: dashboards checked in {time.time() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
