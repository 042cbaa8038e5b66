# The one place to say how a SLURM job gets its Python environment and cluster settings.
# slurm/pretrain.sh sources this file on the first node before it starts anything; srun passes the
# resulting environment on to the other nodes. Edit it for your cluster.

# --- Python environment (pick one) ---------------------------------------------------------------
# By default the job keeps the environment of the shell that ran `sbatch` (SLURM exports it), plus
# the project's own virtual environment if there is one:
if [ -f "$PROJECT_DIR/.venv/bin/activate" ]; then
    # shellcheck disable=SC1091
    source "$PROJECT_DIR/.venv/bin/activate"
fi
# module load cuda/12.4 python/3.11
# source "$HOME/miniforge3/etc/profile.d/conda.sh" && conda activate dist_llm

# --- NCCL and network: commonly needed, so listed here, but not forced ---------------------------
# The interface the nodes talk over, when hosts have several (the rendezvous uses the host name of
# the first node; NCCL picks its own interface and may pick a wrong one):
# export NCCL_SOCKET_IFNAME=ib0            # or eth0, ens..., ^docker,lo to exclude
# export GLOO_SOCKET_IFNAME=ib0
# InfiniBand adapters to use, or none (TCP only) on clusters without a working IB setup:
# export NCCL_IB_HCA=mlx5_0,mlx5_1
# export NCCL_IB_DISABLE=1
# Fail a hung collective with an error instead of waiting forever (on by default in recent torch):
# export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
# Diagnose a hang or a slow ring at start-up:
# export NCCL_DEBUG=INFO
# Data-loading and tokenizer threads per process (torchrun sets OMP_NUM_THREADS=1 otherwise):
# export OMP_NUM_THREADS=8
