#!/usr/bin/env bash
# One-command GPU check for the model component (run from anywhere):
#
#     bash bench/gpu_check.sh
#
# On a machine with a CUDA GPU, in order of what matters most if time runs out:
#   1. the model / optimizer / loss / head-loss tests with DIST_LLM_TEST_DEVICE=cuda (reference vs fused
#      attention, bf16 and fp16 autocast, torch.compile and generation all run on the GPU);
#   2. the training-step benchmark on the GPT-2-small config in bf16, torch.compile'd: ours against the
#      faithful nanoGPT baseline (bench/nanogpt_style.py), the ratio and MFU targets;
#   3. the head and loss alone (bench/bench_loss.py, GPT-2-small shape, bf16): the chunked head+loss's
#      peak memory against the fused loss and F.cross_entropy on full logits;
#   4. the single-process trainer tests on the GPU (end to end, exact resume, gradient accumulation);
#   5. `python -m dist_llm.train` on the built-in corpus in bf16 compiled, and in fp16 (gradient scaler);
#   6. FSDP on one GPU (bench/bench_fsdp.py): GPT-2-small, fsdp against the unwrapped model, compiled bf16
#      (target: at most 5% overhead); activation memory and a real step's peak against the memory plan,
#      with and without activation checkpointing (bench/bench_memory.py --cuda); the 1.2B config under
#      fsdp, tokens/s and MFU (target 55%), with full activation checkpointing beside it;
# then a summary: each step's status and time, the benchmark tables, the ratio against the baseline and
# the chunked loss's memory. GPU_CHECK_EXTRA=1 adds information runs (eager, batch 32, CUDA graphs,
# document masking), which need a larger budget.
# On a CPU-only machine it says so, runs a quick CPU sanity check and exits with its status (0 if fine).
# Every step has its own timeout; a failing step does not stop the later ones; the exit code is
# non-zero if any step failed. Full logs are kept in $LOG_DIR (default: a fresh dir under /tmp).
#
# The whole check keeps to a time budget, GPU_CHECK_BUDGET_S seconds (default 360, so it ends within
# 6 minutes): each step's timeout is cut to what is left, and a step that would start with less than
# MIN_STEP_S (20) seconds left is skipped. Skipped or cut-short steps make the check fail as
# INCOMPLETE, and the summary still prints, so a run on a lent GPU with a hard limit always reports.
# The GPU steps' own timeouts add up to at most the default budget (tests/test_gpu_check.py checks the
# sum, and that the FSDP steps have their RESERVED_S), so they all finish in the budget. On an
# H200 a compiled GPT-2-small model takes ~25-30 s to compile: that is why step 2 times two models
# only, with 2 warm-up steps and 2 rounds of 10.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
LOG_DIR="${LOG_DIR:-$(mktemp -d /tmp/dist_llm_gpu_check.XXXXXX)}"
mkdir -p "$LOG_DIR"
BUDGET_S="${GPU_CHECK_BUDGET_S:-360}"
MIN_STEP_S=20
RESERVED_S=135  # of the default budget, for the FSDP steps (step 6)
CHECK_START=$(date +%s)
DEADLINE=$((CHECK_START + BUDGET_S))
STEPS=()
FAILED=0
INCOMPLETE=0

run_step() {  # run_step NAME TIMEOUT_SECONDS COMMAND...
    local name="$1" limit="$2"
    shift 2
    local log="$LOG_DIR/$name.log" start rc left
    left=$((DEADLINE - $(date +%s)))
    echo
    if [ "$left" -lt "$MIN_STEP_S" ]; then
        echo "=== $name: SKIPPED, ${left}s left of the ${BUDGET_S}s budget (GPU_CHECK_BUDGET_S)"
        STEPS+=("| $name | SKIPPED (time budget) | 0 s |")
        FAILED=1
        INCOMPLETE=1
        return
    fi
    [ "$left" -lt "$limit" ] && limit=$left
    echo "=== $name (timeout ${limit}s): $*"
    start=$(date +%s)
    set +e
    timeout --kill-after=15 "$limit" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    local status="ok"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        status="TIMEOUT"
        [ $(($(date +%s) + 1)) -lt "$DEADLINE" ] || INCOMPLETE=1  # cut short by the budget
    elif [ "$rc" -ne 0 ]; then
        status="FAILED (exit $rc)"
    fi
    [ "$status" = "ok" ] || FAILED=1
    STEPS+=("| $name | $status | $(($(date +%s) - start)) s |")
}

echo "dist_llm model GPU check | $(date -u +%Y-%m-%dT%H:%M:%SZ) | repo $(pwd) | logs $LOG_DIR"
echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout')"
"$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, \
'| CUDA build', torch.version.cuda)"
if ! "$PYTHON" -c "import dist_llm, pytest" 2>/dev/null; then
    echo "dist_llm or pytest is not importable: run 'bash install.sh test' first" >&2
    exit 2
fi

HAS_GPU=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))")
MODEL_TESTS=(tests/test_model_layers.py tests/test_model_transformer.py tests/test_model_generate.py
             tests/test_optim.py tests/test_losses.py tests/test_head_loss.py)

if [ "$HAS_GPU" != "1" ]; then
    echo
    echo "No CUDA GPU visible to torch (torch.cuda.is_available() is False): nothing to check on a GPU."
    echo "Running a quick CPU sanity check instead."
    run_step cpu-tests 300 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_model_layers.py \
        tests/test_model_generate.py tests/test_losses.py tests/test_optim.py
    run_step cpu-bench-tiny 180 "$PYTHON" bench/bench_model.py --config tiny --device cpu --steps 1 \
        --rounds 1 --warmup 1
else
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
    # Timeouts: 55 + 70 + 20 + 30 + 30 + 20 = 225 s = 360 - RESERVED_S (tests/test_gpu_check.py).
    run_step cuda-tests 55 env DIST_LLM_TEST_DEVICE=cuda "$PYTHON" -m pytest -q -p no:cacheprovider \
        "${MODEL_TESTS[@]}"
    run_step bench-bf16-compile 70 "$PYTHON" bench/bench_model.py --config gpt2-small --device cuda \
        --dtype bf16 --compile --steps 10 --rounds 2 --warmup 2
    run_step bench-loss 20 "$PYTHON" bench/bench_loss.py --device cuda --dtype bf16 --rounds 3 --calls 2
    run_step cuda-train-tests 30 env DIST_LLM_TEST_DEVICE=cuda "$PYTHON" -m pytest -q -p no:cacheprovider \
        tests/test_train_e2e.py::test_default_command_end_to_end \
        tests/test_train_resume.py::test_exact_resume_single_process \
        tests/test_train_equivalence.py::test_accumulation_of_four_micro_batches_equals_one_batch
    TRAIN_ARGS=(--dist.device=cuda --train.max_steps=20 --eval.interval=10 --log.progress_bar=false
                --run.cache_dir="$LOG_DIR/data_cache")
    run_step train-bf16-compile 30 "$PYTHON" -m dist_llm.train "${TRAIN_ARGS[@]}" \
        --run.dir="$LOG_DIR/run_bf16" --train.precision=bf16 --train.compile=true
    run_step train-fp16 20 "$PYTHON" -m dist_llm.train "${TRAIN_ARGS[@]}" --run.dir="$LOG_DIR/run_fp16" \
        --train.precision=fp16
    # FSDP (step 6): 35 + 25 + 75 = 135 s = RESERVED_S.
    run_step bench-fsdp-gpt2 35 "$PYTHON" bench/bench_fsdp.py --config gpt2-small --dtype bf16 --compile \
        --steps 5 --rounds 2 --warmup 2
    run_step bench-memory 25 "$PYTHON" bench/bench_memory.py --cuda --skip-state
    run_step bench-fsdp-1b 75 "$PYTHON" bench/bench_fsdp.py --config llama-1b --dtype bf16 --compile \
        --skip-unwrapped --with-ac --steps 3 --rounds 1 --warmup 1
    # Information, with a larger budget (GPU_CHECK_EXTRA=1 GPU_CHECK_BUDGET_S=600): the benchmark eager
    # with the losses on full logits, at batch 32 (the logits no longer dominate memory), and with CUDA
    # graphs (torch.compile mode reduce-overhead).
    if [ "${GPU_CHECK_EXTRA:-0}" = "1" ]; then
        run_step bench-bf16-eager 60 "$PYTHON" bench/bench_model.py --config gpt2-small --device cuda \
            --dtype bf16 --steps 10 --rounds 2 --warmup 2 --with-torch-loss --with-logits-loss
        run_step bench-bf16-compile-b32 90 "$PYTHON" bench/bench_model.py --config gpt2-small --device cuda \
            --dtype bf16 --compile --steps 10 --rounds 2 --warmup 2 --batch-size 32
        run_step bench-bf16-cudagraphs 120 "$PYTHON" bench/bench_model.py --config gpt2-small --device cuda \
            --dtype bf16 --compile --compile-mode reduce-overhead --steps 10 --rounds 2 --warmup 3
        run_step cuda-doc-masking-tests 90 env DIST_LLM_TEST_DEVICE=cuda "$PYTHON" -m pytest -q \
            -p no:cacheprovider tests/test_doc_masking.py
        run_step bench-doc-masking 150 "$PYTHON" bench/bench_model.py --config gpt2-small --device cuda \
            --dtype bf16 --compile --steps 10 --rounds 2 --warmup 3 --with-doc-masking
    fi
fi

# The lines of each benchmark log the summary shows: headers, tables, ratios.
SUMMARY_LINES='^(device:|measured|matmul peak|\||.* / (nanoGPT \(faithful baseline\)|baseline|without) ='
SUMMARY_LINES+='|chunked |peak GPU|[0-9]\. |[a-z0-9-]+: batch )'
echo
echo "=== summary ($(($(date +%s) - CHECK_START)) s of a ${BUDGET_S} s budget)"
echo "| step | status | time |"
echo "|---|---|---|"
printf '%s\n' "${STEPS[@]}"
for log in "$LOG_DIR"/bench-*.log "$LOG_DIR"/cpu-bench-*.log; do
    [ -f "$log" ] || continue
    echo
    echo "$(basename "$log" .log):"
    grep -E "$SUMMARY_LINES" "$log" \
        || echo "(no table: see $log)"
done
for log in "$LOG_DIR"/train-*.log; do
    [ -f "$log" ] || continue
    echo
    echo "$(basename "$log" .log):"
    grep -E '^(dist_llm.train:|step [0-9]+: val_loss)' "$log" || echo "(no evaluations: see $log)"
done
echo
if [ "$INCOMPLETE" -ne 0 ]; then
    echo "GPU CHECK: INCOMPLETE, the ${BUDGET_S} s budget ran out (GPU_CHECK_BUDGET_S; logs in $LOG_DIR)"
    exit 1
fi
if [ "$FAILED" -ne 0 ]; then
    echo "GPU CHECK: SOME STEPS FAILED (logs in $LOG_DIR)"
    exit 1
fi
echo "GPU CHECK: ALL STEPS OK"
