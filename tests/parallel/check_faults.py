#!/usr/bin/python3
"""Faults in a distributed run end with a clear error, never a hang.

- A rank killed mid-step: the launcher exits non-zero within the collective
  timeout, naming the rank, and leaves no rank process behind. Without a
  launcher (one process per rank, as pods), the others exit retryable
  naming a rank; also with the ranks on emulated GPUs moving rows over
  NCCL (--plugin).
- WORLD_SIZE that disagrees with the run file's parallel section: immediate,
  named error.
- A rank that never arrives, and an unreachable MASTER_ADDR: a clear error
  once the rendezvous timeout passes.
- Exit statuses: 175 (retryable) for a lost peer or a rendezvous timeout, 1
  (permanent) for a WORLD_SIZE or plan mismatch, as the operator reads them.
- Start order: expert ranks started before rank 0, with MASTER_ADDR a name
  that resolves only once rank 0 exists (as a pod's DNS record appears with
  its IP), still meet and train (a private /etc/hosts per run, as root).
- HETERMOE_PLAN (the operator's plan.json) that disagrees with the run file:
  a named error before the rendezvous.

    check_faults.py --trainer PATH --fixture GOLDEN_DIR --work DIR
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

TIMEOUT = 4  # parallel.timeout_seconds for these runs
RETRYABLE, PERMANENT = 175, 1  # hetermoe-trainer's exit statuses

RUN = """model: {{config: {fx}/config.json, init: {fx}/model.safetensors}}
data: {{train: {fx}/tokens.bin}}
train: {{steps: 100000, global_batch: 8, micro_batches: 4, seq_len: 16, threads: 1}}
parallel: {{attention_ranks: 1, expert_ranks: 2, schedule: zebra, timeout_seconds: {timeout}}}
emulate: {{expert_rank: {{attention: 1.0, experts: 2.0}}}}
output: {{dir: {out}}}
"""


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def children_of(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def rank_of(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for var in f.read().split(b"\0"):
                if var.startswith(b"RANK="):
                    return int(var[5:])
    except OSError:
        pass
    return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_first_step(metrics, seconds=60):
    """Until a run's metrics.jsonl has its first step (or `seconds` pass)."""
    deadline = time.time() + seconds
    while time.time() < deadline and not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
        time.sleep(0.1)


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def killed_rank(trainer, run_file, work):
    out = os.path.join(work, "kill")
    p = subprocess.Popen([trainer, "--config", run_file, "--no-progress", "--set", f"output.dir={out}"],
                         stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(out, "metrics.jsonl")
    wait_first_step(metrics)
    ranks = {}
    for _ in range(50):  # the ranks' environments become readable as they exec
        ranks = {rank_of(c): c for c in children_of(p.pid)}
        if 2 in ranks or p.poll() is not None:
            break
        time.sleep(0.1)
    if 2 not in ranks:
        p.kill()
        _, err = p.communicate()
        fail(f"could not find rank 2 among the launcher's children {ranks} (launcher exit "
             f"{p.returncode}):\n{err}")
    time.sleep(0.05)  # land inside a step
    t0 = time.time()
    os.kill(ranks[2], signal.SIGKILL)
    try:
        _, err = p.communicate(timeout=TIMEOUT + 15)
    except subprocess.TimeoutExpired:
        p.kill()
        fail("the run hung after a rank was killed")
    took = time.time() - t0
    if p.returncode == 0:
        fail("the run succeeded although rank 2 was killed")
    if "rank 2" not in err:
        fail(f"the error does not name rank 2:\n{err}")
    left = [c for c in ranks.values() if alive(c)]
    if left:
        fail(f"rank processes left behind: {left}")
    print(f"killed rank 2: exit {p.returncode} after {took:.1f} s: {err.strip().splitlines()[-1]}")


def interrupted_launcher(trainer, run_file, work):
    """Ctrl-C to the local launcher: every rank stops, the launcher exits 130."""
    out = os.path.join(work, "interrupt")
    p = subprocess.Popen([trainer, "--config", run_file, "--no-progress", "--set", f"output.dir={out}"],
                         stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(out, "metrics.jsonl")
    wait_first_step(metrics)
    ranks = children_of(p.pid)
    p.send_signal(signal.SIGINT)
    try:
        _, err = p.communicate(timeout=TIMEOUT + 15)
    except subprocess.TimeoutExpired:
        p.kill()
        fail("the launcher hung after Ctrl-C")
    if p.returncode != 128 + signal.SIGINT:
        fail(f"Ctrl-C: the launcher exited {p.returncode}, not 130:\n{err}")
    time.sleep(0.2)
    left = [r for r in ranks if alive(r)]
    if left:
        fail(f"Ctrl-C left rank processes behind: {left}")
    print(f"Ctrl-C to the launcher: exit {p.returncode}: {err.strip().splitlines()[-1]}")


def killed_rank_without_launcher(trainer, run_file, work, plugin=None):
    """As in a cluster: one process per rank, no launcher to stop the rest.
    With `plugin` (the emulated CUDA plugin) the ranks run on emulated GPUs
    and move rows over NCCL, so NCCL is where they meet the dead peer."""
    port = free_port()
    procs = []
    out = os.path.join(work, "env-kill-nccl" if plugin else "env-kill")
    extra = ["--set", "train.device=cuda", "--set", "parallel.transport=nccl"] if plugin else []
    for rank in range(3):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="3", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port))
        if plugin:
            env.update(HETERMOE_CUDA_PLUGIN=plugin, OMP_WAIT_POLICY="passive")
        procs.append(subprocess.Popen(
            [trainer, "--config", run_file, "--no-progress", "--set", "parallel.launch=env",
             "--set", f"output.dir={out}", *extra],
            env=env, stderr=subprocess.PIPE, text=True))
    metrics = os.path.join(out, "metrics.jsonl")
    wait_first_step(metrics)
    time.sleep(0.05)
    procs[2].kill()
    t0 = time.time()
    for rank in (0, 1):
        try:
            _, err = procs[rank].communicate(timeout=TIMEOUT + 15)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            fail(f"rank {rank} hung after rank 2 was killed")
        if procs[rank].returncode != RETRYABLE:
            fail(f"rank {rank} exited {procs[rank].returncode}, not {RETRYABLE} (retryable), "
                 f"after rank 2 was killed:\n{err}")
        if "rank" not in err:
            fail(f"rank {rank}'s error names no rank:\n{err}")
        if plugin and rank == 0 and "rows between ranks: nccl" not in err:
            fail(f"rank {rank} did not move rows over NCCL:\n{err}")
        print(f"without a launcher{' (NCCL transport)' if plugin else ''}, rank {rank}: exit {procs[rank].returncode} after "
              f"{time.time() - t0:.1f} s: {err.strip().splitlines()[-1]}")
    procs[2].wait()


def env_rank(trainer, run_file, work, rank, world, port, expect, within, status):
    env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port))
    t0 = time.time()
    p = subprocess.run([trainer, "--config", run_file, "--no-progress", "--set", "parallel.launch=env",
                        "--set", f"output.dir={os.path.join(work, 'env')}"],
                       env=env, capture_output=True, text=True, timeout=TIMEOUT + 30)
    took = time.time() - t0
    if p.returncode != status or expect not in p.stderr:
        fail(f"RANK={rank} WORLD_SIZE={world}: expected exit {status} with {expect!r}, got "
             f"{p.returncode}: {p.stderr}")
    if took > within:
        fail(f"RANK={rank} WORLD_SIZE={world}: took {took:.1f} s, more than {within} s")
    print(f"RANK={rank} WORLD_SIZE={world}: exit {p.returncode} after {took:.1f} s: "
          f"{p.stderr.strip().splitlines()[-1]}")


def wrong_plan(trainer, run_file, work):
    """plan.json for 2 attention + 1 expert ranks; the run file says 1 + 2."""
    plan = os.path.join(work, "plan.json")
    ranks = [{"rank": 0, "group": 0, "role": "attention", "micro_batches": [0, 1], "experts": [[]]},
             {"rank": 1, "group": 0, "role": "attention", "micro_batches": [2, 3], "experts": [[]]},
             {"rank": 2, "group": 0, "role": "expert", "micro_batches": [], "experts": [[0, 1, 2, 3]]}]
    with open(plan, "w") as f:
        json.dump({"engine": {"format": "hetermoe-placement/1", "schedule": "zebra", "groups": 1,
                              "ranks_per_group": 3, "attention_per_group": 2, "micro_batches": 4,
                              "ranks": ranks}}, f)
    env = dict(os.environ, RANK="1", WORLD_SIZE="3", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               HETERMOE_PLAN=plan)
    t0 = time.time()
    p = subprocess.run([trainer, "--config", run_file, "--no-progress", "--set", "parallel.launch=env",
                        "--set", f"output.dir={os.path.join(work, 'plan')}"],
                       env=env, capture_output=True, text=True, timeout=TIMEOUT + 30)
    if p.returncode != PERMANENT or "HETERMOE_PLAN" not in p.stderr or "attention_per_group" not in p.stderr:
        fail(f"a plan for another shape: expected exit {PERMANENT} naming HETERMOE_PLAN, got "
             f"{p.returncode}: {p.stderr}")
    if time.time() - t0 > 2:
        fail("a wrong plan was noticed only after waiting for the other ranks")
    print(f"plan mismatch: exit {p.returncode}: {p.stderr.strip().splitlines()[-1]}")


def late_master(trainer, fixture, work):
    """Expert ranks start 3 s before rank 0, and MASTER_ADDR resolves only
    once rank 0 is there: the run still trains (timeout 20 s)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        print("late master: skipped (needs root and unshare for a private /etc/hosts)")
        return
    hosts = os.path.join(work, "hosts")
    with open(hosts, "w") as f:
        f.write("127.0.0.1 localhost\n")
    run_file = os.path.join(work, "late.yaml")
    with open(run_file, "w") as f:
        f.write(RUN.format(fx=os.path.abspath(fixture), out=os.path.join(work, "late"), timeout=20)
                .replace("steps: 100000", "steps: 3"))
    port = free_port()
    name = "late-attention-0.late.default.svc"

    def start(rank):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="3", MASTER_ADDR=name, MASTER_PORT=str(port),
                   HETERMOE_LISTEN_ADDR="127.0.0.1")
        script = 'mount --bind "$0" /etc/hosts && exec "$@"'
        return subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, hosts,
                                 trainer, "--config", run_file, "--no-progress", "--set", "parallel.launch=env"],
                                env=env, stderr=subprocess.PIPE, text=True)
    experts = [start(1), start(2)]
    time.sleep(3)
    for q in experts:
        if q.poll() is not None:
            fail(f"an expert rank gave up before rank 0 existed: exit {q.returncode}: {q.stderr.read()}")
    with open(hosts, "r+") as f:  # in place: the bind mounts see the same file
        f.seek(0, os.SEEK_END)
        f.write(f"127.0.0.1 {name}\n")
    procs = [start(0)] + experts
    for rank, q in enumerate(procs):
        try:
            _, err = q.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for x in procs:
                x.kill()
            fail(f"late master: rank {rank} hung")
        if q.returncode != 0:
            fail(f"late master: rank {rank} exited {q.returncode}:\n{err}")
    with open(os.path.join(work, "late", "metrics.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f if line.strip()]
    if steps != [1, 2, 3]:
        fail(f"late master: trained steps {steps}, expected [1, 2, 3]")
    print("late master: expert ranks started 3 s early with MASTER_ADDR unresolvable; trained 3 steps")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trainer", required=True)
    ap.add_argument("--fixture", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--plugin", help="the emulated CUDA plugin: also kill a rank of an NCCL-transport run")
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    run_file = os.path.join(args.work, "run.yaml")
    with open(run_file, "w") as f:
        f.write(RUN.format(fx=os.path.abspath(args.fixture), out="out", timeout=TIMEOUT))

    killed_rank(args.trainer, run_file, args.work)
    interrupted_launcher(args.trainer, run_file, args.work)
    killed_rank_without_launcher(args.trainer, run_file, args.work)
    if args.plugin:
        killed_rank_without_launcher(args.trainer, run_file, args.work, args.plugin)
    # 1 + 2 ranks need WORLD_SIZE 3.
    env_rank(args.trainer, run_file, args.work, 0, 4, free_port(), "WORLD_SIZE=4", within=2,
             status=PERMANENT)
    # Rank 0 alone: the others never come.
    env_rank(args.trainer, run_file, args.work, 0, 3, free_port(), "timed out", within=TIMEOUT + 5,
             status=RETRYABLE)
    # Rank 1 with nobody serving at MASTER_ADDR:MASTER_PORT.
    env_rank(args.trainer, run_file, args.work, 1, 3, free_port(), "cannot reach rank 0",
             within=TIMEOUT + 5, status=RETRYABLE)
    wrong_plan(args.trainer, run_file, args.work)
    late_master(args.trainer, args.fixture, args.work)
    print("PASS: every fault ended in a clear error within the timeout")


if __name__ == "__main__":
    main()
