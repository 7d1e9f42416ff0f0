#!/usr/bin/python3
"""A real Prometheus scrapes a training run's /metrics endpoint.

Starts hetermoe-trainer on the golden fixture's run file with --metrics-port,
points Debian's `prometheus` server at it (1 s scrape interval), and checks
through Prometheus' query API that the series the trainer promises arrive with
true values: the step counter reaches train.steps, the step-time histogram
counted every step, the per-expert token counters add up to
steps x tokens-per-step x top-k x layers. `promtool check metrics` must accept
the raw exposition too.

    prometheus_scrape_test.py --trainer PATH --fixture DIR --work DIR
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def query(prom_port, expr):
    url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    body = json.loads(get(url))
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trainer", required=True)
    ap.add_argument("--fixture", required=True)
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    for tool in ("prometheus", "promtool"):
        if not shutil.which(tool):
            fail(f"{tool} is not installed (apt-get install prometheus)")
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)

    steps, batch, seq, layers, topk = 12, 4, 16, 2, 2
    # The trainer binds a free port itself and says which: no race with
    # other tests for a port picked in advance.
    trainer = subprocess.Popen(
        [args.trainer, "--config", os.path.join(args.fixture, "run.yaml"),
         "--set", f"output.dir={args.work}/out", "--set", f"train.steps={steps}",
         "--metrics-port", "0", "--metrics-host", "127.0.0.1",
         "--metrics-linger", "60", "--no-progress"],
        stderr=subprocess.PIPE, text=True)
    metrics_port = None
    for line in trainer.stderr:
        m = re.search(r"serving Prometheus metrics on port (\d+)", line)
        if m:
            metrics_port = int(m.group(1))
            break
    if not metrics_port:
        fail(f"the trainer never said where it serves metrics (exit {trainer.poll()})")
    prom_config = os.path.join(args.work, "prometheus.yml")
    with open(prom_config, "w") as f:
        f.write("global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
                "scrape_configs:\n"
                "  - job_name: hetermoe-trainer\n"
                f"    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n")
    # Prometheus cannot bind port 0 and report it: retry if a port is taken.
    for attempt in range(5):
        prom_port = free_port()
        prom = subprocess.Popen(
            ["prometheus", f"--config.file={prom_config}",
             f"--storage.tsdb.path={args.work}/tsdb-{attempt}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        if prom.poll() is None:
            break
    else:
        trainer.kill()
        fail("prometheus did not start (ports taken?)")
    try:
        deadline = time.time() + 60
        step = None
        while time.time() < deadline:
            if trainer.poll() is not None:
                fail(f"trainer exited early ({trainer.returncode})")
            try:
                step = query(prom_port, "hetermoe_trainer_step")
            except OSError:
                step = None  # Prometheus still starting
            if step == steps:
                break
            time.sleep(0.5)
        else:
            fail(f"Prometheus never saw hetermoe_trainer_step == {steps} (last: {step})")

        count = query(prom_port, "hetermoe_trainer_step_seconds_count")
        if count != steps:
            fail(f"step histogram counted {count} steps, expected {steps}")
        routed = query(prom_port, "sum(hetermoe_trainer_expert_tokens_total)")
        want = steps * batch * seq * topk * layers
        if routed != want:
            fail(f"per-expert token counters sum to {routed}, expected {want}")
        tokens = query(prom_port, "hetermoe_trainer_tokens_total")
        if tokens != steps * batch * seq:
            fail(f"tokens_total is {tokens}, expected {steps * batch * seq}")
        loss = query(prom_port, "hetermoe_trainer_loss")
        with open(os.path.join(args.work, "out", "metrics.jsonl")) as f:
            last = json.loads(f.read().splitlines()[-1])
        if loss is None or abs(loss - last["loss"]) > 1e-9 * abs(last["loss"]):
            fail(f"Prometheus loss {loss} != metrics.jsonl loss {last['loss']}")

        exposition = get(f"http://127.0.0.1:{metrics_port}/metrics")
        check = subprocess.run(["promtool", "check", "metrics"], input=exposition,
                               text=True, capture_output=True)
        if check.returncode != 0:
            fail(f"promtool check metrics: {check.stdout}{check.stderr}")
        print(f"PASS: Prometheus scraped step={step}, {int(routed)} routed tokens, loss {loss:.4f}")
    finally:
        trainer.kill()
        prom.kill()
        trainer.wait()
        prom.wait()


if __name__ == "__main__":
    main()
