"""The incremental BPE merge loop: learn merges from pre-token counts.

Data layout (all integers, so the hot loop does no bytes concatenation or tuple hashing):
- token ids: 0..255 are the single bytes, 256 + k is the token made by merge k;
- `words[w]`: a distinct pre-token as a list of token ids, merged in place; `counts[w]` its count;
- `pair_counts[key]`, key = (left << shift) | right: how often the pair occurs in the corpus;
- `where[key]`: indices of the words that contain (or once contained) the pair;
- `heap`: a max-heap of (-count, tie_key(left), tie_key(right), key) with lazy invalidation.

Each merge touches only the words in `where[pair]`. A pair's count can only grow in the merge that
creates its newer token (that is when it is pushed), and only shrink afterwards, so every heap
entry is >= the pair's true count: a popped entry whose count is stale is re-pushed with the true
count, and the first entry that is up to date is the true maximum.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Mapping

# Tie-break: among equal counts the lexicographically greatest (left bytes, right bytes) wins, but
# heapq pops the smallest entry and bytes cannot be negated. So each token gets a string key that
# sorts in exactly the reverse order of its bytes: byte c becomes chr(256 - c) (higher bytes sort
# first), and a terminator chr(257) sorts after every such code point, so a byte string sorts after
# (i.e. below, in bytes order) every longer string it is a prefix of.
_REVERSE_BYTE = {c: chr(256 - c) for c in range(256)}
_TERMINATOR = chr(257)


def reverse_order_key(token: bytes) -> str:
    """A string key with key(a) < key(b) exactly when a > b as byte strings."""
    return token.decode("latin-1").translate(_REVERSE_BYTE) + _TERMINATOR


def learn_merges(
    word_counts: Mapping[bytes, int], num_merges: int, *, progress: bool = False
) -> list[tuple[bytes, bytes]]:
    """Learns up to `num_merges` merges from pre-token counts (fewer if the pairs run out)."""
    token_bytes = [bytes([c]) for c in range(256)]
    tie_key = [reverse_order_key(t) for t in token_bytes]
    shift = (256 + num_merges).bit_length()
    mask = (1 << shift) - 1

    # Pre-tokens of one byte never take part in a merge, so they are dropped up front.
    words = [list(w) for w in word_counts if len(w) > 1]
    counts = [c for w, c in word_counts.items() if len(w) > 1]
    pair_counts: dict[int, int] = defaultdict(int)
    where: dict[int, set[int]] = defaultdict(set)
    for wi, word in enumerate(words):
        c = counts[wi]
        for left, right in zip(word, word[1:], strict=False):
            key = left << shift | right
            pair_counts[key] += c
            where[key].add(wi)
    pair_counts = dict(pair_counts)
    heap = [(-c, tie_key[k >> shift], tie_key[k & mask], k) for k, c in pair_counts.items()]
    heapq.heapify(heap)

    from tqdm import tqdm

    merges: list[tuple[bytes, bytes]] = []
    bar = tqdm(total=num_merges, desc="merge", unit="merge", disable=not progress)
    while len(merges) < num_merges and heap:
        neg_count, left_key, right_key, key = heapq.heappop(heap)
        count = pair_counts.get(key, 0)
        if count != -neg_count:
            if count > 0:  # stale: the pair lost occurrences since this entry was pushed
                heapq.heappush(heap, (-count, left_key, right_key, key))
            continue
        a, b = key >> shift, key & mask
        new = len(token_bytes)
        merges.append((token_bytes[a], token_bytes[b]))
        token_bytes.append(token_bytes[a] + token_bytes[b])
        tie_key.append(reverse_order_key(token_bytes[new]))
        _apply_merge(a, b, new, words, counts, where.pop(key), pair_counts, where, heap, tie_key, shift)
        del pair_counts[key]  # no occurrence is left after a left-to-right merge of every match
        if len(merges) % 256 == 0:
            bar.update(256)
    bar.update(len(merges) - bar.n)
    bar.close()
    return merges


def _apply_merge(a, b, new, words, counts, word_ids, pair_counts, where, heap, tie_key, shift) -> None:
    """Merges every (a, b) in the given words in place and updates the pair statistics.

    Removed pairs: for each match at i, (a, b) itself, (word[i-1], a) unless word[i-1] is the token
    just made by the previous, adjacent match (that pair (b, a) was already counted as the right
    neighbour of that match), and (b, word[i+2]). Added pairs are read off the merged word around
    each new token, (new, new) counted once. Counts of (a, b) itself go stale: it is deleted after.
    """
    new_pairs: dict[int, int] = {}
    new_left = new << shift
    for wi in word_ids:
        word = words[wi]
        n = len(word)
        c = counts[wi]
        i = 0
        made = []
        while True:
            try:
                i = word.index(a, i, n - 1)
            except ValueError:
                break
            if word[i + 1] != b:
                i += 1
                continue
            if i:
                left = word[i - 1]
                if left != new:
                    pair_counts[left << shift | a] -= c
            if i + 2 < n:
                pair_counts[b << shift | word[i + 2]] -= c
            word[i] = new
            del word[i + 1]
            n -= 1
            made.append(i)
            i += 1
        for i in made:
            if i:
                key = word[i - 1] << shift | new
                new_pairs[key] = new_pairs.get(key, 0) + c
                where[key].add(wi)
            if i + 1 < n and word[i + 1] != new:
                key = new_left | word[i + 1]
                new_pairs[key] = new_pairs.get(key, 0) + c
                where[key].add(wi)
    mask = (1 << shift) - 1
    for key, c in new_pairs.items():
        pair_counts[key] = c
        heapq.heappush(heap, (-c, tie_key[key >> shift], tie_key[key & mask], key))
