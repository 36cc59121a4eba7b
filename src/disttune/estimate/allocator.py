"""What torch's CUDA caching allocator reserves beyond the live tensors: ``torch.cuda.max_memory_reserved``.

How the allocator works (c10/cuda/CUDACachingAllocator.cpp), and what follows for a training step:

- Every request is rounded up to 512 bytes and served from one cached free block of its stream's pool, the
  smallest that fits, split when the rest is over 1 MiB; a request never spans two blocks. Freed blocks
  stay cached; they go back to the driver only when a ``cudaMalloc`` fails (or ``empty_cache``).
- **Fixed segments** (``expandable_segments:False``, torch's default): a request no cached block can hold
  gets a new segment of its own size (rounded to 2 MiB; 20 MiB for 1-10 MiB requests). Segments never
  merge, so a block cut for one size can only serve smaller requests later.
- **Expandable segments** (``expandable_segments:True``, disttune's default on CUDA, as torchtitan's
  launcher sets it): one segment per stream and pool, grown by mapping more pages at its end; freed
  neighbours merge across what would have been segment boundaries, so a larger request reuses the memory
  of several smaller freed ones.
- Each CUDA stream has its own pool: blocks allocated on a side stream serve only that stream.

The terms (``reserve`` in the estimate; each is zero where its cause is absent):

    stream_pools      FSDP2 allocates the sharded gradients in its reduce-scatter stream
                      (torch/distributed/fsdp/_fully_shard/_fsdp_collectives.py: "the GPU sharded gradient is
                      allocated in the RS stream"), with that layer's reduce-scatter buffers. zero_grad frees
                      them into that stream's pool, where the compute stream's activations cannot use them:
                      at the start of backward they are reserved and idle. Both allocators.
    phase_segments    fixed only: a step buffer larger than every block backward freed (ZeRO's flat fp32
                      gradient) takes its own segment, so the smaller phase stays reserved beside the larger.
    stranded_blocks   fixed only, token count varying between steps (per-batch padding, packed rows filled
                      unevenly): the blocks cut for an earlier step with fewer tokens are each a little too
                      small for the same tensor later. Best fit cuts the smaller tensors out of the larger old
                      blocks; what fits nowhere takes new segments while the old blocks stay cached
                      (``stranded_bytes``). The phase segments, free during the forward, take it first.
    logits_forward_block  fixed only, the full loss: the 16-bit logits, freed after the fp32 upcast; every
                      later request of the loss is a 4-byte one, larger, so the block stays cached.
"""

from __future__ import annotations

ALLOCATORS = ("expandable", "fixed")
MIB = 2**20
SEGMENT_ROUND = 2 * MIB  # a large segment is cudaMalloc'ed in multiples of 2 MiB
SPLIT_MIN = MIB  # a large block is split only when more than 1 MiB would remain


def stranded_bytes(blocks: tuple[tuple[int, int], ...]) -> int:
    """Bytes of new segments a step needs when every saved tensor's cached block, cut for an earlier step with
    a few percent fewer tokens, is one 2 MiB rounding step too small for it (fixed segments only).

    ``blocks``: ``(bytes, count)`` of the tensors the step keeps at its peak. The allocator's rule, largest
    request first: the smallest cached block that holds it, split when over 1 MiB remains; a request no block
    holds is a new segment. The old blocks stay reserved either way, so the new segments are reserve. Blocks of
    one size are alike, so they are handled by the count.
    """
    free: dict[int, int] = {}  # cached block size -> how many
    for size, count in blocks:
        old = -(-size // SEGMENT_ROUND) * SEGMENT_ROUND - SEGMENT_ROUND
        if old > SPLIT_MIN:
            free[old] = free.get(old, 0) + count
    new = 0
    for size, count in sorted(blocks, reverse=True):
        if size <= SPLIT_MIN:  # the small pool's 2 MiB segments: not modelled
            break
        while count:
            fits = [b for b in free if b >= size and free[b]]
            if not fits:
                new += size * count
                break
            best = min(fits)
            taken = min(count, free[best])
            free[best] -= taken
            count -= taken
            if best - size > SPLIT_MIN:
                free[best - size] = free.get(best - size, 0) + taken
    return new


def reserve(
    allocator: str,
    phases: dict[str, int],
    idle: dict[str, int],
    phase_segments: int = 0,
    stranded: int = 0,
    logits_block: int = 0,
) -> dict[str, int]:
    """Reserved minus allocated at the peak, by term (see the module docstring).

    ``phases``: allocated bytes per phase; ``idle``: cached, unusable bytes of side-stream pools per phase.
    """
    allocated = max(phases.values())
    with_pools = max(phases[p] + idle.get(p, 0) for p in phases)
    out = {"stream_pools": with_pools - allocated}
    if allocator == "fixed":
        if stranded > phase_segments:
            out["stranded_blocks"] = stranded
        else:
            out["phase_segments"] = phase_segments
        out["logits_forward_block"] = logits_block
    return {k: v for k, v in out.items() if v}
