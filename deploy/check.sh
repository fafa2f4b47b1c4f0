#!/usr/bin/env bash
# Checks the operations pack (scripts/test.sh runs it): Prometheus rules valid and their
# unit tests passing (promtool), the systemd unit accepted by systemd-analyze, the
# Kubernetes manifests and the Grafana dashboard well-formed and consistent. That every
# metric they use exists on a live relay is tests/deploy.rs.
set -euo pipefail
# The binary, resolved before leaving the caller's directory (a path relative to it would
# not be found from deploy/).
outboxd=${1:-${CARGO_TARGET_DIR:-$(dirname "$0")/../target}/debug/outboxd}
[ -x "$outboxd" ] || { echo "deploy/check.sh: no outboxd binary at $outboxd" >&2; exit 1; }
outboxd=$(realpath "$outboxd")
cd "$(dirname "$0")"

(cd prometheus && promtool check rules outboxd.rules.yml && promtool test rules outboxd.rules.test.yml)

unit=$(mktemp --suffix=.service)
secrets=$(mktemp -d)
trap 'rm -rf "$unit" "$secrets"' EXIT
sed "s#/usr/local/bin/outboxd#$outboxd#g" systemd/outboxd.service >"$unit"
grep -q "^ExecStart=$outboxd " "$unit" || { echo "systemd unit: the binary path was not substituted" >&2; exit 1; }
out=$(systemd-analyze verify "$unit" 2>&1) || { echo "$out" >&2; exit 1; }
[ -z "$out" ] || { echo "systemd-analyze: $out" >&2; exit 1; }
# The pre-start step must not need the servers (a database down at boot would loop).
grep '^ExecStartPre=' "$unit" | grep -q -- '--config-only' ||
    { echo "systemd unit: ExecStartPre must be 'check --config-only'" >&2; exit 1; }
echo "systemd unit: OK"

SECRETS=$secrets python3 - <<'PY'
import json, os, yaml, pathlib
docs = {}
for f in sorted(pathlib.Path("kubernetes").glob("*.yaml")):
    for d in yaml.safe_load_all(f.read_text()):
        docs[(d["kind"], d.get("metadata", {}).get("name"))] = d
kust = docs.pop(("Kustomization", None))
assert sorted(kust["resources"]) == sorted(p.name for p in pathlib.Path("kubernetes").glob("*.yaml") if p.name != "kustomization.yaml"), "kustomization lists every manifest"
dep = docs[("Deployment", "outboxd")]
spec = dep["spec"]["template"]["spec"]
c = spec["containers"][0]
assert dep["spec"]["replicas"] == 2, "two replicas: one active, one standing by"
assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
mounts = {m["name"]: m for m in c["volumeMounts"]}
vols = {v["name"]: v for v in spec["volumes"]}
assert vols["secrets"]["secret"]["secretName"] in [n for (k, n) in docs if k == "Secret"]
assert vols["config"]["configMap"]["name"] in [n for (k, n) in docs if k == "ConfigMap"]
sel = dep["spec"]["selector"]["matchLabels"]
assert docs[("PodDisruptionBudget", "outboxd")]["spec"]["selector"]["matchLabels"] == sel
assert docs[("PodDisruptionBudget", "outboxd")]["spec"]["minAvailable"] == 1
toml = docs[("ConfigMap", "outboxd")]["data"]["outboxd.toml"]
secret_dir = mounts["secrets"]["mountPath"]
for line in toml.splitlines():
    if secret_dir in line:
        name = line.split(secret_dir + "/")[1].split('"')[0]
        assert name in docs[("Secret", "outboxd")]["stringData"], f"{name} is in the Secret"
pathlib.Path(os.environ["SECRETS"], "outboxd.toml").write_text(toml.replace(secret_dir, os.environ["SECRETS"]))
dash = json.loads(pathlib.Path("grafana/outboxd.json").read_text())
ids = [p["id"] for p in dash["panels"]]
assert len(ids) == len(set(ids)) and all(p["targets"] for p in dash["panels"])
print(f"kubernetes: {len(docs)} manifests OK; dashboard: {len(ids)} panels OK")
PY

# The ConfigMap's TOML passes outboxd's own configuration check (with stand-ins for the
# Secret's files; its servers are not reachable from here, so only the configuration).
cp /var/lib/outboxd-tests/pg-tls/ca.crt "$secrets/ca.crt"
echo stand-in >"$secrets/database-password"
echo stand-in >"$secrets/kafka-password"
said=$(timeout 60 "$outboxd" --config "$secrets/outboxd.toml" check --config-only 2>"$secrets/stderr") ||
    { echo "the ConfigMap's outboxd.toml ($outboxd check): $said $(cat "$secrets/stderr")" >&2; exit 1; }
grep -qx 'config: ok' <<<"$said" ||
    { echo "the ConfigMap's outboxd.toml ($outboxd check): $said $(cat "$secrets/stderr")" >&2; exit 1; }
echo "ConfigMap outboxd.toml: config ok"
