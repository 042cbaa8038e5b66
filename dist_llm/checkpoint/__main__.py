"""`python -m dist_llm.checkpoint consolidate CHECKPOINT --out DIR`: a checkpoint (sharded or full) as a
plain model directory (model.safetensors, config.json and, when the run's is found, tokenizer/), the
layout generate, evaluate and export read. Run it on one machine, without torchrun: the shards are read
whole, one process."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dist_llm.checkpoint.store import CheckpointError, read_checkpoint


def consolidate(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the checkpoint's whole weights (float32) and config into `out`; returns `out`."""
    from dist_llm.checkpoint.pretrained import save_pretrained
    from dist_llm.model import ModelConfig
    from dist_llm.tokenizer import Tokenizer

    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"--out {out}: exists and is not a directory")
    loaded = read_checkpoint(checkpoint)  # verifies every file against the manifest first
    run_tokenizer = checkpoint.parent.parent / "tokenizer"  # RUN/checkpoints/step_N -> RUN/tokenizer
    tokenizer = Tokenizer.load(run_tokenizer) if run_tokenizer.is_dir() else None
    config = dict(loaded.config)
    model_cfg = ModelConfig.from_dict(config.pop("model"))
    return save_pretrained(out, loaded.model_state, model_cfg, tokenizer, extra_config=config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dist_llm.checkpoint",
                                     description="Tools for dist_llm checkpoints.")
    commands = parser.add_subparsers(dest="command", required=True)
    cons = commands.add_parser("consolidate",
                               help="a (sharded) checkpoint -> model.safetensors + config.json")
    cons.add_argument("checkpoint", help="a checkpoint directory, e.g. RUN/checkpoints/step_00001000")
    cons.add_argument("--out", required=True, help="directory to write the model into")
    args = parser.parse_args(argv)
    try:
        out = consolidate(args.checkpoint, args.out)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"consolidated {args.checkpoint} -> {out / 'model.safetensors'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
