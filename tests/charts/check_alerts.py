#!/usr/bin/python3
"""The chart's alerts (templates/prometheusrule.yaml), judged by Helm's own
binary and Prometheus's own promtool:

  * with the default values the chart renders no PrometheusRule;
  * `helm lint --strict` passes with prometheusRule.enabled=true, and
    values.schema.json refuses bad prometheusRule values;
  * enabled, it renders one monitoring.coreos.com/v1 PrometheusRule in the
    release namespace, carrying prometheusRule.additionalLabels (the
    `release` label kube-prometheus-stack selects on) and the five alerts,
    each with a severity label and summary/description annotations naming
    the job's namespace (and the job, for the trainer alerts);
  * every metric name the rules and the unit tests use is one the operator
    (operator/machinery/operator_metrics.cc) or the trainer
    (trainer/run/metrics.cc) registers;
  * its `spec` written as a plain Prometheus rules file passes
    `promtool check rules`, and `promtool test rules` passes on each unit
    test file (tests/charts/alerts*_test.yaml), copied next to the rules file
    it names, rendered with the values below. alerts_test.yaml must make
    every alert fire and also hold an evaluation where it must not.

    check_alerts.py --chart DIR --tests DIR --source DIR --work DIR

Helm comes from $HETERMOE_HELM_DIR (tests/charts/setup-helm.sh), promtool
from PATH (Debian's `prometheus` package). Prints "FAIL: ..." for every
problem; exits 0 only if all checks pass.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys

import yaml  # python3-yaml, a dependency of python3-torch (debian-packages.sh test)

RELEASE, NAMESPACE = "hetermoe", "hetermoe-system"
ALERTS = {"HeterMoEJobFailed", "HeterMoETrainingStalled", "HeterMoELossNotFinite",
          "HeterMoEJobRestartingRepeatedly", "HeterMoEHighPipelineBubble"}
# Alerts on the operator's counters (per job namespace) and on trainer pods.
OPERATOR_ALERTS = {"HeterMoEJobFailed", "HeterMoEJobRestartingRepeatedly"}
# The rules files the unit tests name, and the values each is rendered with.
RULE_FILES = {
    "rules.yaml": [],
    "rules_values.yaml": ["--set", "prometheusRule.trainingStalled.window=30m",
                          "--set", "prometheusRule.jobRestartingRepeatedly.restarts=1",
                          "--set", "prometheusRule.jobRestartingRepeatedly.window=20m",
                          "--set", "prometheusRule.highPipelineBubble.threshold=0.8",
                          "--set", "prometheusRule.highPipelineBubble.for=5m"],
}
ENABLED = ["--set", "prometheusRule.enabled=true",
           "--set", "prometheusRule.additionalLabels.release=kube-prometheus-stack"]
METRIC_SOURCES = ("operator/machinery/operator_metrics.cc", "trainer/run/metrics.cc")

failures = []


def fail(message):
    failures.append(message)
    print(f"FAIL: {message}", flush=True)


def run(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return r.returncode, r.stdout


def helm_template(helm, chart, sets):
    code, out = run([helm, "template", RELEASE, chart, "--namespace", NAMESPACE] + sets)
    if code != 0:
        fail(f"helm template {' '.join(sets)}: {out}")
        return None
    # helm warns about the crds/ symlink on stderr; keep the manifests only.
    out = out[out.find("---"):] if "---" in out else out
    return [d for d in yaml.safe_load_all(out) if d]


def prometheus_rules(docs, what):
    rules = [d for d in docs or [] if d.get("kind") == "PrometheusRule"]
    if len(rules) != 1:
        fail(f"{what}: {len(rules)} PrometheusRules rendered, expected 1")
        return None
    return rules[0]


def check_rule_object(rule):
    if rule.get("apiVersion") != "monitoring.coreos.com/v1":
        fail(f"PrometheusRule apiVersion {rule.get('apiVersion')}")
    meta = rule.get("metadata", {})
    if meta.get("namespace") != NAMESPACE:
        fail(f"PrometheusRule namespace {meta.get('namespace')}, expected {NAMESPACE}")
    if meta.get("labels", {}).get("release") != "kube-prometheus-stack":
        fail(f"PrometheusRule lacks additionalLabels' release label: {meta.get('labels')}")
    found = {}
    for group in rule.get("spec", {}).get("groups", []):
        for r in group.get("rules", []):
            if "alert" in r:
                found[r["alert"]] = r
    if set(found) != ALERTS:
        fail(f"alerts {sorted(found)}, expected {sorted(ALERTS)}")
    for name, r in found.items():
        if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
            fail(f"{name}: severity label {r.get('labels')}")
        ann = r.get("annotations", {})
        names = (["$labels.exported_namespace"] if name in OPERATOR_ALERTS
                 else ["$labels.namespace", "$labels.hetermoe_job"])
        for key in ("summary", "description"):
            for label in names:
                if label not in ann.get(key, ""):
                    fail(f"{name}: annotation {key} does not name {label}: {ann.get(key)!r}")
    return found


def registered_metrics(source):
    names = set()
    for path in METRIC_SOURCES:
        with open(os.path.join(source, path)) as f:
            names |= set(re.findall(r'"(hetermoe_[a-z_]+)"', f.read()))
    return names


def check_metric_names(text, registered, what):
    """Every hetermoe_* name in text is a registered metric or the PodMonitor's
    hetermoe_job label."""
    used = set(re.findall(r"\b(hetermoe_[a-z_]+)", text)) - {"hetermoe_job"}
    for name in sorted(used):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name not in registered and base not in registered:
            fail(f"{what}: metric {name} is registered neither by the operator nor by the trainer")
    return used


def check_coverage(test_doc, what):
    """Every alert fires in some evaluation, and is checked silent in another."""
    fires, silent = set(), set()
    for t in test_doc.get("tests", []):
        for a in t.get("alert_rule_test", []):
            (fires if a.get("exp_alerts") else silent).add(a["alertname"])
    for name in sorted(ALERTS - fires):
        fail(f"{what}: no evaluation where {name} fires")
    for name in sorted(ALERTS - silent):
        fail(f"{what}: no evaluation where {name} must stay silent")


class RulesDumper(yaml.SafeDumper):
    """Multi-line strings (the exprs) as YAML block scalars, as written by hand."""


RulesDumper.add_representer(
    str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chart", required=True)
    ap.add_argument("--tests", required=True, help="directory of alerts*_test.yaml")
    ap.add_argument("--source", required=True, help="the repository (metric registrations)")
    ap.add_argument("--work", required=True)
    args = ap.parse_args()

    helm_dir = os.environ.get("HETERMOE_HELM_DIR", "")
    if not helm_dir:
        print('HETERMOE_HELM_DIR is not set: run HETERMOE_HELM_DIR="$(tests/charts/setup-helm.sh)"',
              file=sys.stderr)
        return 1
    helm = os.path.join(helm_dir, "helm")
    promtool = shutil.which("promtool")
    if not promtool:
        print("promtool not found (Debian package prometheus: docker/debian-packages.sh test)",
              file=sys.stderr)
        return 1
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)

    # Off by default.
    docs = helm_template(helm, args.chart, [])
    if docs is not None:
        kinds = [d.get("kind") for d in docs]
        if "PrometheusRule" in kinds:
            fail("a PrometheusRule is rendered with the default values")
        print(f"default values render {len(docs)} objects, no PrometheusRule: "
              f"{'ok' if 'PrometheusRule' not in kinds else 'NO'}")

    # helm lint with it on; the schema refuses bad values.
    code, out = run([helm, "lint", "--strict", args.chart] + ENABLED)
    if code != 0:
        fail(f"helm lint --strict with prometheusRule.enabled=true: {out}")
    else:
        print("helm lint --strict with prometheusRule.enabled=true: ok")
    # (--set passes decimals as strings, --set-json as numbers.)
    for bad, key in ((["--set", "prometheusRule.highPipelineBubble.threshold=1.5"], "threshold"),
                     (["--set-json", "prometheusRule.highPipelineBubble.threshold=1"], "threshold"),
                     (["--set-json", "prometheusRule.highPipelineBubble.threshold=-0.1"], "threshold"),
                     (["--set", "prometheusRule.jobRestartingRepeatedly.restarts=-1"], "restarts"),
                     (["--set", "prometheusRule.trainingStalled.window=15"], "window"),
                     (["--set", "prometheusRule.severity=page"], "severity")):
        code, out = run([helm, "template", RELEASE, args.chart] + ENABLED + bad)
        if code == 0 or key not in out:
            fail(f"values.schema.json accepted {' '.join(bad)}: {out[-300:]}")
        else:
            print(f"schema refuses {' '.join(bad)}: ok")

    registered = registered_metrics(args.source)
    test_files = sorted(f for f in os.listdir(args.tests) if re.fullmatch(r"alerts\w*_test\.yaml", f))
    if "alerts_test.yaml" not in test_files:
        fail(f"{args.tests}/alerts_test.yaml is missing")

    rendered = {}
    for test_file in test_files:
        with open(os.path.join(args.tests, test_file)) as f:
            text = f.read()
        doc = yaml.safe_load(text)
        series = "\n".join(s["series"] for t in doc.get("tests", []) for s in t.get("input_series", []))
        check_metric_names(series, registered, test_file)
        if test_file == "alerts_test.yaml":
            check_coverage(doc, test_file)
        for rules_name in doc.get("rule_files", []):
            if rules_name in rendered:
                continue
            if rules_name not in RULE_FILES:
                fail(f"{test_file}: rule file {rules_name} is not one check_alerts.py renders")
                continue
            rule = prometheus_rules(helm_template(helm, args.chart, ENABLED + RULE_FILES[rules_name]),
                                    rules_name)
            if rule is None:
                continue
            found = check_rule_object(rule)
            check_metric_names("\n".join(r["expr"] for r in found.values()), registered, rules_name)
            path = os.path.join(args.work, rules_name)
            with open(path, "w") as f:
                yaml.dump(rule["spec"], f, Dumper=RulesDumper, sort_keys=False, width=1000)
            rendered[rules_name] = path
            code, out = run([promtool, "check", "rules", path])
            print(out, end="", flush=True)
            if code != 0:
                fail(f"promtool check rules {rules_name}")
        shutil.copy(os.path.join(args.tests, test_file), args.work)
        code, out = run([promtool, "test", "rules", os.path.join(args.work, test_file)])
        print(out, end="", flush=True)
        if code != 0:
            fail(f"promtool test rules {test_file}")

    print("PASS" if not failures else f"{len(failures)} failure(s)")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
