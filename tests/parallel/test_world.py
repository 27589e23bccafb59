"""Spans of whole blocks and their owners (no processes needed)."""

import torch

from metaif.parallel import World


def test_spans_are_whole_blocks_that_cover_every_item_once_and_owners_agree():
    for size in (1, 2, 3, 4):
        for n in (0, 4, 7, 10, 33):
            for block in (1, 3, 8):
                spans = [World(rank, size).span(n, block=block) for rank in range(size)]
                assert spans[0][0] == 0 and spans[-1][1] == n
                assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
                assert all(start % block == 0 for start, end in spans if end > start)
                blocks = [-(-(end - start) // block) for start, end in spans]
                assert max(blocks) - min(blocks) <= 1
                owner = World(0, size).owner(torch.arange(n), n, block)
                assert all(spans[int(r)][0] <= i < spans[int(r)][1] for i, r in enumerate(owner))
