"""Training-step throughput of TransformerLM against nanoGPT, measured in the same run.

The baseline is bench/nanogpt_style.py: karpathy/nanoGPT's model.py as its train.py configures it (no
biases, vocabulary padded to a multiple of 64 with the head tied to the embedding, GELU MLP, fused qkv,
SDPA, nanoGPT's init and its F.cross_entropy loss call inside forward), so "ours / baseline" is the
figure users would see against nanoGPT itself.

One step = forward, loss, backward, optimizer step, on a fixed random batch (data loading excluded),
done the way each one's trainer does it. Both models get the same width, depth, heads, context, batch,
dtype, compile setting, torch threads and optimizer (torch.optim.AdamW with the kernel the trainer
picks, fused on CUDA and CPU; or --optim ours for dist_llm.training.adamw.AdamW). The loss is each
model's own, computed inside its forward as each trainer calls it: ours model(x, targets=y), the head and
cross-entropy fused chunk by chunk (dist_llm/model/head_loss.py), as dist_llm.train uses; nanoGPT's
F.cross_entropy on its full logits. --with-torch-loss adds, for information, our model's logits with
F.cross_entropy, and --with-logits-loss with dist_llm.model.losses.fused_cross_entropy (the previous training
loss). --compile compiles each model's forward with its loss, as both trainers do. Rounds alternate between
the models so a drifting machine slows both alike; the best round of each gives the headline ratio (load
from other processes only ever slows a round down, so the fastest round is the least disturbed estimate,
as timeit does) and the median round is printed too.

The architectures differ where they are defined to: ours has an untied lm_head (vocab x d_model more
parameters for AdamW to update) and SwiGLU/RMSNorm/RoPE; the baseline ties its head to the embedding and
uses GELU/LayerNorm/learned positions. --with-tied adds, for information only, our model with its head
tied to the embedding, which isolates the cost of the untied head; the target is the plain ratio.

    python bench/bench_model.py                                     # CPU default: tiny + tinystories, fp32
    python bench/bench_model.py --config gpt2-small --dtype bf16 --compile   # on a GPU
    python bench/bench_model.py --fused-ops off                     # our from-scratch reference layers
    python bench/bench_model.py --config tiny --with-doc-masking    # + model.doc_masking's step cost
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from anywhere: sibling bench modules
from nanogpt_style import NanoGPTStyleLM  # noqa: E402
from peak_flops import datasheet_peak, measured_matmul_peak, sync  # noqa: E402

from dist_llm.data.documents import document_ids  # noqa: E402
from dist_llm.model import ModelConfig, TransformerLM  # noqa: E402
from dist_llm.model.losses import fused_cross_entropy  # noqa: E402  (--with-logits-loss)
from dist_llm.training.adamw import AdamW  # noqa: E402
from dist_llm.training.optimizer import adamw_kernel  # noqa: E402
from dist_llm.utils.devices import resolve_device  # noqa: E402

CONFIGS = {
    "tiny": ModelConfig(
        vocab_size=1024, context_length=128, d_model=128, num_layers=2, num_heads=4, d_ff=344
    ),
    # CS336 assignment 1 TinyStories model
    "tinystories": ModelConfig(
        vocab_size=10000, context_length=256, d_model=512, num_layers=4, num_heads=16, d_ff=1344
    ),
    # GPT-2 small shape; d_ff = 8/3 * 768 rounded so SwiGLU has the parameters of a 4x GELU MLP
    "gpt2-small": ModelConfig(
        vocab_size=50257, context_length=1024, d_model=768, num_layers=12, num_heads=12, d_ff=2048
    ),
}
# Default micro-batch (sequences) per device: small on CPU so the whole CPU run takes a couple of minutes.
DEFAULT_BATCH = {
    "cpu": {"tiny": 8, "tinystories": 4, "gpt2-small": 1},
    "cuda": {"tiny": 64, "tinystories": 64, "gpt2-small": 16},
}
PEAK_SAMPLES: list[float] = []  # matmul peaks sampled between timed rounds
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# The round timer: wall time, or with --clock process this process's CPU time (on a CPU shared with
# other jobs, the time the step itself computed; with --threads 1 it is the step's compute time).
CLOCK = time.perf_counter


def bench_device(requested: str) -> torch.device:
    """--device: "auto" is CUDA if present, else CPU (DEFAULT_BATCH is sized for these two); an explicit
    device must exist (dist_llm.utils.devices.resolve_device raises ValueError otherwise)."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return resolve_device(requested)


class Runner:
    """One model with its optimizer and a (possibly compiled) forward+loss function."""

    def __init__(self, name, model, forward_loss, args, device, dtype) -> None:
        """forward_loss(model, x, y) -> scalar loss: how this model's trainer computes it."""
        self.name, self.model, self.device, self.dtype = name, model, device, dtype
        params = list(model.parameters())
        if args.optim == "ours":
            self.opt = AdamW(params, lr=1e-4, weight_decay=0.1)
        else:
            # With the kernel the trainer picks (fused on CUDA and CPU), for both models alike.
            self.opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1, **adamw_kernel(device))
        step_loss = lambda x, y: forward_loss(model, x, y)  # noqa: E731
        mode = getattr(args, "compile_mode", None)  # e.g. reduce-overhead: CUDA graphs
        self.forward_loss = torch.compile(step_loss, mode=mode) if args.compile else step_loss
        self.round_times: list[float] = []

    def step(self, x: torch.Tensor, y: torch.Tensor, phase_done=None) -> float:  # noqa: ANN001
        """One training step; phase_done(name), if given, is called as each of its three phases ends
        (profile_step.py times them)."""
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            loss = self.forward_loss(x, y)
        if phase_done:
            phase_done("forward + loss")
        loss.backward()
        if phase_done:
            phase_done("backward")
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if phase_done:
            phase_done("optimizer")
        return loss

    def timed_round(self, x, y, steps: int) -> None:
        sync(self.device)
        start = CLOCK()
        for _ in range(steps):
            loss = self.step(x, y)
        sync(self.device)
        self.round_times.append((CLOCK() - start) / steps)
        if not torch.isfinite(loss):
            raise RuntimeError(f"{self.name}: loss became {loss.item()} during the benchmark")


def bench_config(name: str, args, device: torch.device, dtype: torch.dtype, sheet) -> list[dict]:
    cfg = dataclasses.replace(CONFIGS[name], fused_ops=args.fused_ops == "on")
    batch = args.batch_size or DEFAULT_BATCH[device.type][name]
    torch.manual_seed(0)
    ours = TransformerLM.from_config(cfg, device=device)
    base = NanoGPTStyleLM(cfg.vocab_size, cfg.context_length, cfg.d_model, cfg.num_layers, cfg.num_heads)
    runners = [
        Runner("dist_llm TransformerLM", ours, training_loss, args, device, dtype),
        Runner(BASELINE, base.to(device), training_loss, args, device, dtype),
    ]
    if args.with_torch_loss:  # information only: our model with the baseline's loss
        plain = TransformerLM.from_config(cfg, device=device)
        runners.append(Runner("dist_llm, F.cross_entropy (info)", plain, torch_loss, args, device, dtype))
    if args.with_logits_loss:  # information only: the previous training loss, on the full logits
        plain = TransformerLM.from_config(cfg, device=device)
        runners.append(Runner("dist_llm, fused_cross_entropy (info)", plain, logits_loss, args, device,
                              dtype))  # fmt: skip
    if args.with_tied:  # information only: what the untied head costs
        tied = TransformerLM.from_config(cfg, device=device)
        tied.lm_head.weight = tied.token_embeddings.weight
        runners.append(Runner("dist_llm, head tied (info)", tied, training_loss, args, device, dtype))
    if args.with_other_path:  # information only: the other fused_ops setting, timed in the same rounds
        other = dataclasses.replace(cfg, fused_ops=not cfg.fused_ops)
        label = f"dist_llm, fused_ops={other.fused_ops} (info)"
        runners.append(Runner(label, TransformerLM.from_config(other, device=device), training_loss, args,
                              device, dtype))  # fmt: skip
    if args.with_unpadded_head:  # information only: the head without its CUDA row padding
        unpadded = TransformerLM.from_config(cfg, device=device)
        unpadded.logits_row_multiple = 1
        runners.append(Runner("dist_llm, head not padded (info)", unpadded, training_loss, args, device,
                              dtype))  # fmt: skip
    if args.with_doc_masking:  # information only: attention within documents (model.doc_masking)
        runners.append(doc_masking_runner(cfg, args, device, dtype))
    data = torch.randint(0, cfg.vocab_size, (batch, cfg.context_length + 1), device=device)
    if args.with_doc_masking:
        data = with_separators(data, args.doc_length or cfg.context_length // 4)
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()  # as both trainers' loaders give them
    for runner in runners:  # warmup (includes compilation)
        for _ in range(args.warmup):
            runner.step(x, y)
    steps = args.steps or _steps_per_round(runners[-1], x, y, device)
    for _ in range(args.rounds):
        for runner in runners:
            runner.timed_round(x, y, steps)
        # a short peak measurement between rounds: the best one is kept (see main)
        PEAK_SAMPLES.append(measured_matmul_peak(device, dtype, min_seconds=0.2))
    rows = []
    for runner in runners:
        sec = min(runner.round_times)
        tok_s = batch * cfg.context_length / sec
        achieved = runner.model.flops_per_token() * tok_s
        rows.append(dict(
            config=name, model=runner.name, batch=batch, ctx=cfg.context_length, steps=steps,
            ms_step=sec * 1e3,
            tok_s=tok_s, tok_s_median=batch * cfg.context_length / statistics.median(runner.round_times),
            tflops=achieved / 1e12, mfu_sheet=achieved / sheet[1] if sheet else None,
            params_m=sum(p.numel() for p in runner.model.parameters()) / 1e6,  # tied weights counted once
        ))  # fmt: skip
    del runners
    if device.type == "cuda":
        rows[0]["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.empty_cache()
    return rows


DOC_SEPARATOR = 0  # the token id that ends a document in the --with-doc-masking batch


def doc_masking_runner(cfg: ModelConfig, args, device: torch.device, dtype: torch.dtype) -> Runner:
    """Our model with model.doc_masking, as the trainer runs it: document ids computed from each batch's
    tokens, then the block-diagonal causal mask (FlexAttention on CUDA, a boolean mask through SDPA on a
    CPU). Same initial weights as the unmasked model, so the two differ only in the mask."""
    torch.manual_seed(0)
    model = TransformerLM.from_config(dataclasses.replace(cfg, doc_masking=True), device=device)
    runner = Runner("dist_llm, doc masking (info)", model, training_loss, args, device, dtype)
    forward_loss = lambda x, y: model(x, targets=y, doc_ids=document_ids(x, DOC_SEPARATOR))  # noqa: E731
    runner.forward_loss = torch.compile(forward_loss) if args.compile else forward_loss
    return runner


def with_separators(data: torch.Tensor, mean_length: int) -> torch.Tensor:
    """data with DOC_SEPARATOR at random positions, one per mean_length tokens on average (a fixed
    seed): documents of geometric lengths packed across the windows, as in prepared token files."""
    gen = torch.Generator().manual_seed(0)
    ends = torch.rand(data.shape, generator=gen) < 1 / max(1, mean_length)
    return data.masked_fill(ends.to(data.device), DOC_SEPARATOR)


def print_doc_masking_cost(runs: list[list[dict]]) -> None:
    """The step-time cost of doc masking: the masked model against ours unmasked, in the same rounds."""
    for run in runs:
        plain, masked = run[0], next(r for r in run if r["model"].startswith("dist_llm, doc masking"))
        print(f"{plain['config']}: tokens/s with doc masking / without = "
              f"{masked['tok_s'] / plain['tok_s']:.2f}x best round, "
              f"{masked['tok_s_median'] / plain['tok_s_median']:.2f}x median round")


def _steps_per_round(runner: Runner, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> int:
    """Enough steps that a round lasts ~0.3 s: a 30 ms round is mostly timer and scheduler noise.
    The step time is the fastest of 3, so one step slowed by another process does not shrink rounds."""
    times = []
    for _ in range(3):
        sync(device)
        start = time.perf_counter()
        runner.step(x, y)
        sync(device)
        times.append(time.perf_counter() - start)
    return max(1, round(0.3 / min(times)))


BASELINE = "nanoGPT (faithful baseline)"


def training_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # Each model's loss as its trainer computes it: inside forward (ours: dist_llm/train.py; nanoGPT:
    # its model.py's F.cross_entropy).
    return model(x, targets=y)


def logits_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return fused_cross_entropy(model(x), y)


def torch_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return cross_entropy_of_logits(model(x), y)


def cross_entropy_of_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # torch's log-softmax + nll on the full logits, as nanoGPT computes it.
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=None, help=f"comma list from {list(CONFIGS)}")
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="autocast dtype (fp32: none)")
    parser.add_argument("--compile", action="store_true", help="torch.compile forward+loss of both models")
    parser.add_argument("--compile-mode", default=None, choices=["default", "reduce-overhead", "max-autotune",
                        "max-autotune-no-cudagraphs"], help="torch.compile mode (with --compile)")
    parser.add_argument("--optim", choices=["torch", "ours"], default="torch")
    parser.add_argument("--fused-ops", choices=["on", "off"], default="on",
                        help="ModelConfig.fused_ops of our model: torch's fused RMSNorm/SiLU/RoPE (on, the "
                             "training default) or the from-scratch reference layers (off)")
    parser.add_argument("--with-tied", action="store_true",
                        help="also time our model with lm_head tied to the embedding (information only)")
    parser.add_argument("--with-torch-loss", action="store_true",
                        help="also time our model with F.cross_entropy, the baseline's loss (info only)")
    parser.add_argument("--with-logits-loss", action="store_true",
                        help="also time our model with fused_cross_entropy on its logits, the previous "
                             "training loss (information only)")
    parser.add_argument("--with-other-path", action="store_true",
                        help="also time our model with the other --fused-ops setting (information only)")
    parser.add_argument("--with-unpadded-head", action="store_true",
                        help="also time our model without the head's row padding on CUDA (information "
                             "only; see TransformerLM.logits_row_multiple)")
    parser.add_argument("--with-doc-masking", action="store_true",
                        help="also time our model with model.doc_masking (attention within documents) on a "
                             "batch of packed documents, and print its cost against ours unmasked")
    parser.add_argument("--doc-length", type=int, default=None,
                        help="mean document length in tokens for --with-doc-masking (default: context/4)")
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per step")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=None, help="alternating timed rounds per model")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--clock", choices=["wall", "process"], default="wall",
                        help="round timer: wall time, or CPU time of this process (a loaded CPU machine; "
                             "use with --threads 1)")
    args = parser.parse_args()
    if args.clock == "process":
        global CLOCK
        CLOCK = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        device = bench_device(args.device)
    except ValueError as e:
        parser.error(f"--device: {e}")
    on_gpu = device.type == "cuda"
    if on_gpu and args.clock == "process":
        parser.error("--clock process: CPU time does not count GPU work; use it on a CPU device")
    names = (args.config or ("gpt2-small" if on_gpu else "tiny,tinystories")).split(",")
    for name in names:
        if name not in CONFIGS:
            parser.error(f"unknown --config {name!r}; choose from {list(CONFIGS)}")
    args.steps = args.steps or (10 if on_gpu else None)  # None: sized per config, see _steps_per_round
    args.rounds = args.rounds or (3 if on_gpu else 7)
    args.warmup = args.warmup or (3 if on_gpu else 1)
    dtype = DTYPES[args.dtype]  # fp32 on a GPU stays fp32 (no TF32), as dist_llm.train runs it

    peak = measured_matmul_peak(device, dtype)
    sheet = datasheet_peak(device, dtype)
    where = torch.cuda.get_device_name(device) if on_gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {where} | clock {args.clock} | torch {torch.__version__} | dtype {args.dtype} | "
          f"compile {args.compile}{' (' + args.compile_mode + ')' if args.compile_mode else ''} | "
          f"optimizer {args.optim} AdamW | fused_ops {args.fused_ops} | {args.rounds} alternating rounds "
          f"per model")  # fmt: skip
    print(f"measured {args.dtype} matmul peak: {peak / 1e12:.3f} TFLOP/s"
          + (f" | datasheet peak ({sheet[0]}): {sheet[1] / 1e12:.0f} TFLOP/s" if sheet else ""))  # fmt: skip

    runs = [bench_config(name, args, device, dtype, sheet) for name in names]
    # On a shared machine one peak measurement can land in a busy moment and inflate every MFU, so
    # the peak is also sampled between rounds and the best sample is used.
    peak = max([peak, *PEAK_SAMPLES])
    print(f"matmul peak used for MFU (best of {1 + len(PEAK_SAMPLES)} samples): {peak / 1e12:.3f} TFLOP/s")
    rows = [dict(row, mfu=row["tflops"] * 1e12 / peak) for run in runs for row in run]
    print()
    print("| config | model | params (M) | batch x ctx | steps/round | ms/step | tokens/s (best) |"
          " tokens/s (median) | TFLOP/s | MFU (measured peak) | MFU (datasheet) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        sheet_mfu = f"{r['mfu_sheet']:.1%}" if r["mfu_sheet"] is not None else "n/a"
        print(f"| {r['config']} | {r['model']} | {r['params_m']:.1f} | {r['batch']}x{r['ctx']} | "
              f"{r['steps']} | {r['ms_step']:.1f} | {r['tok_s']:,.0f} | {r['tok_s_median']:,.0f} | "
              f"{r['tflops']:.3f} | {r['mfu']:.1%} | {sheet_mfu} |")
    print()
    for run in runs:
        ours, base = run[0], run[1]
        extra = ours["params_m"] - base["params_m"]
        ratio = ours["tok_s"] / base["tok_s"]
        print(f"{ours['config']}: tokens/s ours / {BASELINE} = {ratio:.2f}x "
              f"best round, {ours['tok_s_median'] / base['tok_s_median']:.2f}x median round "
              f"(ours has {extra:+.1f}M parameters, mostly the untied lm_head; baseline: karpathy/nanoGPT "
              f"model.py with train.py defaults, bench/nanogpt_style.py)")
        for info in run[2:]:
            best, median = info["tok_s"] / base["tok_s"], info["tok_s_median"] / base["tok_s_median"]
            print(f"{ours['config']}: ({info['model']}) / baseline = {best:.2f}x best round, "
                  f"{median:.2f}x median round")
    if args.with_doc_masking:
        print_doc_masking_cost(runs)
    if on_gpu:
        print(f"peak GPU memory: {max(r.get('peak_mem_gb', 0) for r in rows):.1f} GiB")


if __name__ == "__main__":
    main()
