"""The per-rank memory plan: what a rank will hold for the chosen strategy, printed before any allocation.

Model state is exact from tensor sizes: fp32 parameters (the master weights), fp32 gradients and
AdamW's two fp32 moments, divided by the sharding degree under fsdp/hsdp. ddp also keeps its gradient
buckets (a second copy of the gradients). fsdp adds the parameters it has gathered at a time: the root
(embeddings, head) and up to two blocks (the one running and the one prefetched), in the compute dtype.

Activations are an estimate: per block and token, autograd keeps about 12 * d_model + 4 * d_ff values
for backward (norm inputs and outputs, q, k, v before and after RoPE, the attention output and the
projections' inputs; the SwiGLU d_ff-wide products), and about 3 * d_model float32 values outside the
blocks (final norm, head input): within 1% of bench/bench_memory.py's exact count at the GPT-2-small
shape in fp32. A checkpointed block keeps only its input (d_model float32 values per token); in backward
one block at a time is recomputed. At the loss (computed with the head, a chunk of rows at a time:
dist_llm/model/head_loss.py), one chunk's logits and their float32 copy, the head weight's float32 gradient
and the hidden states' gradient exist for a moment on top of that.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dist_llm.config import ConfigError
from dist_llm.model.head_loss import CHUNK_ELEMENTS, MAX_CHUNKS

GIB = 1024**3


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per rank."""

    parameters: int
    gradients: int
    optimizer: int
    gathered: int
    activations: int  # kept for backward at the end of forward
    transient: int  # on top, for a moment: the logits and their gradient; a recomputed block
    on_cpu: bool = False  # cpu_offload: parameters, gradients and optimizer state live in host memory

    @property
    def model_state(self) -> int:
        return self.parameters + self.gradients + self.optimizer

    @property
    def device_total(self) -> int:
        return (0 if self.on_cpu else self.model_state) + self.gathered + self.activations + self.transient

    def summary(self) -> str:
        where = " (on the CPU)" if self.on_cpu else ""
        return (f"memory per rank (estimate): parameters {self.parameters / GIB:.2f} GiB, gradients "
                f"{self.gradients / GIB:.2f} GiB, optimizer {self.optimizer / GIB:.2f} GiB{where}, gathered "
                f"parameters {self.gathered / GIB:.2f} GiB, activations {self.activations / GIB:.2f} GiB "
                f"(+{self.transient / GIB:.2f} GiB at the loss); "
                f"about {self.device_total / GIB:.2f} GiB on the device")


def _block_params(model: nn.Module) -> tuple[int, int]:
    """(parameters of the largest block, parameters outside the blocks)."""
    blocks = [sum(p.numel() for p in block.parameters()) for block in model.layers]
    return max(blocks, default=0), sum(p.numel() for p in model.parameters()) - sum(blocks)


def plan_memory(model: nn.Module, *, strategy: str, shard_degree: int, micro_batch: int, context: int,
                compute_bytes: int, activation_checkpointing: str = "none", ac_every: int = 2,
                cpu_offload: bool = False) -> MemoryPlan:
    """model: the model (it may live on the meta device); strategy: single | ddp | fsdp | hsdp;
    shard_degree: ranks that share one copy of the model state (1 unless fsdp/hsdp);
    compute_bytes: bytes per activation value (4 for fp32, 2 for bf16/fp16)."""
    cfg = model.config
    total = sum(p.numel() for p in model.parameters())
    sharded = strategy in ("fsdp", "hsdp")
    per_rank = -(-total // shard_degree) if sharded else total
    parameters = 4 * per_rank
    gradients = 4 * per_rank * (2 if strategy == "ddp" else 1)  # ddp: + its all-reduce buckets
    optimizer = 8 * per_rank
    gathered = 0
    if sharded:
        block, outside = _block_params(model)
        gathered = (outside + 2 * block) * compute_bytes + 4 * block  # + one block's unsharded gradient
    tokens = micro_batch * context
    d, f, layers = cfg.d_model, cfg.d_ff, cfg.num_layers
    per_block = tokens * (12 * d + 4 * f) * compute_bytes
    checkpointed = {"none": 0, "full": layers, "selective": -(-layers // ac_every)}[activation_checkpointing]
    activations = (layers - checkpointed) * per_block + checkpointed * tokens * d * 4 + tokens * 3 * d * 4
    chunk_rows = min(tokens, max(CHUNK_ELEMENTS // cfg.vocab_size, -(-tokens // MAX_CHUNKS)))
    transient = chunk_rows * cfg.vocab_size * (compute_bytes + 4) + (cfg.vocab_size + tokens) * d * 4
    if checkpointed:
        transient += per_block  # the block recomputed in backward
    return MemoryPlan(parameters, gradients, optimizer, gathered, activations, transient,
                      on_cpu=cpu_offload and sharded)


def check_fits(plan: MemoryPlan, device: torch.device, strategy: str, activation_checkpointing: str) -> None:
    """On CUDA, refuse a plan that clearly exceeds the device's free memory, naming the knobs that help."""
    if device.type != "cuda":
        return
    free, _ = torch.cuda.mem_get_info(device)
    if plan.device_total <= 1.1 * free:
        return
    knobs = []
    if strategy in ("single", "ddp"):
        knobs.append("--dist.strategy=fsdp (shards parameters, gradients and optimizer state over the ranks)")
    if activation_checkpointing != "full":
        knobs.append("--train.activation_checkpointing=full (keeps one tensor per block)")
    knobs.append("a smaller --train.micro_batch_size (more accumulation steps, same global batch)")
    raise ConfigError(f"{plan.summary()}, but {device} has {free / GIB:.2f} GiB free: this would run out of "
                      f"memory. Try " + "; or ".join(knobs))
