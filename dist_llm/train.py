"""Pretrain a language model: `python -m dist_llm.train [--config FILE] [--section.key=value ...]`.

The same command runs on one CPU or on many GPUs (`torchrun --nproc_per_node=8 -m dist_llm.train ...`,
or `srun` without torchrun). `train()` is the whole pipeline, top to bottom: data and tokenizer (cached),
model, optimizer, resume, the loop (gradient accumulation, mixed precision, clipping, LR schedule,
evaluation, logging, checkpoints, stop signals), then the final model, a sample and the loss plot.
The parts it composes live in dist_llm/training/ and the component packages.
"""

from __future__ import annotations

if __name__ == "__main__":
    # Before the imports below, which take seconds (torch): a stop signal from SLURM or torchrun that
    # arrives meanwhile is kept, and main() honours it, instead of the process dying mid-import.
    from dist_llm.training.signals import catch_stop_signals_early

    catch_stop_signals_early()

import contextlib
import dataclasses
import functools
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from dist_llm.checkpoint import CheckpointError, model_state_for_saving
from dist_llm.config import ConfigError, RunConfig, parse_args, usage
from dist_llm.data.documents import document_ids
from dist_llm.parallel import distributed
from dist_llm.parallel.distributed import DistContext, DistributedError, distributed_context
from dist_llm.parallel.parallelize import (
    Parallelism,
    ParallelismError,
    effective_strategy,
    hsdp_shape,
    parallelize,
)
from dist_llm.training import outputs, precision
from dist_llm.training.evaluation import format_eval, validation_windows
from dist_llm.training.init_from import check_same_tokenizer, load_initial_weights, resolve_init_source
from dist_llm.training.memory import MemoryPlan, check_fits, plan_memory
from dist_llm.training.metrics import (
    MetricsLog,
    config_summary,
    console_line,
    format_postfix,
    make_hooks,
    mfu,
    peak_flops,
    peak_memory_mb,
    progress_bar,
    truncate_metrics,
)
from dist_llm.training.optimizer import build_optimizer, lr_at, set_lr
from dist_llm.training.plan import make_plan, split_batch
from dist_llm.training.preflight import PreflightError, check_run_setup
from dist_llm.training.run_lock import RunLockError
from dist_llm.training.signals import StopRequest
from dist_llm.training.state import (
    CheckpointWriter,
    checkpoint_format_for,
    choose_checkpoint,
    gathered_model_state,
    restore_training_state,
    trainer_state_dict,
)
from dist_llm.training.step import forward_backward
from dist_llm.utils.atomic_io import atomic_write_json
from dist_llm.utils.rng import seed_everything


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says why and what was kept."""


def train(cfg: RunConfig, stop: StopRequest | None = None) -> dict[str, Any]:
    """Run the configured training; returns a summary (final step, last validation metrics).

    `stop`: the stop-signal handlers, installed by the caller as early as it can (main() does so first
    thing); without one, train() installs them itself.
    """
    launch = distributed_context(cfg.dist.device, cfg.dist.backend, cfg.dist.timeout_s)
    with launch as ctx, contextlib.ExitStack() as cleanup:
        if not ctx.is_main:  # rank 0 reports the run; the others say they joined (one line each)
            from dist_llm.parallel.rank_messages import ready_line

            print(ready_line(ctx.rank), flush=True)
        if stop is None:
            stop = cleanup.enter_context(StopRequest())
        # A separate frame: when it returns, DDP (whose reducer holds the process group and, through it,
        # gloo's/NCCL's threads) is released before the group is torn down.
        return _train(cfg, ctx, stop)


def _parallelism(cfg: RunConfig) -> Parallelism:
    sharded = cfg.dist.strategy in ("fsdp", "hsdp")
    return Parallelism(
        strategy=cfg.dist.strategy, shard_group_size=cfg.dist.shard_group_size,
        reshard_after_forward=cfg.dist.reshard_after_forward, cpu_offload=cfg.dist.cpu_offload,
        activation_checkpointing=cfg.train.activation_checkpointing, ac_every=cfg.train.ac_every,
        compile=cfg.train.compile,
        param_dtype=precision.compute_dtype(cfg.train.precision) if sharded else None,
    )  # fmt: skip


def _check_layout(cfg: RunConfig, ctx: DistContext, say) -> tuple[str, str]:
    """Before any work: the strategy and checkpoint format this run can use on this many ranks."""
    strategy = effective_strategy(cfg.dist.strategy, ctx.world_size)
    if strategy == "single" and cfg.dist.strategy != "ddp":
        say(f"note: dist.strategy={cfg.dist.strategy} is ignored: a single process has nothing to shard")
    if strategy == "hsdp":
        try:
            replicas, group = hsdp_shape(ctx.world_size, cfg.dist.shard_group_size)
        except ParallelismError as e:
            raise ConfigError(str(e)) from None
        say(f"hsdp: {replicas} replica group(s) of {group} ranks")
    if cfg.dist.cpu_offload and strategy in ("fsdp", "hsdp") and ctx.device.type != "cuda":
        raise ConfigError(f"'dist.cpu_offload' moves parameters, gradients and optimizer state from the GPU "
                          f"to host memory; this run computes on {ctx.device}, where there is nothing to "
                          f"offload: leave it false")
    fmt = checkpoint_format_for(cfg.checkpoint.format, strategy in ("fsdp", "hsdp"), ctx.world_size)
    return strategy, fmt


def _train(cfg: RunConfig, ctx: DistContext, stop: StopRequest) -> dict[str, Any]:
    from dist_llm.model import ModelConfig

    with contextlib.ExitStack() as cleanup:
        device, main = ctx.device, ctx.is_main
        say = console_line if main else (lambda *args, **kwargs: None)  # other ranks stay quiet
        precision.check_precision(cfg.train.precision, device)
        strategy, checkpoint_fmt = _check_layout(cfg, ctx, say)
        split = split_batch(cfg, ctx.world_size)  # batch arithmetic: the world size is enough
        if split.note:
            say(split.note)
        # The memory plan needs the model config and the micro-batch only: a run that cannot fit stops now
        model_cfg = ModelConfig.from_dict(dataclasses.asdict(cfg.model))
        par_cfg = _parallelism(cfg)
        memory = _memory_plan(model_cfg, par_cfg, strategy, ctx.world_size, split.micro_batch_size,
                              cfg.train.precision)
        check_fits(memory, device, strategy, cfg.train.activation_checkpointing)
        # Writable run and cache dirs, and this run dir's lock (held until the end: one trainer per run dir)
        check_run_setup(cfg, cleanup)
        run_dir = Path(cfg.run.dir)
        # Continued pretraining: the source is checked before any work, and its tokenizer becomes the
        # run's (also on a resume, which must find the tokenizer the checkpoint was trained with).
        init_source = None
        if cfg.run.init_from:
            init_source = distributed.on_main_rank(lambda: resolve_init_source(cfg))
        explicit_tokenizer = cfg.tokenizer.path
        if init_source and not explicit_tokenizer:
            cfg = dataclasses.replace(cfg, tokenizer=dataclasses.replace(cfg.tokenizer,
                                                                         path=init_source["tokenizer_dir"]))
        config_dict = cfg.to_dict()
        say(f"dist_llm.train: {ctx.world_size} rank(s) on {device}, strategy {strategy}; "
            + config_summary(cfg))
        # Which checkpoint to resume from, decided by rank 0 before any work (it may fall back past
        # broken ones, and rejects one whose model differs from this config).
        chosen = distributed.on_main_rank(lambda: choose_checkpoint(cfg, say))
        if init_source and chosen:
            say(f"init: resuming from the checkpoint {chosen}, which wins over run.init_from "
                f"({cfg.run.init_from}): its weights already started from there")
            init_source = None
        if chosen and not cfg.tokenizer.path and (run_dir / "tokenizer").is_dir():
            # A resume tokenizes as the run did: with the run's own tokenizer, not one trained anew on
            # inputs that may have changed (the resume then says what differs in the data).
            cfg = dataclasses.replace(cfg, tokenizer=dataclasses.replace(cfg.tokenizer,
                                                                         path=str(run_dir / "tokenizer")))

        # ---- data: rank 0 builds the tokenizer and token files, the others wait and reuse them
        from dist_llm.data import ShardedBatchLoader
        from dist_llm.model import TransformerLM
        from dist_llm.training.pipeline import open_splits, prepare_sources

        tokenizer, data_dirs = prepare_sources(cfg)
        if init_source and explicit_tokenizer:
            check_same_tokenizer(init_source, tokenizer.fingerprint, explicit_tokenizer)
        ctx_len = cfg.model.context_length
        train_data, val_data, where = open_splits(cfg, data_dirs, tokenizer.fingerprint)
        plan = make_plan(cfg, ctx.world_size, len(train_data), getattr(train_data, "limit", None), say, split)
        say(f"data: {train_data.num_tokens:,} train / {val_data.num_tokens:,} val tokens in {where}; "
            f"global batch {plan.global_batch_seqs} x {ctx_len} tokens = {plan.micro_batch_size} per "
            f"micro-step x {plan.accum_steps} accumulation steps x {ctx.world_size} rank(s); "
            f"{plan.total_steps} steps ({plan.total_steps / plan.steps_per_epoch:.2f} epochs)")

        # ---- model: built on the meta device, laid over the ranks, then given memory and its initial
        # weights (the same on every rank and under every strategy, from the run's seed)
        say(memory.summary())
        seed_everything(cfg.run.seed)
        par = parallelize(lambda: TransformerLM.from_config(model_cfg), par_cfg, ctx.world_size, device)
        model = par.model
        if init_source:  # weights only: optimizer, LR schedule and data position start fresh
            load_initial_weights(model, init_source)
            say(f"init: weights from {init_source['model_dir']}" + (f" ({init_source['note']})"
                                                                     if init_source["note"] else ""))
        seed_everything(cfg.run.seed + ctx.rank)  # per-rank randomness from here on
        optimizer = build_optimizer(model, cfg.optim, device)
        scaler = precision.grad_scaler(cfg.train.precision, device)
        loader = ShardedBatchLoader(train_data, plan.micro_batch_size, ctx.rank, ctx.world_size,
                                    seed=cfg.run.seed, device=device)
        separator = _document_separator(cfg, train_data)
        val_windows = validation_windows(val_data, cfg.eval.num_windows, ctx.rank, ctx.world_size, tokenizer,
                                         cfg.model.vocab_size, separator)
        non_embedding = model.num_params(include_embeddings=False)
        say(f"model: {model.num_params():,} parameters ({non_embedding:,} without embeddings), "
            f"{model.flops_per_token() / 1e6:.1f} MFLOPs per token")

        # ---- resume: every rank loads the chosen checkpoint (rank 0 verified its checksums when choosing
        # it: hashing it again on every rank would read the whole checkpoint once more per rank)
        step, counters = 0, {"tokens": 0, "time_s": 0.0, "nonfinite_skipped": 0}
        if chosen:
            state = restore_training_state(chosen, par, optimizer, scaler, loader, tokenizer.fingerprint,
                                           ctx.rank)
            step = state["step"]
            counters = {k: state.get(k, v) for k, v in counters.items()}
            saved_decay = state.get("lr_schedule", {}).get("decay_steps", plan.decay_steps)
            if saved_decay != plan.decay_steps:
                say(f"resume: the LR schedule now decays over {plan.decay_steps} steps (was {saved_decay})")
            say(f"resume: continuing from {chosen} at step {step} ({counters['tokens']:,} tokens seen)")
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            if chosen:
                truncate_metrics(run_dir, step)
            elif (moved := outputs.set_aside_previous_run(run_dir)) is not None:
                say(f"run dir: starting fresh; the previous outputs were moved to {moved}")
            atomic_write_json(run_dir / "config.json", config_dict)
            # Written now, not with the final model: generate, evaluate and export can then use the
            # checkpoints of a run that is still going or that stopped early.
            tokenizer.save(run_dir / "tokenizer")
        distributed.barrier()

        # ---- autocast, metrics, checkpoints (the loss is computed inside the model's forward: targets=)
        autocast = precision.autocast(cfg.train.precision, device)
        peak = peak_flops(device, cfg.train.precision)
        flops_per_token = model.flops_per_token()
        writer = CheckpointWriter(cfg, checkpoint_fmt, cfg.checkpoint.async_save)

        hooks = make_hooks(cfg.log.tensorboard, cfg.log.wandb, cfg.log.wandb_project, run_dir, config_dict) \
            if main else []
        log = cleanup.enter_context(contextlib.closing(MetricsLog(run_dir, hooks))) if main else None
        bar = cleanup.enter_context(progress_bar(main and cfg.log.progress_bar, plan.total_steps, step))
        last_eval: dict[str, float] = {}
        last_eval_step = -1
        window_start, window_tokens, window_loss, window_steps = time.perf_counter(), 0, 0.0, 0
        run_start = time.perf_counter() - counters["time_s"]

        def evaluate_and_log(at_step: int) -> None:
            nonlocal last_eval, window_start, last_eval_step
            if at_step == last_eval_step:  # e.g. a periodic, an epoch-end and the final one at one step
                return
            last_eval_step = at_step
            started = time.perf_counter()
            last_eval = val_windows.evaluate(model, cfg.eval.batch_size, device, autocast,
                                             lockstep=par.sharded)
            if log:
                log.write({"step": at_step, "tokens": counters["tokens"], **last_eval,
                           "time_s": time.perf_counter() - run_start})
            say(f"step {at_step}: {format_eval(last_eval)}")
            window_start += time.perf_counter() - started  # evaluation time is not training throughput

        def save_checkpoint(at_step: int, lr: float) -> None:
            counters["time_s"] = time.perf_counter() - run_start
            schedule = {"last_lr": lr, "warmup_steps": cfg.optim.warmup_steps,
                        "decay_steps": plan.decay_steps}
            path = writer.save(at_step, par, optimizer, trainer_state_dict(
                at_step, counters, loader, scaler, tokenizer.fingerprint, schedule))
            say(f"checkpoint: {path}" + (" (written in the background)" if writer.asynchronous else ""))

        if log and chosen:
            log.write({"event": "resume", "from_step": step, "checkpoint": str(chosen)})
        elif log and init_source:
            log.write({"event": "init_from", "source": init_source["model_dir"]})
        # What the model must beat (rank 0; read from the data only when shown: at step 0 and at the end)
        references = functools.cache(lambda: val_windows.references(train_data) if main else {})
        if step == 0:
            evaluate_and_log(0)
            if log:
                log.write({"step": 0, **references()})  # once: the validation text does not change
                say(outputs.references_line(references()))
            if cfg.eval.sample_tokens and (main or par.sharded):  # the untrained model, to compare at the end
                say("sample before training:\n" + outputs.sample_text(model, tokenizer, cfg.eval,
                                                                       cfg.run.seed))
        stop_reason = None
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        # model.doc_masking: each batch's document numbers, so attention stays inside documents
        doc_ids = None if separator is None else functools.partial(document_ids, separator_id=separator)
        while step < plan.total_steps:
            # -- one optimizer step: accum_steps micro-batches, gradients synchronised on the last only
            lr = lr_at(step, cfg.optim, plan.decay_steps)
            set_lr(optimizer, lr)
            epoch_before = loader.epoch
            step_loss = forward_backward(par, loader.next_batch, plan.accum_steps, autocast, scaler, doc_ids)
            scaler.unscale_(optimizer)
            grad_norm = par.clip_grad_norm_(max_norm)  # the global norm, whatever the strategy
            # One device->host read per step (both scalars at once): needed to stop on a non-finite loss.
            loss_value, norm_value = torch.stack([step_loss.float(), grad_norm.float().to(device)]).tolist()
            # With fp16 an infinite gradient norm is routine: the scaler skips that step and lowers its scale.
            norm_ok = math.isfinite(norm_value) or cfg.train.precision == "fp16"
            finite = math.isfinite(loss_value) and norm_ok
            nonfinite, stop_requested = distributed.any_rank_flags([not finite, stop.received is not None])
            if nonfinite:
                optimizer.zero_grad(set_to_none=True)
                if counters["nonfinite_skipped"] >= cfg.train.skip_nonfinite:
                    raise TrainingError(
                        f"non-finite loss at step {step + 1} (loss {loss_value}, grad norm {norm_value}); "
                        f"stopping without writing a checkpoint, so the last good one in "
                        f"{run_dir / 'checkpoints'} is untouched. Lower optim.max_lr, or set "
                        f"train.skip_nonfinite=N to skip up to N such steps")
                counters["nonfinite_skipped"] += 1
                say(f"step {step + 1}: non-finite loss, update skipped "
                    f"({counters['nonfinite_skipped']}/{cfg.train.skip_nonfinite})")
                continue
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            counters["tokens"] += plan.global_batch_tokens
            window_tokens += plan.global_batch_tokens
            window_loss += loss_value
            window_steps += 1
            bar.update(1)

            # -- logging: one line per log interval, losses averaged over ranks and steps
            if step % cfg.log.interval == 0 or step == plan.total_steps:
                now = time.perf_counter()
                tokens_per_s = window_tokens / max(now - window_start, 1e-9)
                record = {"step": step, "tokens": counters["tokens"],
                          "train_loss": distributed.all_reduce_mean(window_loss / window_steps),
                          "steps": window_steps,  # train_loss averages these (fewer after a resume)
                          "lr": lr, "grad_norm": norm_value, "tokens_per_s": tokens_per_s,
                          "mfu": mfu(flops_per_token, tokens_per_s / ctx.world_size, peak),
                          "peak_mem_mb": peak_memory_mb(device), "time_s": now - run_start}
                if log:
                    log.write(record)
                    bar.set_postfix(format_postfix(record), refresh=False)
                window_start, window_tokens, window_loss, window_steps = now, 0, 0.0, 0

            # -- evaluation, checkpoints, stop requests
            # An epoch ending one step before the run needs no evaluation of its own: the final one follows.
            epoch_done = loader.epoch != epoch_before and step + 1 != plan.total_steps
            periodic_eval = cfg.eval.interval and step % cfg.eval.interval == 0
            if periodic_eval or epoch_done or step == plan.total_steps:
                evaluate_and_log(step)
            if stop_requested:
                stop_reason = stop.received or "a stop signal on another rank"
            periodic = cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0
            if periodic or stop_reason or step == plan.total_steps:
                save_checkpoint(step, lr)
            if stop_reason and step < plan.total_steps:
                if log:
                    log.write({"event": "stop_signal", "step": step, "signal": stop_reason})
                say(f"stopping after step {step}: received {stop_reason}; resume with --resume auto")
                break
        bar.close()
        writer.close()  # a checkpoint still being written in the background is finished first

        # ---- outputs: final model, sample, loss curve (rank 0; every rank helps gather a sharded model)
        finished = step >= plan.total_steps
        if finished:
            final_state = gathered_model_state(model) if par.sharded else None
            if main:
                outputs.write_final_model(run_dir, final_state or model_state_for_saving(model), config_dict)
                say(f"final model: {run_dir / 'model.safetensors'}")
            if cfg.eval.sample_tokens and (main or par.sharded):  # a sharded model generates on every rank
                say(f"sample after {step} steps:\n" + outputs.sample_text(model, tokenizer, cfg.eval,
                                                                             cfg.run.seed))
            if main and last_eval:
                say(outputs.summary_line(step, last_eval, references()))
        if main:
            say(outputs.write_loss_plot(run_dir))
        distributed.barrier()
        return {"step": step, "finished": finished, "stopped_by": stop_reason, **last_eval}


def _document_separator(cfg: RunConfig, train_data: Any) -> int | None:
    """With model.doc_masking, the token that ends a document in the prepared data (else None)."""
    if not cfg.model.doc_masking:
        return None
    from dist_llm.data.documents import separator_id

    # A mixture's sources share the run's tokenizer, so any one of them names the separator.
    split = next(iter(train_data.sources.values())) if hasattr(train_data, "sources") else train_data
    try:
        return separator_id(split.meta)
    except ValueError as e:
        raise ConfigError(f"'model.doc_masking': {split.data_dir}: {e}") from None


def _memory_plan(model_cfg: Any, par_cfg: Parallelism, strategy: str, world_size: int, micro_batch: int,
                 train_precision: str) -> MemoryPlan:
    from dist_llm.model import TransformerLM

    with torch.device("meta"):  # sizes only: no memory
        skeleton = TransformerLM.from_config(model_cfg)
    shard_degree = {"fsdp": world_size, "hsdp": hsdp_shape(world_size, par_cfg.shard_group_size)[1]
                    if strategy == "hsdp" else 1}.get(strategy, 1)
    return plan_memory(skeleton, strategy=strategy, shard_degree=shard_degree, micro_batch=micro_batch,
                       context=model_cfg.context_length,
                       compute_bytes=precision.bytes_per_value(train_precision),
                       activation_checkpointing=par_cfg.activation_checkpointing, ac_every=par_cfg.ac_every,
                       cpu_offload=par_cfg.cpu_offload)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(usage())
        return 0
    # First thing: a stop signal that arrives while the data is prepared or the process group forms is
    # kept and honoured at the first step boundary, instead of killing the process.
    with StopRequest() as stop:
        return _main(argv, stop)


def _main(argv: list[str], stop: StopRequest) -> int:
    from dist_llm.data import DataError
    from dist_llm.parallel import elastic, rank_messages
    from dist_llm.tokenizer import TokenizerError

    try:
        cfg = parse_args(argv)
        # Under torchrun --max-restarts: refused now if a restart would hang; a restart resumes.
        cfg = elastic.prepare(cfg, say=print if rank_messages.launch_ranks()[0] == 0 else lambda _: None)
        train(cfg, stop)
    except (ConfigError, CheckpointError, TrainingError, DistributedError, DataError, TokenizerError,
            PreflightError, RunLockError) as e:
        # Every rank reports (the process group may not exist yet: the rank comes from the launcher's
        # variables); a config error, the same everywhere, once per node (dist_llm/parallel/rank_messages.py).
        if (line := rank_messages.error_line(e)) is not None:
            print(line, file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    except KeyboardInterrupt:  # a second Ctrl-C (see dist_llm/training/signals.py)
        print("aborted by Ctrl-C; --resume auto continues from the newest complete checkpoint",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
