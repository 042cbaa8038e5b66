"""The incremental BPE merge loop: learn merges from pre-token counts.

Data layout (all integers, so the hot loop does no bytes concatenation or tuple hashing):
- token ids: 0..255 are the single bytes, 256 + k is the token made by merge k;
- `words[w]`: a distinct pre-token as a list of token ids, merged in place; `counts[w]` its count;
- `pair_counts[key]`, key = (left << shift) | right: how often the pair occurs in the corpus;
- `where[key]`: indices of the words that contain (or once contained) the pair, appended as pairs
  appear; stale or repeated entries are harmless, a visit to a word without the pair changes nothing;
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

from .progress import progress_bar

# Tie-break: among equal counts the lexicographically greatest (left bytes, right bytes) wins, but
# heapq pops the smallest entry and bytes cannot be negated. So each token gets a string key that
# sorts in exactly the reverse order of its bytes: byte c becomes chr(256 - c) (higher bytes sort
# first), and a terminator chr(257) sorts after every such code point, so a proper prefix (the
# smaller byte string) gets the larger key.
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
    where: dict[int, list[int]] = defaultdict(list)
    for wi, word in enumerate(words):
        c = counts[wi]
        for key in [left << shift | right for left, right in zip(word, word[1:], strict=False)]:
            pair_counts[key] += c
            where[key].append(wi)
    pair_counts = dict(pair_counts)
    heap = [(-c, tie_key[k >> shift], tie_key[k & mask], k) for k, c in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[bytes, bytes]] = []
    heappop, heappush = heapq.heappop, heapq.heappush
    bar = progress_bar(progress, total=num_merges, desc="merge", unit="merge")
    while len(merges) < num_merges and heap:
        neg_count, left_key, right_key, key = heappop(heap)
        count = pair_counts.get(key, 0)
        if count != -neg_count:
            if count > 0:  # stale: the pair lost occurrences since this entry was pushed
                heappush(heap, (-count, left_key, right_key, key))
            continue
        a, b = key >> shift, key & mask
        new = len(token_bytes)
        merges.append((token_bytes[a], token_bytes[b]))
        token_bytes.append(token_bytes[a] + token_bytes[b])
        tie_key.append(reverse_order_key(token_bytes[new]))
        new_pairs = _merge_in_words(a, b, new, words, counts, where.pop(key), pair_counts, shift)
        del pair_counts[key]  # no occurrence is left after a left-to-right merge of every match
        for k, word_ids in new_pairs.items():
            # One entry per occurrence, so a word with the pair twice counts twice.
            c = pair_counts[k] = sum(map(counts.__getitem__, word_ids))
            where[k] = word_ids  # a pair with the new token is itself new
            heappush(heap, (-c, tie_key[k >> shift], tie_key[k & mask], k))
        if len(merges) % 256 == 0:
            bar.update(256)
    bar.update(len(merges) - bar.n)
    bar.close()
    return merges


def _merge_in_words(a, b, new, words, counts, word_ids, pair_counts, shift) -> dict[int, list[int]]:
    """Merges every (a, b) in the given words in place; returns the new pairs and their words.

    For a match at i (the word already merged up to i), removed pairs are (a, b) itself (its count
    is dropped by the caller), (word[i-1], a) and (b, word[i+2]); added are (word[i-1], new) and
    (new, word[i+2]). Two adjacent matches "a b a b" share the pair (b, a): it is removed once, as
    the first match's right neighbour, and (new, new) is added once, by the second match (the
    first one sees that its right neighbour is about to be merged too). New pairs are recorded as
    a list of word indices, one per occurrence; the caller sums their counts.
    """
    new_pairs: dict[int, list[int]] = defaultdict(list)
    new_left = new << shift
    b_left = b << shift
    same = a == b
    for wi in word_ids:
        word = words[wi]
        todo = word.count(a)  # each a is looked at once (or consumed as b when a == b)
        if not todo:
            continue
        n = len(word)
        if n == 2:  # the common short case: no neighbours, no pair statistics to change
            if word[1] == b and word[0] == a:
                word.pop()
                word[0] = new
            continue
        c = counts[wi]
        i = 0
        while todo:
            i = word.index(a, i)
            todo -= 1
            if i + 1 == n or word[i + 1] != b:
                i += 1
                continue
            if same:
                todo -= 1
            word[i] = new
            del word[i + 1]
            n -= 1
            if i:
                left = word[i - 1]
                if left != new:
                    pair_counts[left << shift | a] -= c
                    new_pairs[left << shift | new].append(wi)
                else:
                    new_pairs[new_left | new].append(wi)
            i += 1
            if i < n:
                right = word[i]
                pair_counts[b_left | right] -= c
                if right != a or i + 1 == n or word[i + 1] != b:
                    new_pairs[new_left | right].append(wi)
    return new_pairs
