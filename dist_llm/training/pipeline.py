"""From raw text to a tokenizer and token files, cached, and built once per job.

Rank 0 trains (or reuses) the tokenizer and prepares the token files while the other ranks wait;
then every rank opens the same files. Caches live under `run.cache_dir`:
    tokenizers/<key>/dist_llm_tokenizer.json   key: the inputs (path, size, mtime) + tokenizer settings
    tokens/<key>/{train,val}.bin, meta.json     key: the inputs + tokenizer fingerprint + val_fraction
so changing the corpus or a tokenizer setting builds new ones and leaves the old ones valid.

A mixture (`[[data.sources]]`) prepares each source into its own token directory, keyed as above by that
source's inputs and val_fraction, so a source shared by several mixtures is prepared once. Its one
tokenizer is trained on all sources: with tokenizer.train_max_bytes set, each source gives a share of that
budget in proportion to its weight, so the vocabulary fits the text the model will mostly see (as a
sample of the training mix, which is how OLMo and Llama build theirs), and a large but lightly weighted
source cannot crowd out the others; with no limit, on all of every source.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dist_llm.config import ConfigError, RunConfig
from dist_llm.data import DOCUMENT_SEPARATOR as SEPARATOR
from dist_llm.parallel import distributed
from dist_llm.tokenizer import Tokenizer, train_bpe
from dist_llm.utils.atomic_io import atomic_write_json


def corpus_files(cfg: RunConfig) -> list[Path]:
    """The configured input files, or the built-in corpus data.builtin (created in the cache on first use)."""
    if not cfg.data.inputs:
        from dist_llm.data.builtin_corpus import builtin_corpus_path
        from dist_llm.data.stories import stories_corpus_path

        make = stories_corpus_path if cfg.data.builtin == "stories" else builtin_corpus_path
        return [Path(make(cfg.run.cache_dir))]
    from dist_llm.data.sources import resolve_inputs

    for item in cfg.data.inputs:
        if not Path(item).exists() and not glob.has_magic(item):
            raise ConfigError(f"'data.inputs': {item} does not exist")
    return resolve_inputs(cfg.data.inputs)  # files, directories and globs, as for [[data.sources]]


def _inputs_key(files: list[Path]) -> list[list]:
    # Path, size and modification time identify a file version without reading gigabytes to hash it.
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _digest(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _plain_text(files: list[Path]) -> bool:
    """Uncompressed .txt files only: BPE can read those as they are."""
    return all(p.name.lower().endswith(".txt") for p in files)


def _training_sample(files: list[Path], max_bytes: int, out: Path, text_field: str = "text",
                     skip_bad_records: bool = False) -> list[Path]:
    """The first max_bytes of the corpus (all of it for 0) as text files BPE training reads.

    Plain .txt files are used as they are (cut at a line end). Any other input (JSONL, Parquet, gzip or
    zstd) is decoded into its documents first, by the readers data preparation uses, so that BPE learns
    from the text and never from JSON syntax or compressed bytes."""
    if not _plain_text(files):
        return [_decoded_sample(files, max_bytes, out, text_field, skip_bad_records)]
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


def _decoded_sample(files: list[Path], max_bytes: int, out: Path, text_field: str,
                    skip_bad_records: bool) -> Path:
    """The documents of `files`, separated by the separator token, up to about max_bytes (0: all); a
    bad record stops with its error unless data.skip_bad_records, as in data preparation."""
    from dist_llm.data.sources import iter_chunks, split_chunk

    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    written = 0
    with open(tmp, "w", encoding="utf-8") as dst:
        for path in files:
            for chunk in iter_chunks(path, 1 << 20, SEPARATOR, text_field):
                bad = [] if skip_bad_records else None
                for _, piece, ends in split_chunk(chunk, SEPARATOR, text_field=text_field, bad=bad):
                    text = piece + (f"\n{SEPARATOR}\n" if ends else "")
                    dst.write(text)
                    written += len(text.encode("utf-8"))
                if 0 < max_bytes <= written:
                    break
            if 0 < max_bytes <= written:
                break
    os.replace(tmp, out)
    return out


def _mixture_sample(groups: list[list[Path]], weights: list[float], max_bytes: int, out_dir: Path,
                    text_field: str = "text", skip_bad_records: bool = False) -> list[Path]:
    """Each source's share (by weight) of a max_bytes BPE training sample; all of it when max_bytes is 0."""
    total = sum(weights)
    return [p for i, (files, w) in enumerate(zip(groups, weights, strict=True))
            for p in _training_sample(files, max(1, int(max_bytes * w / total)) if max_bytes > 0 else 0,
                                      out_dir / f"training_sample_{i}.txt", text_field, skip_bad_records)]


def build_tokenizer(cfg: RunConfig, files: list[Path], groups: list[list[Path]] | None = None) -> Path:
    """Path of the tokenizer json: the configured one, or a cached one trained on `files`; a mixture
    passes its sources' files as `groups` (and all of them as `files`), sampled by weight."""
    if cfg.tokenizer.path:
        path = Path(cfg.tokenizer.path)
        if not path.exists():
            raise ConfigError(f"'tokenizer.path': {path} does not exist")
        return path
    settings = {"inputs": _inputs_key(files), "vocab_size": cfg.model.vocab_size,
                "special_tokens": cfg.tokenizer.special_tokens,
                "train_max_bytes": cfg.tokenizer.train_max_bytes}
    if not _plain_text(files):  # trained on the decoded documents
        settings["sample"] = {"decoded": True, "text_field": cfg.data.text_field}
    weights = [s.weight for s in cfg.data.sources]
    if groups is not None and cfg.tokenizer.train_max_bytes > 0:  # the sample depends on the weights
        settings["sources"] = [[len(g), w] for g, w in zip(groups, weights, strict=True)]
    out_dir = Path(cfg.run.cache_dir) / "tokenizers" / _digest(settings)
    if (out_dir / "dist_llm_tokenizer.json").is_file():
        print(f"tokenizer: reusing {out_dir}")
        return out_dir
    with removed_on_failure(out_dir):
        if groups is None:
            sample = _training_sample(files, cfg.tokenizer.train_max_bytes, out_dir / "training_sample.txt",
                                      cfg.data.text_field, cfg.data.skip_bad_records)
        else:
            sample = _mixture_sample(groups, weights, cfg.tokenizer.train_max_bytes, out_dir,
                                     cfg.data.text_field, cfg.data.skip_bad_records)
        print(f"tokenizer: training a {cfg.model.vocab_size}-token BPE on {', '.join(map(str, sample))}")
        workers = cfg.tokenizer.num_workers or None
        vocab, merges = train_bpe(sample if len(sample) > 1 else sample[0], cfg.model.vocab_size,
                                  cfg.tokenizer.special_tokens, num_workers=workers)
        Tokenizer(vocab, merges, cfg.tokenizer.special_tokens).save(out_dir)  # atomic; its presence = done
    for leftover in out_dir.glob("training_sample*.txt"):
        leftover.unlink(missing_ok=True)
    atomic_write_json(out_dir / "settings.json", settings)
    return out_dir


@contextlib.contextmanager
def removed_on_failure(out_dir: Path) -> Iterator[None]:
    """Create out_dir (and its missing parents) for a cache entry; if the block fails (bad input), remove
    what was created, so a failed run leaves nothing behind. Only directories this call created, and of
    those only empty ones above out_dir: another run may be filling the cache next to it."""
    created = [p for p in (out_dir, *out_dir.parents) if not p.exists()]
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except Exception:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
            for parent in created[1:]:
                with contextlib.suppress(OSError):
                    parent.rmdir()  # fails when not empty: someone else's entry is there
        raise


def build_token_files(cfg: RunConfig, files: list[Path], tokenizer: Tokenizer,
                      val_fraction: float | None = None) -> Path:
    from dist_llm.data.prepare import prepare_corpus

    val_fraction = val_fraction or cfg.data.val_fraction
    key = {"inputs": _inputs_key(files), "tokenizer": tokenizer.fingerprint, "val_fraction": val_fraction}
    out_dir = Path(cfg.run.cache_dir) / "tokens" / _digest(key)
    with removed_on_failure(out_dir):
        prepare_corpus(files, tokenizer, out_dir, workers=cfg.data.num_workers or None,
                       val_fraction=val_fraction, separator=SEPARATOR, text_field=cfg.data.text_field,
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


def source_files(cfg: RunConfig) -> list[list[Path]]:
    """The files of each [[data.sources]] table (files, directories and globs expanded)."""
    from dist_llm.data.sources import DataError, resolve_inputs

    groups = []
    for i, source in enumerate(cfg.data.sources):
        try:
            groups.append(resolve_inputs(source.inputs))
        except DataError as e:
            raise ConfigError(f"'data.sources[{i}].inputs' (source {source.name!r}): {e}") from None
    return groups


def prepare_data(cfg: RunConfig) -> tuple[Tokenizer, Path]:
    """(tokenizer, token-file directory) of the one-source form (data.inputs); see prepare_sources."""
    if cfg.data.sources:
        raise ConfigError("'data.sources' is a mixture: prepare it with "
                          "dist_llm.training.pipeline.prepare_sources")
    tokenizer, dirs = prepare_sources(cfg)
    return tokenizer, dirs[""]


def prepare_sources(cfg: RunConfig) -> tuple[Tokenizer, dict[str, Path]]:
    """(tokenizer, token-file directory of each source by name; "" for the one-source form data.inputs),
    built by rank 0 while the other ranks wait for its paths (or its error: a failure there stops every
    rank with the message, not at a barrier's timeout)."""
    if SEPARATOR not in cfg.tokenizer.special_tokens:
        raise ConfigError(f"'tokenizer.special_tokens' must include the document separator {SEPARATOR!r}, "
                          f"got {cfg.tokenizer.special_tokens}")

    def build() -> dict[str, str]:
        groups = source_files(cfg) if cfg.data.sources else None
        files = [p for g in groups for p in g] if groups else corpus_files(cfg)
        tokenizer_path = build_tokenizer(cfg, files, groups)
        tokenizer = Tokenizer.load(tokenizer_path)
        if tokenizer.vocab_size > cfg.model.vocab_size:  # before the corpus is tokenized, not after
            raise ConfigError(f"'model.vocab_size' ({cfg.model.vocab_size}) is smaller than the tokenizer's "
                              f"vocabulary ({tokenizer.vocab_size} tokens, {tokenizer_path})")
        _pause_if_requested()
        if groups is None:
            data = {"": str(build_token_files(cfg, files, tokenizer))}
        else:
            data = {s.name: str(build_token_files(cfg, g, tokenizer, s.val_fraction))
                    for s, g in zip(cfg.data.sources, groups, strict=True)}
        return {"tokenizer": str(tokenizer_path), "data": data}

    result = distributed.on_main_rank(build)
    return Tokenizer.load(result["tokenizer"]), {name: Path(d) for name, d in result["data"].items()}


def open_splits(cfg: RunConfig, data_dirs: dict[str, Path], fingerprint: str) -> tuple[Any, Any, str]:
    """(train, val, where) for the trainer: the `MemmapTokens` of the one-source form, or for a mixture the
    `MixtureTokens` of its sources; `where` says where the data lies, for the log."""
    from dist_llm.data import DataError, MemmapTokens, MixtureTokens

    ctx_len = cfg.model.context_length
    if set(data_dirs) == {""}:
        return (MemmapTokens(data_dirs[""], "train", ctx_len, fingerprint),
                MemmapTokens(data_dirs[""], "val", ctx_len, fingerprint), str(data_dirs[""]))

    def opened(split: str) -> MixtureTokens:
        sources = {}
        for name, path in data_dirs.items():
            try:
                sources[name] = MemmapTokens(path, split, ctx_len, fingerprint)
            except DataError as e:
                raise DataError(f"data source {name!r}: {e}") from None
        return MixtureTokens(sources, {s.name: s.weight for s in cfg.data.sources}, cfg.data.on_exhausted)

    train = opened("train")
    return train, opened("val"), f"{len(data_dirs)} sources: {train.describe()}"
