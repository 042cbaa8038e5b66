"""Directory-level conversions: our run/checkpoint dir -> an HF Llama dir, and an HF Llama dir -> a run dir.

Each output directory is assembled under a temporary name next to its destination and renamed into
place only when every file is written, so an interrupted conversion never leaves a directory that looks
like a usable model.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from dist_llm.checkpoint.pretrained import (
    ModelSource,
    load_tokenizer,
    read_model_config,
    read_state_dict,
    resolve_checkpoint,
    resolve_run,
    save_pretrained,
)
from dist_llm.data import DOCUMENT_SEPARATOR as END_OF_TEXT
from dist_llm.export import hf_llama
from dist_llm.export.hf_llama import UnsupportedModelError
from dist_llm.export.hf_tokenizer import TokenizerNotConvertible, tokenizer_from_json, write_hf_tokenizer
from dist_llm.tokenizer import Tokenizer, TokenizerError
from dist_llm.utils.atomic_io import atomic_write, atomic_write_json, make_temp_dir
from dist_llm.utils.json_file import read_json


@contextmanager
def _staged_output_dir(out_dir: Path) -> Iterator[Path]:
    """A fresh temporary directory that becomes `out_dir` if the block completes, and vanishes if not."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        what = "output directory exists and is not empty" if out_dir.is_dir() else "exists and is a file"
        raise FileExistsError(f"{out_dir}: {what}; choose a new --out")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = make_temp_dir(out_dir.parent, f".{out_dir.name}.", ".partial")
    try:
        yield staging
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above); os.replace cannot replace a directory
        staging.replace(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _save_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))


def export_hf(source: ModelSource, out_dir: str | Path) -> list[str]:
    """Write `source` (a run or checkpoint) as an HF Llama directory; returns messages for the user."""
    out_dir = Path(out_dir)
    cfg = read_model_config(source.model_dir)
    state_dict = read_state_dict(source.model_dir)
    where = str(source.model_dir / "model.safetensors")
    try:
        hf_llama.check_state_dict(state_dict, hf_llama.expected_shapes(cfg), where)
    except UnsupportedModelError as e:
        raise UnsupportedModelError(f"not Llama-compatible: {e}") from None
    tokenizer = load_tokenizer(source)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise UnsupportedModelError(
            f"{source.tokenizer_dir}: tokenizer has {tokenizer.vocab_size} tokens, more than the model's "
            f"vocab_size={cfg.vocab_size}"
        )
    eos = END_OF_TEXT if END_OF_TEXT in tokenizer.special_tokens else None
    eos_id = tokenizer.token_id(eos) if eos is not None else None
    hf_state = hf_llama.to_hf_state_dict({k: v.float() for k, v in state_dict.items()}, cfg)
    with _staged_output_dir(out_dir) as staging:
        _save_safetensors(staging / "model.safetensors", hf_state)
        atomic_write_json(
            staging / "config.json", hf_llama.to_hf_config(cfg, bos_token_id=eos_id, eos_token_id=eos_id)
        )
        write_hf_tokenizer(tokenizer, staging, cfg.context_length, eos)
    num_params = sum(t.numel() for t in hf_state.values())
    messages = [f"wrote {out_dir} (LlamaForCausalLM, {num_params:,} parameters)"]
    if source.note:
        messages.insert(0, f"note: {source.note}")
    return messages


def export_hf_from(
    *, run: str | Path | None, checkpoint: str | Path | None, out_dir: str | Path
) -> list[str]:
    source = resolve_run(run) if run is not None else resolve_checkpoint(checkpoint)
    return export_hf(source, out_dir)


def _read_hf_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF model dir: model.safetensors or the shards its index names. No pickle files."""
    from safetensors.torch import load_file

    single = model_dir / "model.safetensors"
    index = model_dir / "model.safetensors.index.json"
    if single.is_file():
        return load_file(single)
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            tensors.update(load_file(model_dir / shard))
        return tensors
    pickled = [p.name for p in model_dir.glob("*.bin")] + [p.name for p in model_dir.glob("*.pt*")]
    hint = f" (found {pickled}: pickle files are not loaded; convert them to safetensors)" if pickled else ""
    raise UnsupportedModelError(f"{model_dir}: no model.safetensors or model.safetensors.index.json{hint}")


def _check_hf_tensors(tensors: dict[str, torch.Tensor], model_dir: Path) -> None:
    biases = sorted(k for k in tensors if k.endswith(".bias"))
    if biases:
        raise UnsupportedModelError(f"{model_dir}: unsupported for import: bias tensors {biases[:3]}")
    if "lm_head.weight" not in tensors:
        raise UnsupportedModelError(
            f"{model_dir}: unsupported for import: no lm_head.weight, i.e. the output layer is tied to the "
            "input embeddings; ours are untied"
        )


def _convert_tokenizer(model_dir: Path) -> tuple[Tokenizer | None, str]:
    """Our Tokenizer if the HF tokenizer.json converts exactly, else None; and a message saying which."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return None, f"tokenizer not converted: {model_dir} has no tokenizer.json"
    try:
        tokenizer = tokenizer_from_json(path)
    except (TokenizerNotConvertible, TokenizerError) as e:
        return None, f"tokenizer not converted: {e}"
    return tokenizer, f"converted tokenizer.json ({tokenizer.vocab_size} tokens)"


def import_hf(model_dir: str | Path, out_dir: str | Path) -> list[str]:
    """Write an HF Llama directory as a run directory (model.safetensors, config.json, tokenizer/)."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    config_path = model_dir / "config.json"
    hf_config = read_json(config_path, UnsupportedModelError, " (expected an HF model directory)")
    cfg = hf_llama.from_hf_config(hf_config, str(config_path))
    tensors = _read_hf_weights(model_dir)
    _check_hf_tensors(tensors, model_dir)
    # Older checkpoints store RoPE frequencies as a buffer; they follow from the config, so drop them.
    tensors = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}
    shapes = hf_llama.expected_shapes(cfg)
    expected = {hf: shapes[ours] for ours, hf in hf_llama.name_map(cfg.num_layers).items()}
    hf_llama.check_state_dict(tensors, expected, str(model_dir))
    state_dict = hf_llama.from_hf_state_dict({k: v.float() for k, v in tensors.items()}, cfg)
    tokenizer, tokenizer_message = _convert_tokenizer(model_dir)
    if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
        raise UnsupportedModelError(
            f"{model_dir}: tokenizer.json has {tokenizer.vocab_size} tokens, more than the model's "
            f"vocab_size={cfg.vocab_size}"
        )
    imported_from = {"path": str(model_dir.resolve()), "hf_config": hf_config}
    with _staged_output_dir(out_dir) as staging:
        save_pretrained(staging, state_dict, cfg, tokenizer, {"imported_from": imported_from})
    num_params = sum(t.numel() for t in state_dict.values())
    return [f"wrote {out_dir} ({num_params:,} parameters)", tokenizer_message]
