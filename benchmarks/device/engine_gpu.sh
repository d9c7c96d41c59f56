#!/usr/bin/env bash
# The kernel engine (runtime/kernels/decode.cu + engine.py) on the lent GPU machine in one call of <= 8 minutes,
# everything under $OUT (onnxruntime-gpu in /tmp/site as benchmarks/results/llm-gpu/README.md stages it; the SmolLM2
# GGUF parts in /tmp/stage when golden-row parity is wanted; carry .device/whl for the gguf wheel):
#   1. compile  every decode.cu module, one process a module (CuPy's disk cache serves every later step)  compile.txt
#   2. validate every kernel config against its NumPy twin: every GEMV entry of the three versions (v1, v2 in each
#               shape, v3 in each K split) at the real shapes, batch 1/3/8, and both attention kernels
#                                                                                                validate.{json,txt}
#               and the persistent step (one kernel, grid barriers) against the kernel-a-phase step
#                                                                                      validate-step.{json,txt}
#               FAIL FAST: a compile error, both attention kernels or every GEMV version failing end the call
#               here (exit 3, the failing kernels named); the engine runs the newest version that passes (said in
#               the log)
#   3. time     the engine's kernel plans of each valid version inside CUDA graphs, GB/s beside the copy bandwidth
#                                                                                               kernel_bench.{json,txt}
#               and a grid barrier against a kernel boundary (the persistent step's phase cost)  barrier.{json,txt}
#   4. engine   ours vs the onnxruntime fused graph on the same fused files: Qwen2.5-0.5B config and SmolLM2
#               (random weights), FP16 (float32 head) and int4, batch 1 and 8, prompt 128+128 and 2048+256;
#               ours with the previous GEMV version (v2 beside v3, else v1 beside v2) as a third system while time
#               is left (and what extra arguments add, e.g. --also-no-pdl, --also-attention-v1); the persistent
#               step (every layer in one kernel) as another system where it validated
#                                                                                           engine-bench.{json,md}
#   5. tests    tests/test_engine_gpu.py (twin vs kernel, engine vs twins, CUDA graph vs eager) in the time left
#                                                                                                     engine_tests.txt
# Usage: engine_gpu.sh [all|validate|kernels] [extra engine_bench run arguments]
# ENGINE_GPU_BUDGET_S (default 450): the whole call's seconds; each step's limit comes out of what is left.
# ENGINE_ALSO_V1=0: no previous-GEMV-version system in step 4 (extra arguments such as --also-no-pdl or
# --also-pipeline add others); ENGINE_ALSO_PERSISTENT=0: no persistent-step system (it is still validated).
set -uo pipefail
mkdir -p /tmp/p2o && ln -sfn "$PWD" /tmp/p2o/paddle2ort
export PYTHONPATH=/tmp/site:/tmp/p2o
: "${OUT:=/tmp/engine-gpu-out}"
mkdir -p "$OUT"
# one archive of everything beside $OUT, however the call ends: a device call returns at most 8 files (run27 lost its
# validation and kernel files that way); with OUT=$OUT/runN the archive sorts first among them
trap 'tar czf "$OUT.tgz" -C "$(dirname "$OUT")" "$(basename "$OUT")" 2>/dev/null' EXIT
what="${1:-all}"; shift || true
BUDGET=${ENGINE_GPU_BUDGET_S:-450}
PY=${PYTHON:-python3}
say() { echo "[engine_gpu.sh +${SECONDS}s] $*" | tee -a "$OUT/steps.txt"; }
left() { echo $((BUDGET - SECONDS)); }
fail() { say "FAILED: $*"; exit 3; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"
git log -1 --format='commit %H %s' 2>/dev/null | tee "$OUT/commit.txt"
git status --short -- runtime/kernels benchmarks 2>/dev/null | tee -a "$OUT/commit.txt"

say "1. compile decode.cu modules"
timeout 180 $PY -m paddle2ort.runtime.kernels.bench_engine compile --jobs 12 > "$OUT/compile.txt" 2>&1
rc=$?; tail -12 "$OUT/compile.txt"
[ $rc -eq 0 ] || fail "decode.cu did not compile (rc $rc): see compile.txt"

say "2. validate every kernel config against its twin (one process a GEMV version, in parallel)"
vt=$(( $(left) < 150 ? $(left) : 150 ))
for v in v3 v2 v1; do
  timeout $vt $PY -m paddle2ort.runtime.kernels.bench_engine validate --versions $v \
    --json "$OUT/validate-$v.json" > "$OUT/validate-$v.txt" 2>&1 &
done
timeout $vt $PY -m paddle2ort.runtime.kernels.bench_engine validate-step --json "$OUT/validate-step.json" \
  > "$OUT/validate-step.txt" 2>&1 &
wait
grep -hE "^FAILED|^validated" "$OUT/validate-step.txt" | head -20
step_ok=1
$PY -c "import json, sys; sys.exit(not json.load(open('$OUT/validate-step.json'))['passed'])" 2>/dev/null || {
  step_ok=0; say "WARNING: the persistent step failed validation (validate-step.txt): it is not timed"; }
grep -hE "^FAILED|^validated|Error" "$OUT"/validate-v3.txt "$OUT"/validate-v2.txt "$OUT"/validate-v1.txt | head -40
passed=$(for v in v3 v2 v1; do $PY -c "import json, sys; sys.exit('$v' not in json.load(open('$OUT/validate-$v.json'))\
['passed_versions'])" 2>/dev/null && printf '%s ' $v; done)
passed=${passed% }
attn=$($PY -c "import json; a = [set(json.load(open('$OUT/validate-' + v + '.json'))['passed_attention']) \
for v in ('v3', 'v2', 'v1')]; print(' '.join(v for v in ('v2', 'v1') if all(v in x for x in a)))" 2>/dev/null)
[ -n "$passed" ] && [ -n "$attn" ] || fail "kernel validation: no GEMV version passes everywhere ('$passed'), or \
no attention kernel does ('$attn'), or it did not finish: see validate-v*.txt; nothing is timed"
gemv=${passed%% *}
[[ " $passed " == *" v3 "* && " $passed " == *" v2 "* ]] && gemv=auto     # per product, the faster of the two
say "GEMV versions valid everywhere: $passed; the engine runs $gemv"
[[ " $passed " == *" v3 "* ]] || say "WARNING: the v3 GEMVs failed validation (validate-v3.json lists them): the engine runs $gemv"
say "attention versions valid everywhere: $attn"
[[ " $attn " == *" v2 "* ]] || say "WARNING: attention v2 (attn_online) failed validation: the engine runs v1"
[ "$what" = validate ] && exit 0

say "3. kernel timing (the engine's plans, CUDA graphs)"
timeout $(( $(left) < 120 ? $(left) : 120 )) $PY -m paddle2ort.runtime.kernels.bench_engine time \
  --versions $passed --json "$OUT/kernel_bench.json" > "$OUT/kernel_bench.txt" 2>&1
rc=$?; grep -v "INFO" "$OUT/kernel_bench.txt" | tail -70
$PY -c "import json; print(json.dumps(json.load(open('$OUT/kernel_bench.json'))['step_us'], indent=0))" 2>/dev/null
[ $rc -eq 0 ] || say "kernel timing rc $rc (see kernel_bench.txt)"
timeout 60 $PY -m paddle2ort.runtime.kernels.bench_engine barrier --json "$OUT/barrier.json" > "$OUT/barrier.txt" 2>&1
grep "MB a round" "$OUT/barrier.txt"
[ "$what" = kernels ] && exit 0

say "4. engine bench: ours vs the onnxruntime fused graph"
$PY -c "import gguf" 2>/dev/null || $PY -m pip install -q --no-index --no-deps --target /tmp/site .device/whl/gguf-*.whl \
  2>/dev/null || true
ARGS=(--gemv "$gemv" --configs qwen2.5-0.5b smollm2-135m)
[ "$step_ok" = 1 ] && [ "$gemv" != v2 ] && [ "${ENGINE_ALSO_PERSISTENT:-1}" != 0 ] && ARGS+=(--also-persistent-step)
[[ " $attn " == *" v2 "* ]] || ARGS+=(--attention v1)
prev=$(echo "$passed" | cut -d' ' -f2 -s)       # the next valid version: the engine's previous kernels
if [ "$gemv" = auto ]; then
  [ "${ENGINE_ALSO_V1:-1}" != 0 ] && ARGS+=(--also-v3 --also-v2)   # auto beside each version alone
elif [[ -n "$prev" && "${ENGINE_ALSO_V1:-1}" != 0 ]]; then
  ARGS+=(--also-$prev)
fi
if ls /tmp/stage/gguf.part* >/dev/null 2>&1; then
  [ -f /tmp/smollm2.gguf ] || cat /tmp/stage/gguf.part* > /tmp/smollm2.gguf
  ARGS+=(--gguf /tmp/smollm2.gguf)
fi
$PY -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" \
  2>/dev/null || { ARGS+=(--no-ort); say "WARNING: no onnxruntime CUDA provider: ours alone"; }
bench_s=$(( $(left) - 75 ))                      # keep ~75 s for the tests and the report
[ $bench_s -gt 30 ] || bench_s=30
timeout $((bench_s + 60)) $PY -m paddle2ort.benchmarks.gpu.engine_bench run --out "$OUT" --budget-s $bench_s \
  "${ARGS[@]}" "$@" > "$OUT/engine-bench.log" 2>&1
rc=$?; grep -E "tok/s|golden|FAILED|Error|skipped" "$OUT/engine-bench.log" | grep -v "^\s*$" | tail -40
[ $rc -eq 0 ] || say "engine bench rc $rc (see engine-bench.log; what finished is in engine-bench.json)"
$PY -m paddle2ort.benchmarks.gpu.engine_bench report "$OUT" > /dev/null 2>&1 || true
sed -n '/## Targets/,/^## SmolLM2/p' "$OUT/engine-bench.md" 2>/dev/null | head -14

say "5. GPU tests in the time left"
t=$(( $(left) - 5 )); [ $t -gt 20 ] || t=20
timeout $t $PY -m pytest -q -p no:cacheprovider tests/test_engine_gpu.py > "$OUT/engine_tests.txt" 2>&1
rc=$?; tail -6 "$OUT/engine_tests.txt"
say "done (tests rc $rc)"
