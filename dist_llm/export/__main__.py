"""CLI: `python -m dist_llm.export hf ...` (ours -> HF Llama) and `... import-hf ...` (HF Llama -> ours).

    python -m dist_llm.export hf --run runs/small --out hf/small
    python -m dist_llm.export hf --checkpoint runs/small/checkpoints/step_00002000 --out hf/small-2k
    python -m dist_llm.export import-hf --model path/to/hf_llama --out runs/imported
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dist_llm.checkpoint.pretrained import PretrainedError
from dist_llm.export.convert import export_hf_from, import_hf
from dist_llm.export.hf_llama import UnsupportedModelError
from dist_llm.export.hf_tokenizer import TokenizerNotConvertible


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dist_llm.export", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(__doc__.splitlines()[2:]),
    )  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)
    to_hf = commands.add_parser("hf", help="write a run or checkpoint as a transformers LlamaForCausalLM dir")
    where = to_hf.add_mutually_exclusive_group(required=True)
    where.add_argument("--run", help="run directory (final model, else its newest complete checkpoint)")
    where.add_argument("--checkpoint", help="checkpoint directory (RUN/checkpoints/step_N)")
    to_hf.add_argument("--out", required=True, help="new (or empty) output directory")
    from_hf = commands.add_parser("import-hf", help="load an HF Llama dir (safetensors) into a run directory")
    from_hf.add_argument("--model", required=True, help="HF model directory with config.json + safetensors")
    from_hf.add_argument("--out", required=True, help="new (or empty) run directory to write")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "hf":
            messages = export_hf_from(run=args.run, checkpoint=args.checkpoint, out_dir=args.out)
        else:
            messages = import_hf(args.model, args.out)
    except (PretrainedError, UnsupportedModelError, TokenizerNotConvertible, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for message in messages:
        print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
