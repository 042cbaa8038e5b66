"""Which document each token of a packed window belongs to, for attention within documents.

Prepared token files hold `doc0 <sep> doc1 <sep> ...` (see prepare.py), and a training window cuts that
stream anywhere. document_ids numbers the documents of each window from 0: the separator ends a document
and belongs to it (torchtitan and Llama 3 count it so), and the token after it starts the next one.

So the separator, as an input, still sees the document it closes, and a document's last token learns to
predict the separator from its own document alone. The next document's first token is the target of the
separator's position, predicted from the closed document; generation, which starts a new document from
a prompt of its own, never depends on that prediction.

The model takes these ids as `TransformerLM.forward(x, doc_ids=...)` and knows nothing of token ids.
"""

from __future__ import annotations

import torch


def document_ids(x: torch.Tensor, separator_id: int) -> torch.Tensor:
    """(..., T) token ids -> (..., T) int64 document numbers within each window, counted from 0.

    The number of separators strictly before each position: [a, b, SEP, c, SEP, d] -> [0, 0, 0, 1, 1, 2].
    Runs on x's device, without a host sync.
    """
    if x.is_floating_point() or x.is_complex():
        raise TypeError(f"document_ids needs integer token ids, got dtype {x.dtype}")
    is_separator = (x == separator_id).long()
    return is_separator.cumsum(dim=-1) - is_separator


def separator_id(meta: dict) -> int:
    """The separator token id that a prepared data directory's meta.json records."""
    if "separator_id" not in meta:
        raise ValueError("meta.json has no 'separator_id': prepare the data again to use model.doc_masking")
    return int(meta["separator_id"])
