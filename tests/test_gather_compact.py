"""gather_compact on every backend: many tensors of many dtypes in one call."""
import pytest
import torch

import dvtp_kernels
from backends import backend_params, is_interpreted, require

OP = "gather_compact"


def random_index(B, N, seed, device):
    """A gather index like select_visual_tokens makes: increasing positions, -1 padded."""
    g = torch.Generator().manual_seed(seed)
    rows, lengths = [], []
    for b in range(B):
        keep = torch.rand(N, generator=g) > 0.45
        keep[int(torch.randint(0, N, (1,), generator=g))] = True
        rows.append(torch.nonzero(keep).flatten())
        lengths.append(rows[-1].numel())
    M = max(lengths)
    index = torch.full((B, M), -1, dtype=torch.int64)
    for b, r in enumerate(rows):
        index[b, : r.numel()] = r
    return index.to(device), torch.tensor(lengths, device=device)


def step_tensors(B, N, device, *, small, seed):
    """The tensors a denoising loop compacts, fresh random, several with non-contiguous strides."""
    g = torch.Generator().manual_seed(seed)
    D, H, d = (8, 2, 4) if small else (96, 4, 32)
    return [
        torch.randn(B, N, D, generator=g).to(device),                                # embeddings
        torch.randint(0, 126464, (B, N), generator=g).to(device),                    # token ids
        (torch.rand(B, N, generator=g) > 0.5).to(device),                            # mask bookkeeping
        torch.randint(0, 2**30, (B, N), generator=g, dtype=torch.int32).to(device),  # positions
        torch.randn(B, N, H, d, generator=g).to(torch.bfloat16).to(device).transpose(1, 2),  # K [B, H, N, d] view
        torch.randn(B, H, N, d, generator=g).to(torch.float16).to(device),           # V
        torch.randn(B, D, N, generator=g).to(device)[:, ::2],                         # strided, seq last
    ]


DIMS = [1, 1, 1, 1, 2, 2, -1]


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("B,N", [(1, 1), (1, 7), (3, 129), (2, 1000)])
@pytest.mark.parametrize("pad_value", [0, 1])
def test_matches_direct_indexing(backend, device, B, N, pad_value):
    dev = require(backend, device, OP)
    small = is_interpreted(backend, device)
    if small and N > 129:
        pytest.skip("N=1000 is not run in the Triton interpreter")
    index, new_len = random_index(B, N, seed=N + B, device=dev)
    tensors = step_tensors(B, N, dev, small=small, seed=N)
    outs = dvtp_kernels.gather_compact(tensors, index, new_len, dims=DIMS, pad_value=pad_value, backend=backend)
    assert len(outs) == len(tensors)
    for t, d, out in zip(tensors, DIMS, outs):
        d = d % t.dim()
        expected_shape = list(t.shape)
        expected_shape[d] = index.shape[1]
        assert list(out.shape) == expected_shape and out.dtype == t.dtype and out.is_contiguous()
        for b in range(B):
            n = int(new_len[b])
            got = out[b].movedim(d - 1, 0)
            # round trip: the compacted rows are the original rows at the kept positions
            assert torch.equal(got[:n], t[b].movedim(d - 1, 0).index_select(0, index[b, :n]))
            # pad 0 and pad 1 both run: an unwritten tail fails one of them
            assert (got[n:] == pad_value).all()


@pytest.mark.parametrize("backend,device", backend_params())
def test_float_pad_value(backend, device):
    dev = require(backend, device, OP)
    index, new_len = random_index(3, 20, seed=4, device=dev)
    x = torch.randn(3, 20, 5, device=dev)
    (out,) = dvtp_kernels.gather_compact([x], index, new_len, pad_value=-2.5, backend=backend)
    for b in range(3):
        assert (out[b, int(new_len[b]):] == -2.5).all()


# Pad values at the edges of each dtype's range: every backend stores exactly the value
# (bit-exact; NaN compared as NaN). Once the Triton backend passed the pad through a
# Python float, so an int64 pad of 2**62 + 1 came out as 2**62.
EDGE_PADS = [
    (torch.int64, 2**62 + 1), (torch.int64, -(2**63)), (torch.uint8, 255), (torch.int8, -128),
    (torch.int32, 2**31 - 1), (torch.bool, True), (torch.float16, 65504), (torch.float16, float("inf")),
    (torch.float16, float("nan")), (torch.bfloat16, float("-inf")), (torch.float32, -1e38),
    (torch.float64, 2**1000), (torch.float32, 2**200 * 2**-150), (torch.complex64, -2.5),
]


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype,pad", EDGE_PADS, ids=[f"{d}-{p!r:.12}" for d, p in EDGE_PADS])
def test_pad_value_at_the_dtype_edges(backend, device, dtype, pad):
    dev = require(backend, device, OP)
    index, new_len = random_index(2, 9, seed=5, device=dev)
    g = torch.Generator().manual_seed(9)
    x = (torch.randn(2, 9, 3, generator=g) * 10).to(dtype).to(dev)
    (out,) = dvtp_kernels.gather_compact([x], index, new_len, pad_value=pad, backend=backend)
    # (a Python int beyond 64 bits fills a float dtype as the nearest float)
    expected = torch.full((3,), float(pad) if isinstance(pad, int) and abs(pad) >= 2**64 else pad, dtype=dtype)
    for b in range(2):
        n = int(new_len[b])
        assert torch.equal(out[b, :n].cpu(), x[b, index[b, :n]].cpu())
        tail = out[b, n:].cpu()
        assert tail.numel() > 0 or n == index.shape[1]
        torch.testing.assert_close(tail, expected.expand_as(tail), rtol=0, atol=0, equal_nan=True)
