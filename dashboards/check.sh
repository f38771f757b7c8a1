#!/usr/bin/env bash
# Checks the dashboards/ folder: alert rules (syntax and unit tests), dashboard JSON, and
# optionally a scraped /metrics file against Prometheus' exposition-format linter.
#
#   dashboards/check.sh                      # rules, rule tests, dashboard JSON
#   dashboards/check.sh --metrics FILE       # also `promtool check metrics < FILE`
#
# Installs promtool from Debian's `prometheus` package when it is missing (needs root or sudo).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
metrics_file=""

while [[ $# -gt 0 ]]; do
    case "$1" in
        --metrics)
            [[ $# -ge 2 ]] || { echo "check.sh: --metrics needs a FILE" >&2; exit 2; }
            metrics_file="$2"
            shift 2
            ;;
        --metrics=*)
            metrics_file="${1#--metrics=}"
            shift
            ;;
        -h|--help)
            sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "check.sh: unknown argument: $1" >&2
            exit 2
            ;;
    esac
done

if [[ -n "$metrics_file" && ! -r "$metrics_file" ]]; then
    echo "check.sh: cannot read metrics file: $metrics_file" >&2
    exit 2
fi

install_promtool() {
    local sudo=""
    if [[ "$(id -u)" -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || {
            echo "check.sh: promtool is missing and we are not root (no sudo either)" >&2
            exit 1
        }
        sudo="sudo"
    fi
    echo "== installing promtool (Debian package 'prometheus')"
    # The package's postinst would start a prometheus service where an init system runs;
    # a policy-rc.d that denies service starts keeps the install side-effect free.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
        $sudo chmod +x "$policy"
        created_policy=1
    fi
    local rc=0
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq || rc=$?
    if [[ $rc -eq 0 ]]; then
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            prometheus >/dev/null || rc=$?
    fi
    if [[ $created_policy -eq 1 ]]; then
        $sudo rm -f "$policy"
    fi
    if [[ $rc -ne 0 ]]; then
        echo "check.sh: installing prometheus (for promtool) failed" >&2
        exit 1
    fi
}

if ! command -v promtool >/dev/null 2>&1; then
    install_promtool
fi
command -v promtool >/dev/null 2>&1 || { echo "check.sh: promtool still not found" >&2; exit 1; }
echo "== $(promtool --version 2>&1 | head -n1)"

echo "== promtool check rules alerts.yml"
promtool check rules "$here/alerts.yml"

echo "== promtool test rules alerts.test.yml"
# promtool resolves rule_files relative to the test file.
promtool test rules "$here/alerts.test.yml"

echo "== JSON: xxl-edge.json"
python3 -m json.tool "$here/xxl-edge.json" >/dev/null
echo "  SUCCESS: valid JSON"

if [[ -n "$metrics_file" ]]; then
    echo "== promtool check metrics < $metrics_file"
    promtool check metrics <"$metrics_file"
    echo "  SUCCESS: no lint problems"
fi

echo "== all dashboard checks passed"
