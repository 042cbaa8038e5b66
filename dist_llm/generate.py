"""Sample text from a trained model, streamed to the terminal as it is generated.

    python -m dist_llm.generate --run runs/small --prompt "Once upon a time" --max-new-tokens 200
    python -m dist_llm.generate --checkpoint runs/small/checkpoints/step_00002000 --prompt "def " --top-k 50
    python -m dist_llm.generate --run runs/small             # interactive: one prompt per line
    echo "The sea" | python -m dist_llm.generate --run runs/small

Generation stops at <|endoftext|> or after --max-new-tokens. The text goes to stdout, everything else
(which model was loaded, fallbacks) to stderr, so stdout can be piped.
"""

from __future__ import annotations

import argparse
import codecs
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import TextIO

import torch

from dist_llm.checkpoint.pretrained import PretrainedError, load_pretrained
from dist_llm.data import DOCUMENT_SEPARATOR as END_OF_TEXT
from dist_llm.model import TransformerLM, generate_stream
from dist_llm.parallel.distributed import DistributedError, select_device
from dist_llm.tokenizer import Tokenizer


def decode_stream(token_ids: Iterable[int], tokenizer: Tokenizer) -> Iterator[str]:
    """Text pieces for a stream of token ids, each made of complete characters only.

    A multi-byte UTF-8 character can be split across tokens (byte-level BPE knows nothing of characters),
    so decoding token by token would print mojibake. The incremental decoder holds back an incomplete
    sequence until the bytes that complete it arrive; invalid bytes become U+FFFD, as in
    Tokenizer.decode.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token_id in token_ids:
        piece = decoder.decode(tokenizer.vocab[token_id])
        if piece:
            yield piece
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


def end_of_text_id(tokenizer: Tokenizer) -> int | None:
    return tokenizer.token_id(END_OF_TEXT) if END_OF_TEXT in tokenizer.special_tokens else None


def prompt_ids(prompt: str, tokenizer: Tokenizer) -> list[int]:
    """Encoded prompt; an empty prompt starts from <|endoftext|>, i.e. "the start of a new document"."""
    ids = tokenizer.encode(prompt)
    if ids:
        return ids
    eot = end_of_text_id(tokenizer)
    if eot is None:
        raise ValueError(f"the prompt is empty and the tokenizer has no {END_OF_TEXT} token to start from")
    return [eot]


def fit_context(ids: list[int], context_length: int) -> list[int]:
    """The prompt ids the model conditions on: all of them, or the last context_length with a note on
    stderr (generate_stream crops the same way, but with a Python warning, meant for library callers)."""
    if len(ids) <= context_length:
        return ids
    print(f"note: the prompt of {len(ids)} tokens is longer than the model's context of {context_length}; "
          f"generating from its last {context_length} tokens", file=sys.stderr)
    return ids[-context_length:]


def stream_sample(
    model: TransformerLM, tokenizer: Tokenizer, prompt: str, ids: list[int], out: TextIO, *,
    max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None, seed: int | None,
) -> str:  # fmt: skip
    """Write the prompt and then the continuation of its `ids` to `out` as tokens arrive; returns the
    continuation."""
    out.write(prompt)
    out.flush()
    new_ids = generate_stream(
        model, ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        eos_id=end_of_text_id(tokenizer), seed=seed,
    )  # fmt: skip
    pieces = []
    for piece in decode_stream(new_ids, tokenizer):
        pieces.append(piece)
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()
    return "".join(pieces)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dist_llm.generate", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(__doc__.splitlines()[2:]),
    )  # fmt: skip
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--run", help="run directory (final model, else its newest complete checkpoint)")
    where.add_argument("--checkpoint", help="checkpoint directory (RUN/checkpoints/step_N)")
    parser.add_argument("--prompt", help="text to continue (default: interactive on a terminal, else stdin)")
    parser.add_argument("--keep-newline", action="store_true",
                        help="keep the newline that ends piped stdin (dropped by default: `echo` adds it)")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    parser.add_argument("--top-k", type=int, default=None, help="sample only among the k likeliest tokens")
    parser.add_argument("--top-p", type=float, default=None, help="sample from the smallest set with mass p")
    parser.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    parser.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.max_new_tokens < 0:
        parser.error(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if args.temperature < 0:
        parser.error(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        parser.error(f"--top-k must be >= 1, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        parser.error(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.num_samples < 1:
        parser.error(f"--num-samples must be >= 1, got {args.num_samples}")


def _prompts(prompt: str | None, keep_newline: bool = False) -> Iterator[str]:
    """The --prompt; else one prompt per line typed at a terminal; else all of piped stdin as one prompt,
    without the one newline that ends it (`echo "Once upon" | ...` means "Once upon"), unless kept."""
    if prompt is not None:
        yield prompt
    elif sys.stdin.isatty():
        print("Interactive mode: type a prompt and press Enter; Ctrl-D to quit.", file=sys.stderr)
        while True:
            try:
                line = input("> ")
            except (EOFError, KeyboardInterrupt):
                print()
                return
            yield line
    else:
        text = sys.stdin.read()
        if not keep_newline:
            text = text.removesuffix("\r\n") if text.endswith("\r\n") else text.removesuffix("\n")
        yield text


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    out = sys.stdout
    try:
        device = select_device(args.device, option="--device")
        model, tokenizer, source = load_pretrained(run=args.run, checkpoint=args.checkpoint, device=device)
    except (PretrainedError, DistributedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if source.note:
        print(f"note: {source.note}", file=sys.stderr)
    millions = model.num_params() / 1e6
    print(f"loaded {source.model_dir} ({millions:.1f}M parameters) on {device}", file=sys.stderr)

    with torch.inference_mode():
        for prompt in _prompts(args.prompt, args.keep_newline):
            try:
                ids = fit_context(prompt_ids(prompt, tokenizer), model.config.context_length)
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            for i in range(args.num_samples):
                if args.num_samples > 1:
                    out.write(f"--- sample {i + 1}/{args.num_samples} ---\n")
                try:
                    stream_sample(
                        model, tokenizer, prompt, ids, out, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                        seed=None if args.seed is None else args.seed + i,
                    )  # fmt: skip
                except ValueError as e:
                    print(f"error: {e}", file=sys.stderr)
                    return 2
    return 0


if __name__ == "__main__":
    from dist_llm.utils.cli_pipes import exit_code_in_a_pipe

    sys.exit(exit_code_in_a_pipe(main))  # `| head` ends generation quietly
