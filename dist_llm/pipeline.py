"""From raw text to a tokenizer and token files, cached, and built once per job.

Rank 0 trains (or reuses) the tokenizer and prepares the token files while the other ranks wait;
then every rank opens the same files. Caches live under `run.cache_dir`:
    tokenizers/<key>/dist_llm_tokenizer.json   key: the inputs (path, size, mtime) + tokenizer settings
    tokens/<key>/{train,val}.bin, meta.json     key: the inputs + tokenizer fingerprint + val_fraction
so changing the corpus or a tokenizer setting builds new ones and leaves the old ones valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from dist_llm import distributed
from dist_llm.atomic_io import atomic_write_json
from dist_llm.config import ConfigError, RunConfig
from dist_llm.tokenizer import Tokenizer, train_bpe

SEPARATOR = "<|endoftext|>"


def corpus_files(cfg: RunConfig) -> list[Path]:
    """The configured input files, or the built-in corpus data.builtin (created in the cache on first use)."""
    if not cfg.data.inputs:
        from dist_llm.data.builtin_corpus import builtin_corpus_path
        from dist_llm.data.stories import stories_corpus_path

        make = stories_corpus_path if cfg.data.builtin == "stories" else builtin_corpus_path
        return [Path(make(cfg.run.cache_dir))]
    files = [Path(p) for p in cfg.data.inputs]
    for path in files:
        if not path.exists():
            raise ConfigError(f"'data.inputs': {path} does not exist")
    return files


def _inputs_key(files: list[Path]) -> list[list]:
    # Path, size and modification time identify a file version without reading gigabytes to hash it.
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _digest(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _training_sample(files: list[Path], max_bytes: int, out: Path) -> list[Path]:
    """The first max_bytes of the corpus (cut at a line end) as one file, for BPE training."""
    if max_bytes <= 0 or sum(p.stat().st_size for p in files) <= max_bytes:
        return files
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    remaining = max_bytes
    with open(tmp, "wb") as dst:
        for path in files:
            if remaining <= 0:
                break
            with open(path, "rb") as src:
                data = src.read(remaining)
            if len(data) == remaining:  # cut inside this file: end at the last newline
                data = data[: data.rfind(b"\n") + 1] or data
            dst.write(data if data.endswith(b"\n") else data + b"\n")
            remaining -= len(data)
    os.replace(tmp, out)
    return [out]


def build_tokenizer(cfg: RunConfig, files: list[Path]) -> Path:
    """Path of the tokenizer json: the configured one, or a cached one trained on `files`."""
    if cfg.tokenizer.path:
        path = Path(cfg.tokenizer.path)
        if not path.exists():
            raise ConfigError(f"'tokenizer.path': {path} does not exist")
        return path
    settings = {"inputs": _inputs_key(files), "vocab_size": cfg.model.vocab_size,
                "special_tokens": cfg.tokenizer.special_tokens,
                "train_max_bytes": cfg.tokenizer.train_max_bytes}
    out_dir = Path(cfg.run.cache_dir) / "tokenizers" / _digest(settings)
    if (out_dir / "dist_llm_tokenizer.json").is_file():
        print(f"tokenizer: reusing {out_dir}")
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    sample = _training_sample(files, cfg.tokenizer.train_max_bytes, out_dir / "training_sample.txt")
    print(f"tokenizer: training a {cfg.model.vocab_size}-token BPE on {', '.join(map(str, sample))}")
    workers = cfg.tokenizer.num_workers or None
    vocab, merges = train_bpe(sample if len(sample) > 1 else sample[0], cfg.model.vocab_size,
                              cfg.tokenizer.special_tokens, num_workers=workers)
    Tokenizer(vocab, merges, cfg.tokenizer.special_tokens).save(out_dir)  # atomic; its presence = done
    (out_dir / "training_sample.txt").unlink(missing_ok=True)
    atomic_write_json(out_dir / "settings.json", settings)
    return out_dir


def build_token_files(cfg: RunConfig, files: list[Path], tokenizer: Tokenizer) -> Path:
    from dist_llm.data.prepare import prepare_corpus

    key = {"inputs": _inputs_key(files), "tokenizer": tokenizer.fingerprint,
           "val_fraction": cfg.data.val_fraction}
    out_dir = Path(cfg.run.cache_dir) / "tokens" / _digest(key)
    prepare_corpus(files, tokenizer, out_dir, workers=cfg.data.num_workers or None,
                   val_fraction=cfg.data.val_fraction, separator=SEPARATOR, text_field=cfg.data.text_field,
                   skip_bad_records=cfg.data.skip_bad_records, progress=False)
    return out_dir


# Test hook: seconds to pause between the tokenizer and the token files, so a test can signal the trainer
# while it prepares data (the corpus preparation's worker pool starts after the pause).
PAUSE_ENV = "DIST_LLM_PAUSE_IN_PREPARE_S"


def _pause_if_requested() -> None:
    seconds = float(os.environ.get(PAUSE_ENV) or 0)
    if seconds > 0:
        print(f"data: pausing {seconds:g} s ({PAUSE_ENV})", flush=True)
        time.sleep(seconds)


def prepare_data(cfg: RunConfig) -> tuple[Tokenizer, Path]:
    """(tokenizer, token-file directory), built by rank 0 while the other ranks wait for its paths (or
    its error: a failure there stops every rank with the message, not at a barrier's timeout)."""
    if SEPARATOR not in cfg.tokenizer.special_tokens:
        raise ConfigError(f"'tokenizer.special_tokens' must include the document separator {SEPARATOR!r}, "
                          f"got {cfg.tokenizer.special_tokens}")

    def build() -> dict[str, str]:
        files = corpus_files(cfg)
        tokenizer_path = build_tokenizer(cfg, files)
        tokenizer = Tokenizer.load(tokenizer_path)
        if tokenizer.vocab_size > cfg.model.vocab_size:  # before the corpus is tokenized, not after
            raise ConfigError(f"'model.vocab_size' ({cfg.model.vocab_size}) is smaller than the tokenizer's "
                              f"vocabulary ({tokenizer.vocab_size} tokens, {tokenizer_path})")
        _pause_if_requested()
        data_dir = build_token_files(cfg, files, tokenizer)
        return {"tokenizer": str(tokenizer_path), "data": str(data_dir)}

    result = distributed.on_main_rank(build)
    return Tokenizer.load(result["tokenizer"]), Path(result["data"])
