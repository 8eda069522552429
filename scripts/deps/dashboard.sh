#!/usr/bin/env bash
# Installs what tests/dashboard.rs needs to type-check the Grafana dashboard:
# TypeScript and @grafana/schema, at the exact versions pinned in
# dashboards/check/package-lock.json, into dashboards/check/node_modules.
# Called by scripts/install-test-deps; does nothing once they are installed.
# Needs Node.js and npm on PATH.
set -euo pipefail
cd "$(dirname "$0")/../../dashboards/check"

if [ -x node_modules/.bin/tsc ] && [ -f node_modules/@grafana/schema/package.json ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "the dashboard check needs Node.js and npm: install them and run this again" >&2
  exit 1
fi
echo "installing the dashboard check's npm packages in dashboards/check" >&2
npm ci --no-audit --no-fund --loglevel=error
