#!/usr/bin/env bash
# Create .venv with the pinned stack. Safe to re-run: pip skips what is installed.
#
# llama.cpp (through llama-cpp-python, which has no wheel on PyPI) is compiled once per *build key*: the
# version, the CMake arguments, the compiler and the CPU that -march=native reads (arte_edge/llama_build.py).
# On an x86 CPU with AMX (Intel Sapphire Rapids and later) the build adds -mno-amx-tile -mno-amx-int8
# -mno-amx-bf16: ggml's AMX path segfaults at the first decode there (llama.cpp issue 20824). Elsewhere the
# flags are unchanged. The wheel is kept in $ARTE_EDGE_CACHE/llama-wheels/<version>-<key>/ and built with
# pip's cache off, so a wheel made with other flags (pip's cache, another CPU) is never reused; a later setup
# on the same host takes seconds. The first build compiles llama.cpp: ~4-16 min on 2 cores.
#
# --test-deps: also install what the integration tests use from the system (openssh-server, openssh-client,
# rsync: the remote-device tests run a real sshd on 127.0.0.1 and skip without it), with apt-get as root.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ "${1:-}" = "--test-deps" ]; then
  if [ -x /usr/sbin/sshd ] && command -v ssh >/dev/null && command -v rsync >/dev/null; then
    :
  elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing openssh-server openssh-client rsync (for the remote-device tests)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client rsync \
      >/dev/null || echo "warning: could not install openssh-server/rsync; the remote-device tests will skip" >&2
  else
    echo "warning: the remote-device tests skip without sshd and rsync: sudo apt-get install -y openssh-server" \
         "openssh-client rsync" >&2
  fi
elif [ -n "${1:-}" ]; then
  echo "usage: scripts/setup.sh [--test-deps]" >&2
  exit 2
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# pip prints a harmless "Location ... is ignored" line per package on this machine's index setup: hide only that.
pipq() { .venv/bin/python -m pip "$@" -q --disable-pip-version-check 2> >(grep -v "is ignored" >&2); }
pipq install -U pip wheel
# torch first, exactly pinned: a looser spec lets the resolver pull a multi-GB CUDA build.
pipq install -c constraints.txt torch==2.13.0

# ---- llama.cpp, built for this host and keyed by its flags ------------------------------------------------
LLAMA_VERSION=$(sed -n 's/^llama-cpp-python==//p' constraints.txt)
eval "$(.venv/bin/python -m arte_edge.llama_build shell "$LLAMA_VERSION")"   # LLAMA_CMAKE_ARGS, _KEY, _WHY
CACHE=${ARTE_EDGE_CACHE:-$HOME/.cache/arte-edge}
WHEELHOUSE="$CACHE/llama-wheels/$LLAMA_VERSION-$LLAMA_BUILD_KEY"
if ! compgen -G "$WHEELHOUSE/llama_cpp_python-*.whl" >/dev/null; then
  echo "building llama-cpp-python $LLAMA_VERSION (key $LLAMA_BUILD_KEY; $LLAMA_BUILD_WHY); CMake: $LLAMA_CMAKE_ARGS"
  rm -rf "$WHEELHOUSE.partial"
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    pipq wheel --no-cache-dir --no-deps -c constraints.txt "llama-cpp-python==$LLAMA_VERSION" -w "$WHEELHOUSE.partial"
  rm -rf "$WHEELHOUSE" && mv "$WHEELHOUSE.partial" "$WHEELHOUSE"
fi
if [ "$(cat .venv/llama-build-key 2>/dev/null)" != "$LLAMA_BUILD_KEY" ]; then
  pipq install --force-reinstall --no-deps "$WHEELHOUSE"/llama_cpp_python-*.whl
  echo "$LLAMA_BUILD_KEY" > .venv/llama-build-key
fi

# Everything else (llama-cpp-python is already installed at the pinned version, so pip keeps that build).
pipq install -c constraints.txt -e ".[qlora,onnx,server,dev]"
.venv/bin/python - <<'PY'
import llama_cpp, torch, transformers, trl, peft
from arte_edge.llama_build import check_llama_build, llama_build_record
check_llama_build()  # refuses a build that would crash on this CPU
rec = llama_build_record()
print(f"arte-edge env ok: torch {torch.__version__} | llama-cpp-python {llama_cpp.__version__} "
      f"(AMX kernels {'on' if rec['amx_kernels'] else 'off'}; host AMX {'yes' if rec['host_has_amx'] else 'no'}) | "
      f"transformers {transformers.__version__} | trl {trl.__version__} | peft {peft.__version__}")
PY
