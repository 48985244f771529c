#!/usr/bin/env bash
# Validates the Kubernetes manifests in the directory this script lives in, offline:
#
#   1. every manifest (*.yaml / *.yml except kustomization files) against the Kubernetes
#      OpenAPI schemas bundled by kubernetes-validate, strictly: an unknown field, a wrong type,
#      a missing required field or a kind with no schema is an error;
#   2. every kustomization.yaml: each `resources:` entry is a local file, or a directory with its
#      own kustomization.yaml (no remote bases: everything here must build offline);
#   3. RBAC: no `*` in any rule (verbs, resources, apiGroups, resourceNames, nonResourceURLs), no
#      rule naming `secrets`, no aggregated ClusterRoles, and every (Cluster)RoleBinding refers to
#      a role defined here (so no binding to cluster-admin or another role checked nowhere);
#   4. when kubectl is on PATH: each kustomization builds (`kubectl kustomize`, offline) and its
#      output passes the same strict schema validation. Without kubectl this step is skipped
#      (and says so); steps 1-3 need nothing but the Python venv.
#
# Usage: k8s/validate.sh [PYTHON]
#   PYTHON (or env REPRISE_PYTHON): a venv's python with scripts/requirements-dev.txt installed;
#   `scripts/python-env` makes one and prints its path.
# Env REPRISE_K8S_VERSIONS: Kubernetes versions to validate against (default "1.33 1.37").
# Exit 0: all valid; 1: a manifest failed; 2: usage or environment error.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
py=${1:-${REPRISE_PYTHON:-}}
if [ -z "$py" ]; then
  echo "usage: $0 PYTHON   (or set REPRISE_PYTHON; scripts/python-env prints one)" >&2
  exit 2
fi
# Absolute (the schema check runs from this directory), but not resolved: a venv's python is a
# symlink that must keep its venv path.
case "$py" in
  */*) if dir=$(cd "$(dirname "$py")" 2>/dev/null && pwd); then py="$dir/$(basename "$py")"; fi ;;
esac
if ! "$py" -c 'import kubernetes_validate, yaml' 2>/dev/null; then
  echo "validate.sh: $py cannot import kubernetes_validate; install scripts/requirements-dev.txt" \
    "into its venv (scripts/python-env does)" >&2
  exit 2
fi
read -r -a versions <<<"${REPRISE_K8S_VERSIONS:-1.33 1.37}"

manifests=()
kustomizations=()
while IFS= read -r -d '' f; do
  case "$(basename "$f")" in
    kustomization.yaml | kustomization.yml | Kustomization) kustomizations+=("$f") ;;
    *) manifests+=("$f") ;;
  esac
done < <(find "$here" -type f \( -name '*.yaml' -o -name '*.yml' -o -name Kustomization \) \
  -print0 | sort -z)
if [ "${#manifests[@]}" -eq 0 ]; then
  echo "validate.sh: no manifests under $here" >&2
  exit 1
fi

failed=0

# 1. Schemas. kubernetes-validate only warns (exit 0) when a kind has no schema, so its output
# is checked too: any WARN, ERROR or FATAL line fails.
version_args=()
for v in "${versions[@]}"; do version_args+=(--kubernetes-version "$v"); done
set +e
out=$(cd "$here" && "$py" -m kubernetes_validate --strict --quiet "${version_args[@]}" \
  "${manifests[@]#"$here"/}" 2>&1)
rc=$?
set -e
if [ -n "$out" ]; then printf '%s\n' "$out" >&2; fi
if [ "$rc" -ne 0 ] || grep -qE '^(WARN|ERROR|FATAL)' <<<"$out"; then
  echo "validate.sh: schema validation failed (exit $rc)" >&2
  failed=1
fi

# 2 and 3. Kustomizations and RBAC.
if ! "$py" - "$here" "${#kustomizations[@]}" "${kustomizations[@]}" "${manifests[@]}" <<'PY'; then
import os
import sys

import yaml

root = sys.argv[1]
count = int(sys.argv[2])
kustomizations = sys.argv[3:3 + count]
manifests = sys.argv[3 + count:]
errors = []


def rel(path):
    return os.path.relpath(path, root)


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


for k in kustomizations:
    base = os.path.dirname(k)
    for doc in load_all(k):
        for entry in doc.get("resources") or []:
            if not isinstance(entry, str):
                errors.append(f"{rel(k)}: resources entry {entry!r} is not a path")
            elif "://" in entry or entry.startswith(("github.com/", "git@")):
                errors.append(f"{rel(k)}: remote resource {entry!r}: only local files are allowed")
            else:
                target = os.path.normpath(os.path.join(base, entry))
                if os.path.isdir(target):
                    if not any(os.path.isfile(os.path.join(target, n)) for n in
                               ("kustomization.yaml", "kustomization.yml", "Kustomization")):
                        errors.append(f"{rel(k)}: resource {entry!r} is a directory without a kustomization.yaml")
                elif not os.path.isfile(target):
                    errors.append(f"{rel(k)}: resource {entry!r} does not exist")

RULE_KEYS = ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs")
roles = set()
bindings = []
for m in manifests:
    for doc in load_all(m):
        if not isinstance(doc, dict):
            continue
        kind = doc.get("kind")
        name = (doc.get("metadata") or {}).get("name")
        namespace = (doc.get("metadata") or {}).get("namespace")
        where = f"{rel(m)}: {kind}/{name}"
        if kind in ("Role", "ClusterRole"):
            roles.add((kind, name, namespace if kind == "Role" else None))
            if doc.get("aggregationRule"):
                errors.append(f"{where}: aggregationRule pulls in rules not checked here")
            for i, rule in enumerate(doc.get("rules") or []):
                for key in RULE_KEYS:
                    for value in rule.get(key) or []:
                        if "*" in str(value):
                            errors.append(f"{where}: rules[{i}].{key} has the wildcard {value!r}")
                        if key == "resources" and str(value).split("/")[0] == "secrets":
                            errors.append(f"{where}: rules[{i}].resources grants access to {value!r}")
        elif kind in ("RoleBinding", "ClusterRoleBinding"):
            bindings.append((where, doc.get("roleRef") or {}, namespace))

for where, ref, namespace in bindings:
    ref_kind, ref_name = ref.get("kind"), ref.get("name")
    key = (ref_kind, ref_name, namespace if ref_kind == "Role" else None)
    if key not in roles:
        errors.append(f"{where}: roleRef {ref_kind}/{ref_name} is not a role defined in these manifests")

for e in errors:
    print(f"ERROR {e}", file=sys.stderr)
sys.exit(1 if errors else 0)
PY
  echo "validate.sh: kustomization or RBAC check failed" >&2
  failed=1
fi

# 4. Rendered kustomizations.
rendered="their builds not checked: no kubectl"
if command -v kubectl >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  n=0
  for k in "${kustomizations[@]}"; do
    dir=$(dirname "$k")
    name=${dir#"$here"}
    name=${name#/}
    out="$tmp/$n.yaml"
    n=$((n + 1))
    if ! kubectl kustomize "$dir" >"$out" 2>"$tmp/err"; then
      cat "$tmp/err" >&2
      echo "validate.sh: kubectl kustomize ${name:-.} failed" >&2
      failed=1
      continue
    fi
    set +e
    res=$("$py" -m kubernetes_validate --strict --quiet "${version_args[@]}" "$out" 2>&1)
    rc=$?
    set -e
    if [ "$rc" -ne 0 ] || grep -qE '^(WARN|ERROR|FATAL)' <<<"$res"; then
      printf '%s\n' "${res//"$out"/"kustomize build ${name:-.}"}" >&2
      echo "validate.sh: the output of kubectl kustomize ${name:-.} is not valid" >&2
      failed=1
    fi
  done
  rendered="and build to valid manifests"
else
  echo "validate.sh: kubectl not found: kustomize builds not checked" >&2
fi

if [ "$failed" -ne 0 ]; then
  exit 1
fi
echo "validate.sh: ${#manifests[@]} manifest files valid against Kubernetes ${versions[*]} (strict)," \
  "${#kustomizations[@]} kustomizations resolve ($rendered), RBAC has no wildcards and no secrets"
