"""Fake (meta) kernels of the dvtp ops (extension and Triton ones share them), so they trace
under torch.compile and pass opcheck: output shapes follow from the arguments alone."""
from __future__ import annotations

import functools

import torch


def accumulate_fake(q, k, scores, query_start, key_start, key_len, scale, lse, key_valid):
    return None


def select_fake(scores, row_mask, seq_len, key_start, key_len, keep_count, max_new_len, max_keep):
    B = scores.shape[0]
    return (
        scores.new_empty((B, max_new_len), dtype=torch.int64),
        scores.new_empty((B, max_keep), dtype=torch.int64),
        scores.new_empty((B,), dtype=torch.bool),  # nan_item
    )


def gather_fake(tensors, gather_index, dims, pad_value):
    M = gather_index.shape[1]
    outs = []
    for t, d in zip(tensors, dims):
        shape = list(t.shape)
        shape[d] = M
        outs.append(t.new_empty(shape))
    return outs


@functools.lru_cache(maxsize=None)
def register_extension_fakes() -> None:
    for name, fn in (
        ("accumulate_visual_scores", accumulate_fake),
        ("select_visual_tokens", select_fake),
        ("gather_compact", gather_fake),
    ):
        torch.library.register_fake(f"dvtp::{name}", fn)
