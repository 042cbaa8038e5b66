#!/usr/bin/env bash
# Prepare a large corpus on many machines with SLURM, from the project's root directory:
#
#   PARTS=16 bash slurm/prepare.sh --input 'data/fineweb/*.parquet' --tokenizer runs/tok --out data/fineweb
#
# Run it with bash on the login node (not with sbatch): it submits
#   1. a job array of PARTS tasks; task I runs
#        python -m dist_llm.data.prepare ARGS --out OUT/part-0000I-of-000N --part I/N
#      which prepares a disjoint run of the input files (every file goes to exactly one part; see
#      dist_llm/data/parts.py) into its own token files;
#   2. a merge job that starts once every task has succeeded (--dependency=afterok) and writes
#      OUT/meta.json joining the parts: `python -m dist_llm.data.prepare merge OUT/part-*`.
# The result is the same token stream and train/val split as one machine would prepare; train with
# data dir OUT. All arguments besides --out are passed to every task unchanged (quote globs, so that
# each task expands them itself). Each task uses --workers = its --cpus-per-task unless you give one.
#
# Submitting again with the same arguments redoes only what is missing: a finished part is a cache hit
# (its part.json matches the inputs, tokenizer and options), so after a failed task just run it again.
# sbatch options for both jobs: SBATCH_ARGS="--partition=cpu --time=4:00:00" (they override the
# #SBATCH defaults below). OUT must be on storage all nodes share; the inputs too.
#
#SBATCH --job-name=dist_llm-prepare
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=32
#SBATCH --time=12:00:00
#SBATCH --output=%x-%A_%a.out
set -euo pipefail

# --out is the one argument each task changes; the rest go through as given.
out=""
args=()
while [ $# -gt 0 ]; do
    case $1 in
        --out) out=${2:-}; shift 2 || shift ;;
        --out=*) out=${1#--out=}; shift ;;
        *) args+=("$1"); shift ;;
    esac
done
parts=${PARTS:-}
if [ -z "$out" ] || ! [[ "$parts" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: PARTS=N bash slurm/prepare.sh --input ... --tokenizer DIR --out DIR [prepare options]" \
        "(PARTS, the number of array tasks, must be a positive integer; got '${PARTS:-}')" >&2
    exit 2
fi
suffix=$(printf 'of-%05d' "$parts")

if [ -z "${SLURM_JOB_ID:-}" ]; then
    # On the login node: submit the array, then the merge that waits for it.
    here=$(cd "$(dirname "$0")/.." && pwd)
    # shellcheck disable=SC2086  # SBATCH_ARGS is a list of options
    array_id=$(sbatch --parsable --array="0-$((parts - 1))" ${SBATCH_ARGS:-} --chdir="$here" \
        "$here/slurm/prepare.sh" --out "$out" "${args[@]}")
    array_id=${array_id%%;*}
    # shellcheck disable=SC2086
    merge_id=$(DIST_LLM_PREPARE_STEP=merge sbatch --parsable --dependency="afterok:$array_id" \
        --job-name=dist_llm-merge --cpus-per-task=1 ${SBATCH_ARGS:-} --chdir="$here" \
        "$here/slurm/prepare.sh" --out "$out" "${args[@]}")
    echo "submitted: prepare array job ${array_id} ($parts tasks), merge job ${merge_id%%;*} into $out"
    exit 0
fi

# Inside a job this script runs from a copy in SLURM's spool directory: the project is where sbatch ran.
PROJECT_DIR=${DIST_LLM_DIR:-${SLURM_SUBMIT_DIR:?this script runs under sbatch}}
export PROJECT_DIR
cd "$PROJECT_DIR"
# Activation scripts (conda's in particular) often read unset variables: no `set -u` while they run.
set +u
# shellcheck source=slurm/env.sh
source "$PROJECT_DIR/slurm/env.sh"
set -u

if [ "${DIST_LLM_PREPARE_STEP:-}" = merge ]; then
    shopt -s nullglob
    dirs=("$out"/part-*-"$suffix")
    echo "dist_llm merge job $SLURM_JOB_ID: joining ${#dirs[@]} of $parts parts in $out"
    exec python -m dist_llm.data.prepare merge --out "$out" "${dirs[@]}"
fi

index=${SLURM_ARRAY_TASK_ID:?the prepare step runs as a task of the job array that this script submits}
case " ${args[*]} " in
    *" --workers "* | *" --workers="*) ;;
    *) args+=(--workers "${SLURM_CPUS_PER_TASK:-1}") ;;
esac
part_dir=$(printf '%s/part-%05d-%s' "$out" "$index" "$suffix")
echo "dist_llm prepare task $index of $parts (job ${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}) into $part_dir"
exec python -m dist_llm.data.prepare "${args[@]}" --out "$part_dir" --part "$index/$parts" --no-progress
