#!/usr/bin/env bash
# Create .venv with the pinned stack. Safe to re-run: pip skips what is installed, and the compiled
# llama-cpp-python wheel is reused from pip's cache (the first build compiles llama.cpp: ~4-16 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# pip prints a harmless "Location ... is ignored" line per package on this machine's index setup: hide only that.
pipq() { .venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v "is ignored" >&2); }
pipq -U pip wheel
# torch first, exactly pinned: a looser spec lets the resolver pull a multi-GB CUDA build.
pipq -c constraints.txt torch==2.13.0
# llama.cpp: no multimodal part, no tests/examples; native CPU flags (this host is also the benchmark host).
export CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
pipq -c constraints.txt -e ".[qlora,onnx,server,dev]"
.venv/bin/python - <<'PY'
import llama_cpp, torch, transformers, trl, peft
print(f"arte-edge env ok: torch {torch.__version__} | llama-cpp-python {llama_cpp.__version__} | "
      f"transformers {transformers.__version__} | trl {trl.__version__} | peft {peft.__version__}")
PY
