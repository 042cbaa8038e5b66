"""parallelize, the memory plan and the big configs, without the trainer: initial weights under every
strategy, activation checkpointing, the per-rank memory plan, and the errors for impossible layouts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import run_ranks
from trainer_runs import tiny_train_args

from dist_llm.config import ConfigError, load_config, parse_args
from dist_llm.model import ModelConfig, TransformerLM
from dist_llm.parallel.distributed import DistContext
from dist_llm.parallel.parallelize import (
    Parallelism,
    ParallelismError,
    checkpointed_blocks,
    hsdp_shape,
    parallelize,
)
from dist_llm.training.memory import plan_memory

REPO = Path(__file__).resolve().parent.parent
SMALL = ModelConfig(vocab_size=96, context_length=16, d_model=32, num_layers=3, num_heads=2, d_ff=48)


def _build() -> TransformerLM:
    return TransformerLM.from_config(SMALL)


def _eager_reference(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return _build().state_dict()


def test_meta_init_equals_building_the_model_directly():
    torch.manual_seed(3)
    par = parallelize(_build, Parallelism(strategy="fsdp"), 1, torch.device("cpu"))  # single process
    assert par.strategy == "single"
    reference = _eager_reference(3)
    state = par.model.state_dict()
    assert state.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(state[name], tensor), name
    rope = par.model.layers[0].attn.rope  # derived buffers are computed again, not left as garbage
    torch.testing.assert_close(rope.cos, TransformerLM.from_config(SMALL).layers[0].attn.rope.cos)


def _sharded_init_on_rank(rank: int, strategy: str) -> dict:
    import torch.distributed as dist

    from dist_llm.parallel.distributed import distributed_context
    from dist_llm.parallel.shards import gathered

    with distributed_context(device="cpu"):
        torch.manual_seed(3)
        par = parallelize(_build, Parallelism(strategy=strategy, shard_group_size=2),
                          dist.get_world_size(), torch.device("cpu"))
        reference = _eager_reference(3)
        local = {n: tuple(t.to_local().shape) for n, t in par.model.state_dict().items()}
        same = all(torch.equal(gathered(t), reference[n]) for n, t in par.model.state_dict().items())
        x = torch.randint(0, SMALL.vocab_size, (2, SMALL.context_length))
        logits_close = torch.allclose(par.model(x), _reference_logits(x), atol=1e-5)
    return {"same": same, "local": local, "logits_close": logits_close}


def _reference_logits(x: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(3)
    return _build()(x)


@pytest.mark.slow
def test_sharded_init_equals_ddp_init_on_two_ranks(tmp_path):
    r0, r1 = run_ranks(_sharded_init_on_rank, 2, "fsdp", out_dir=tmp_path / "fsdp")
    assert r0["same"] and r1["same"] and r0["logits_close"] and r1["logits_close"]
    # really sharded: each rank holds half the rows of each matrix (the embedding has 96 rows)
    assert r0["local"]["token_embeddings.weight"] == [48, 32] == r1["local"]["token_embeddings.weight"]


@pytest.mark.slow
def test_hsdp_init_on_a_two_by_two_mesh(tmp_path):
    results = run_ranks(_sharded_init_on_rank, 4, "hsdp", out_dir=tmp_path / "hsdp", timeout=240)
    assert all(r["same"] and r["logits_close"] for r in results)
    # sharded 2 ways within a group, replicated across the two groups
    assert [r["local"]["lm_head.weight"] for r in results] == [[48, 32]] * 4


def _loss_and_grads(activation_checkpointing: str) -> tuple[float, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    par = parallelize(_build, Parallelism(activation_checkpointing=activation_checkpointing, ac_every=2), 1,
                      torch.device("cpu"))
    x = torch.randint(0, SMALL.vocab_size, (4, SMALL.context_length),
                      generator=torch.Generator().manual_seed(1))
    loss = torch.nn.functional.cross_entropy(par.train_step_module(x).flatten(0, 1), x.flatten())
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in par.model.named_parameters()}


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(mode):
    loss, grads = _loss_and_grads("none")
    ac_loss, ac_grads = _loss_and_grads(mode)
    assert ac_loss == loss
    for name, grad in grads.items():
        torch.testing.assert_close(ac_grads[name], grad, rtol=1e-6, atol=1e-7, msg=name)


def test_activation_checkpointing_keeps_only_block_inputs():
    """What autograd saves for backward, counted: with every block checkpointed, each block keeps its
    input and nothing else, so far less than without."""

    def saved_bytes(mode: str) -> int:
        torch.manual_seed(0)
        par = parallelize(_build, Parallelism(activation_checkpointing=mode), 1, torch.device("cpu"))
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            if not isinstance(t, torch.nn.Parameter) and t.requires_grad or t.grad_fn is not None:
                total += t.numel() * t.element_size()
            return t

        x = torch.randint(0, SMALL.vocab_size, (4, SMALL.context_length))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            par.train_step_module(x).sum().backward()
        return total

    assert saved_bytes("full") * 3 < saved_bytes("none")
    assert checkpointed_blocks(5, "selective", 2) == [0, 2, 4]
    assert checkpointed_blocks(5, "none", 2) == []


def test_memory_plan_shards_model_state_by_the_world_size():
    with torch.device("meta"):
        model = _build()
    ddp = plan_memory(model, strategy="ddp", shard_degree=1, micro_batch=2, context=16, compute_bytes=4)
    fsdp = plan_memory(model, strategy="fsdp", shard_degree=4, micro_batch=2, context=16, compute_bytes=4)
    n = model.num_params()
    assert ddp.parameters == 4 * n and ddp.optimizer == 8 * n
    assert fsdp.parameters == 4 * -(-n // 4) and fsdp.optimizer == 8 * -(-n // 4)
    assert fsdp.gradients == 4 * -(-n // 4) and ddp.gradients == 2 * 4 * n  # ddp also has its buckets
    assert fsdp.activations == ddp.activations
    checkpointed = plan_memory(model, strategy="fsdp", shard_degree=4, micro_batch=2, context=16,
                               compute_bytes=4, activation_checkpointing="full")
    assert checkpointed.activations < fsdp.activations


@pytest.mark.parametrize(("name", "billions", "world"), [("llama-1b", 1.2, 8), ("llama-8b", 8.0, 64)])
def test_big_configs_build_on_the_meta_device_and_plan(name, billions, world):
    cfg = load_config(REPO / "configs" / f"{name}.toml")
    with torch.device("meta"):
        model = TransformerLM.from_config(ModelConfig.from_dict(dataclasses.asdict(cfg.model)))
    assert model.num_params() / 1e9 == pytest.approx(billions, rel=0.03)
    group = hsdp_shape(world, cfg.dist.shard_group_size)[1] if cfg.dist.strategy == "hsdp" else world
    plan = plan_memory(model, strategy=cfg.dist.strategy, shard_degree=group,
                       micro_batch=cfg.train.micro_batch_size, context=cfg.model.context_length,
                       compute_bytes=2, activation_checkpointing=cfg.train.activation_checkpointing)
    assert plan.device_total < 80 * 1024**3  # fits the 80 GB GPUs the config's comment names
    assert plan.model_state * group == pytest.approx(16 * model.num_params(), rel=0.01)


# ---------------------------------------------------------------- impossible layouts, named early

def test_unknown_strategy_names_the_key(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match=r"'dist.strategy' must be one of ddp, fsdp, hsdp; got 'zero3'"):
        parse_args(tiny_train_args(tiny_data, tmp_path / "r", "--dist.strategy=zero3"))
    with pytest.raises(ConfigError, match=r"'train.precision' fp16 is not supported with dist.strategy"):
        parse_args(tiny_train_args(tiny_data, tmp_path / "r", "--dist.strategy=fsdp",
                                   "--train.precision=fp16"))


def test_hsdp_group_must_divide_the_world_size(tiny_data, tmp_path):
    from dist_llm.train import _check_layout

    with pytest.raises(ParallelismError, match=r"'dist.shard_group_size' \(3\) must divide the world size"):
        hsdp_shape(4, 3)
    assert hsdp_shape(8, 0, local_world_size=4) == (2, 4)
    cfg = parse_args(tiny_train_args(tiny_data, tmp_path / "r", "--dist.strategy=hsdp",
                                     "--dist.shard_group_size=3"))
    four_ranks = DistContext(rank=0, local_rank=0, world_size=4, device=torch.device("cpu"), backend="gloo")
    with pytest.raises(ConfigError, match=r"'dist.shard_group_size' \(3\)"):
        _check_layout(cfg, four_ranks, print)
    offload = parse_args(tiny_train_args(tiny_data, tmp_path / "r", "--dist.strategy=fsdp",
                                         "--dist.cpu_offload=true"))
    with pytest.raises(ConfigError, match=r"'dist.cpu_offload' .* this run computes on cpu"):
        _check_layout(offload, four_ranks, print)


def test_sharded_format_in_a_single_process_fails_before_any_work(tiny_data, tmp_path, capsys):
    from dist_llm.train import main

    cache = tmp_path / "fresh_cache"
    args = tiny_train_args(tiny_data, tmp_path / "r", "--checkpoint.format=sharded",
                           f"--run.cache_dir={cache}")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "'checkpoint.format' sharded needs a sharded model" in err and "this run has one process" in err
    assert not cache.exists()  # no tokenizer trained, no data prepared


@pytest.mark.slow
def test_regional_compile_with_activation_checkpointing_matches_eager():
    """With checkpointing (or fsdp) train.compile compiles each block on its own; the compiled,
    checkpointed blocks give eager's loss and gradients, and the parameter names stay plain."""
    eager_loss, eager_grads = _loss_and_grads("none")
    torch.manual_seed(0)
    par = parallelize(_build, Parallelism(activation_checkpointing="full", compile=True), 1,
                      torch.device("cpu"))
    assert par.train_step_module is par.model  # regional: no whole-model wrapper, no _orig_mod. names
    assert set(dict(par.model.named_parameters())) == set(eager_grads)
    x = torch.randint(0, SMALL.vocab_size, (4, SMALL.context_length),
                      generator=torch.Generator().manual_seed(1))
    loss = torch.nn.functional.cross_entropy(par.train_step_module(x).flatten(0, 1), x.flatten())
    loss.backward()
    assert loss.item() == pytest.approx(eager_loss, rel=1e-5)
    for name, param in par.model.named_parameters():
        torch.testing.assert_close(param.grad, eager_grads[name], rtol=1e-4, atol=1e-5, msg=name)
