"""Command line: train a tokenizer on files, or encode/decode stdin with a saved one.

    python -m dist_llm.tokenizer train --input corpus.txt --vocab-size 10000 \\
        --special-token '<|endoftext|>' --out runs/tokenizer [--workers N]
    echo "Hello world" | python -m dist_llm.tokenizer encode --tokenizer runs/tokenizer
    echo "15496 995" | python -m dist_llm.tokenizer decode --tokenizer runs/tokenizer
"""

from __future__ import annotations

import argparse
import codecs
import sys
import time
from collections.abc import Iterator
from typing import BinaryIO

from .errors import TokenizerError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dist_llm.tokenizer", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a byte-level BPE tokenizer and save it")
    train.add_argument("--input", nargs="+", required=True, metavar="FILE", help="UTF-8 text file(s)")
    train.add_argument("--vocab-size", type=int, required=True)
    train.add_argument(
        "--special-token", action="append", default=[], metavar="TOKEN", help="repeatable: '<|endoftext|>'"
    )
    train.add_argument("--out", required=True, metavar="DIR", help="writes DIR/dist_llm_tokenizer.json")
    train.add_argument("--workers", type=int, default=None, help="counting processes (default: auto)")
    train.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="tqdm bars")
    for name, what in (("encode", "UTF-8 text on stdin -> ids"), ("decode", "ids on stdin -> text")):
        p = sub.add_parser(name, help=what)
        p.add_argument("--tokenizer", required=True, metavar="DIR", help="saved tokenizer (dir or json)")
    return parser


def _utf8_chunks(stream: BinaryIO, chunk_size: int = 1 << 16) -> Iterator[str]:
    """Decodes a byte stream incrementally, naming the byte offset of invalid UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    while True:
        data = stream.read(chunk_size)
        try:
            text = decoder.decode(data, final=not data)
        except UnicodeDecodeError as e:
            where = offset + e.start
            raise TokenizerError(f"stdin is not valid UTF-8 at byte offset {where}: {e.reason}") from None
        offset += len(data)
        if text:
            yield text
        if not data:
            return


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            from .tokenizer import Tokenizer
            from .train import train_bpe

            start = time.perf_counter()
            vocab, merges = train_bpe(
                args.input,
                args.vocab_size,
                args.special_token,
                num_workers=args.workers,
                progress=args.progress,
            )
            path = Tokenizer(vocab, merges, args.special_token).save(args.out)
            elapsed = time.perf_counter() - start
            print(f"trained {len(vocab)} tokens ({len(merges)} merges) in {elapsed:.2f}s -> {path}")
            if len(vocab) < args.vocab_size:
                print(f"note: the corpus ran out of pairs to merge before --vocab-size {args.vocab_size}")
        elif args.command == "encode":
            from .tokenizer import Tokenizer

            tok = Tokenizer.load(args.tokenizer)
            ids = tok.encode_iterable(_utf8_chunks(sys.stdin.buffer))
            sys.stdout.write(" ".join(map(str, ids)) + "\n")
        else:
            from .tokenizer import Tokenizer

            tok = Tokenizer.load(args.tokenizer)
            raw = sys.stdin.read().split()
            try:
                ids = [int(x) for x in raw]
            except ValueError as e:
                raise TokenizerError(f"decode expects whitespace-separated integer ids: {e}") from None
            sys.stdout.write(tok.decode(ids))
    except TokenizerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
