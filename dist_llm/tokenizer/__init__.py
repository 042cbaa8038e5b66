"""Byte-level BPE tokenizer: training (`train_bpe`), encoding/decoding (`Tokenizer`), JSON files.

from dist_llm.tokenizer import Tokenizer, train_bpe
vocab, merges = train_bpe("corpus.txt", 10_000, ["<|endoftext|>"])
tok = Tokenizer(vocab, merges, ["<|endoftext|>"])
tok.save("runs/tokenizer")            # runs/tokenizer/dist_llm_tokenizer.json
ids = Tokenizer.load("runs/tokenizer").encode("Hello<|endoftext|>")
"""

from .errors import TokenizerError
from .tokenizer import Tokenizer
from .train import train_bpe

__all__ = ["Tokenizer", "TokenizerError", "train_bpe"]
