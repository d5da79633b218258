#!/usr/bin/env bash
# One prepared check of jax_adalora on one NVIDIA GPU, in under 8 minutes on an H200 (the steps' time limits sum
# to 7 min 45 s; nothing of it has run on a GPU yet):
#   1. JAX with CUDA at the version requirements.txt pins (installed when missing and pip can reach an index),
#   2. the tests that matter on a GPU (numerics in bf16, DeBERTa's relative scores, the step and its statistics),
#   3. scripts/benchmarks/bench.py for MiniLM and DeBERTa-v3-base in bfloat16 (ours against PEFT, one batch shape each),
#   4. a short bfloat16 training run (MiniLM-L6 on movie-sentiment, the default run in bf16).
# Everything lands in $OUT (default ./gpu_check_out): at most 8 files, one folder deep, so that a machine that
# returns only a few files returns them all.
#
# The GPU machine may have no network. Prepare its inputs first, on a machine that has them (the CPU dev box):
#   bash scripts/benchmarks/gpu_check.sh --prepare     # writes runs/gpu_check_assets/ (about 47 MB)
# then, on the GPU machine, from the repository root, with runs/gpu_check_assets/ copied alongside:
#   bash scripts/benchmarks/gpu_check.sh
# The assets hold the pretrained MiniLM-L6 in float16 (the float32 wheel is 88 MB), its tokenizer, the movie
# sentences (normally fetched from PyPI on first use) and pure-Python wheels the GPU image may lack.
# Each step has its own time limit; a failing or overrunning step is recorded and the next one runs.

set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO" || exit 1
ASSETS="runs/gpu_check_assets"
PY="${PYTHON:-python3}"
JAX_PIN="$(sed -n 's/^jax==//p' requirements.txt)"
# Pure-Python packages of requirements.txt that a CUDA image is most likely to lack; installed from the assets
# only when they do not import.
WHEELS_FOR_IMPORTS="tensorboardX:tensorboardX"

step() { printf '\n== [%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

prepare() {
  step "prepare: $ASSETS for a GPU machine without network"
  mkdir -p "$ASSETS/wheels" "$ASSETS/cache/movie" || return 1
  step "prepare: the movie sentences (the default task's data) into $ASSETS/cache"
  JAX_ADALORA_CACHE="$REPO/$ASSETS/cache" JAX_PLATFORMS=cpu "$PY" -c \
    "from jax_adalora.tasks.movie import snippets_file; print(snippets_file())" || return 1
  step "prepare: MiniLM-L6 weights as float16, with its config and tokenizer, into $ASSETS/minilm-l6-f16"
  JAX_PLATFORMS=cpu "$PY" - "$ASSETS/minilm-l6-f16" <<'PYTHON' || return 1
import shutil
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from jax_adalora.models.pretrained import resolve_model_dir

source, target = resolve_model_dir("minilm-l6"), Path(sys.argv[1])
target.mkdir(parents=True, exist_ok=True)
weights = load_file(source / "model.safetensors")
halved = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in weights.items()}
save_file(halved, str(target / "model.safetensors"))
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
    shutil.copy(source / name, target / name)
print(f"{target}: {sum(f.stat().st_size for f in target.iterdir()) / 2**20:.1f} MiB")
PYTHON
  step "prepare: pure-Python wheels ($WHEELS_FOR_IMPORTS) at the versions requirements.txt pins"
  for pair in $WHEELS_FOR_IMPORTS; do
    package="${pair%%:*}"
    pin="$(grep -i "^${package}==" requirements.txt)"
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$ASSETS/wheels" "$pin" || return 1
  done
  du -sh "$ASSETS"
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
  exit 0
fi
if [[ "${1:-}" == "--prepare" ]]; then
  prepare
  exit $?
fi
if [[ $# -gt 0 ]]; then
  echo "usage: bash scripts/benchmarks/gpu_check.sh [--prepare | --help]" >&2
  exit 2
fi

OUT="${OUT:-$REPO/gpu_check_out}"
mkdir -p "$OUT" || exit 1
exec > >(tee "$OUT/gpu_check.log") 2>&1
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
started=$SECONDS

# run_step NAME LIMIT_S COMMAND...: runs the command under a time limit and records its exit status.
run_step() {
  local name="$1" limit="$2"
  shift 2
  step "$name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  local verdict="ok"
  [[ $rc -ne 0 ]] && verdict="FAILED (exit $rc)"
  [[ $rc -eq 124 || $rc -eq 137 ]] && verdict="TIMED OUT after ${limit}s"
  printf '%-28s %-24s %4ds\n' "$name" "$verdict" "$((SECONDS - t0))" | tee -a "$SUMMARY"
}

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "nvidia-smi not found"
"$PY" --version

step "JAX with CUDA at requirements.txt's jax==$JAX_PIN"
jax_version() { "$PY" -c "import jax; print(jax.__version__)" 2>/dev/null; }
installed="$(jax_version)"
if [[ "$installed" != "$JAX_PIN" ]]; then
  echo "installed jax: ${installed:-none}; installing jax[cuda13]==$JAX_PIN (needs a package index)"
  timeout 45 "$PY" -m pip install -q --retries 0 --timeout 10 "jax[cuda13]==$JAX_PIN" ||
    echo "WARNING: could not install jax[cuda13]==$JAX_PIN; going on with jax ${installed:-none} as installed"
fi
"$PY" - <<'PYTHON' || { echo "no usable JAX GPU backend: stopping" | tee -a "$SUMMARY"; exit 1; }
import jax

print("jax", jax.__version__, "| devices:", jax.devices())
assert jax.default_backend() == "gpu", f"JAX runs on {jax.default_backend()}, not on a GPU"
PYTHON

step "Python packages requirements.txt needs"
for pair in $WHEELS_FOR_IMPORTS; do
  module="${pair##*:}"
  if ! "$PY" -c "import $module" 2>/dev/null; then
    echo "installing $module from $ASSETS/wheels"
    "$PY" -m pip install -q --no-index --no-deps "$ASSETS"/wheels/*.whl || echo "WARNING: $module is missing"
  fi
done
"$PY" - <<'PYTHON'
import importlib.metadata as metadata

for name in ("jax", "jaxlib", "jax-cuda13-plugin", "flax", "optax", "chex", "orbax-checkpoint", "transformers",
             "torch", "peft", "tensorboardX"):
    try:
        print(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(f"{name}: not installed")
PYTHON

# Full float32 matmuls in the tests: their tolerances were set against CPU, and TF32 would exceed them. The bench
# and the training run keep JAX's default precision, as users get it. XLA's optimisations on (the test suite
# turns most of them off to compile faster): on the GPU the fused kernels are what needs checking.
run_step "tests (GPU subset)" 130 env JAX_PLATFORMS=cuda JAX_DEFAULT_MATMUL_PRECISION=highest JAX_DISABLE_MOST_OPTIMIZATIONS=0 \
  "$PY" -m pytest -q -o addopts=-ra -p no:cacheprovider --durations=10 \
  tests/test_regularization.py tests/test_dropout.py tests/test_stats.py tests/test_step.py \
  tests/test_models_deberta.py tests/test_models_heads.py \
  "tests/test_models_bert.py::test_remat_keeps_outputs_gradients_and_dropout_masks" \
  -o junit_family=legacy --junitxml="$OUT/tests.xml"

run_step "bench MiniLM bf16 32x128" 80 "$PY" -m scripts.benchmarks.bench --model minilm --dtype bfloat16 \
  --batch-size 32 --seq-len 128 --repeats 3 --out "$OUT/bench_minilm_bf16.json"

run_step "bench DeBERTa-v3-base bf16" 130 "$PY" -m scripts.benchmarks.bench --model deberta-v3-base --dtype bfloat16 \
  --batch-size 32 --seq-len 128 --repeats 3 --out "$OUT/bench_deberta_v3_base_bf16.json"

TRAIN_DIR="$(mktemp -d)/train"
run_step "train MiniLM bf16 (1 epoch)" 80 env JAX_ADALORA_CACHE="$REPO/$ASSETS/cache" \
  "$PY" -m jax_adalora.train --model "$ASSETS/minilm-l6-f16" --dtype bfloat16 --score gsnr --no-export \
  --output-dir "$TRAIN_DIR"
cp "$TRAIN_DIR/metrics.jsonl" "$OUT/train_metrics.jsonl" 2>/dev/null || echo "no training metrics written"

step "summary (total $((SECONDS - started))s)"
cat "$SUMMARY"
