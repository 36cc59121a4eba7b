"""Replay one training step's allocations through a model of torch's CUDA caching allocator.

    python benchmarks/allocator_replay.py             # the H200 grid's DDP cell: its own token counts, and others

The numbers behind docs/memory.md's *The caching allocator*: the 1.1B Llama of benchmarks/gpu_1b.py under DDP
(fp32 weights, bf16 autocast, SDPA with the packed rows' mask, TRL's chunked loss, fused AdamW with its states
created at the first step), as the ordered allocations and frees of each step (every tensor of 1 MiB or more),
replayed through the allocator's rules (c10/cuda/CUDACachingAllocator.cpp): requests rounded to 512 bytes,
best fit among the cached blocks of the pool, a block split when more than 1 MiB remains, never a request across
two blocks; fixed segments of the request's size rounded to 2 MiB (20 MiB under 10 MiB), or one expandable
segment grown by 20 MiB pages. It is a research tool, not part of the estimate (too slow for it: the estimate
uses the closed forms of disttune/estimate/allocator.py, which this replay checks).
"""

from __future__ import annotations

import argparse
import bisect
import random

MIB, GIB = 2**20, 2**30
# input_ids per step of the H200 grid's s2048-b4 cells: TRL 1.16's padding-free collator over the built-in
# data set (packing, max_length 2048, batch 4, the Trainer's seed 42), read from its train dataloader
GRID_TOKENS = [7579, 8180, 8179, 8161, 7790, 8192, 8150, 8168, 8175, 8188, 8147, 8150, 7704, 8156, 8157, 7892]
SHAPE = dict(h=2048, i=8192, layers=16, q=2048, kv=512, vocab=32000)


class Allocator:
    """One stream's large pool: cached free blocks by (size, address); segments fixed or one expandable."""

    def __init__(self, expandable: bool):
        self.expandable, self.free, self.blocks = expandable, [], {}  # addr -> [size, free, segment]
        self.allocated = self.reserved = self.peak_allocated = self.peak_reserved = 0
        self.next_address, self.end = 0, 0  # expandable: the mapped end of the one segment

    def malloc(self, nbytes: int) -> int:
        size = max(512, -(-nbytes // 512) * 512)
        at = bisect.bisect_left(self.free, (size, -1))
        block_size, addr = self.free.pop(at) if at < len(self.free) else self._grow(size)
        block = self.blocks[addr]
        if block_size - size > MIB:  # split: the rest stays a free block of the same segment
            self.blocks[addr + size] = [block_size - size, True, block[2]]
            bisect.insort(self.free, (block_size - size, addr + size))
            block[0] = size
        block[1] = False
        self.allocated += block[0]
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        return addr

    def _grow(self, size: int) -> tuple[int, int]:
        if not self.expandable:
            seg = 20 * MIB if size < 10 * MIB else -(-size // (2 * MIB)) * 2 * MIB
            addr, self.next_address = self.next_address, self.next_address + seg + 2**40  # never adjacent
            self.blocks[addr] = [seg, True, addr]
            self._reserve(seg)
            return seg, addr
        tail = next(((s, a) for s, a in self.free if a + s == self.end), None)  # a free block at the end
        have = tail[0] if tail else 0
        grow = -(-(size - have) // (20 * MIB)) * 20 * MIB
        self._reserve(grow)
        if tail:
            self.free.remove(tail)
            self.blocks[tail[1]][0] += grow
            self.end += grow
            return tail[0] + grow, tail[1]
        addr, self.end = self.end, self.end + grow
        self.blocks[addr] = [grow, True, 0]
        return grow, addr

    def _reserve(self, nbytes: int) -> None:
        self.reserved += nbytes
        self.peak_reserved = max(self.peak_reserved, self.reserved)

    def release(self, addr: int) -> None:
        block = self.blocks[addr]
        block[1] = True
        self.allocated -= block[0]
        after = self.blocks.get(addr + block[0])
        if after is not None and after[1] and after[2] == block[2]:  # merge with the next free block
            self.free.remove((after[0], addr + block[0]))
            del self.blocks[addr + block[0]]
            block[0] += after[0]
        before = next(((s, a) for s, a in self.free if a + s == addr and self.blocks[a][2] == block[2]), None)
        if before is not None:  # and with the previous one
            self.free.remove(before)
            self.blocks[before[1]][0] += block[0]
            del self.blocks[addr]
            addr, block = before[1], self.blocks[before[1]]
        bisect.insort(self.free, (block[0], addr))


def _layer_forward(ev, layer: int, T: int, s: dict) -> None:
    """One decoder layer's forward under autocast: what it saves (named per layer) and its transients."""
    h, i, q, kv = s["h"], s["i"], s["q"], s["kv"]
    A = lambda name, n: ev.append(("A", f"{name}@{layer}", n))  # noqa: E731
    F = lambda name: ev.append(("F", f"{name}@{layer}"))  # noqa: E731
    A("pow", 4 * T * h), F("pow"), A("normed1", 4 * T * h), A("y", 4 * T * h)
    for name, out in (("q", q), ("k", kv), ("v", kv)):
        A(f"w16_{name}", 2 * h * out), A(f"in_{name}", 2 * T * h), A(name, 2 * T * out)
    F("y")
    A("rope", 4 * T * q), A("q_embed", 4 * T * q), F("rope"), F("q")
    A("rope", 4 * T * kv), A("k_embed", 4 * T * kv), F("rope"), F("k")
    A("k_rep32", 4 * T * q), F("k_embed"), A("v_rep", 2 * T * q), F("v")
    A("q16", 2 * T * q), A("k16", 2 * T * q), A("bias", 2 * T * T), A("out", 2 * T * q)
    F("q_embed"), F("k_rep32")
    A("w16_o", 2 * q * h), A("o", 2 * T * h), A("mid", 4 * T * h), F("o")
    A("pow", 4 * T * h), F("pow"), A("normed2", 4 * T * h), A("y", 4 * T * h)
    for name in ("gate", "up"):
        A(f"w16_{name}", 2 * h * i), A(f"in_{name}", 2 * T * h), A(name, 2 * T * i)
    F("y")
    A("act", 2 * T * i), A("product", 2 * T * i), A("w16_down", 2 * i * h), A("down", 2 * T * h)
    ev.append(("A", f"x@{layer + 1}", 4 * T * h)), F("down")


def _layer_backward(ev, layer: int, T: int, s: dict) -> None:
    """Its backward: the saved tensors freed as their nodes run, the fp32 weight gradients allocated."""
    h, i, q = s["h"], s["i"], s["q"]
    A = lambda name, n: ev.append(("A", f"{name}@{layer}", n))  # noqa: E731
    F = lambda name: ev.append(("F", f"{name}@{layer}"))  # noqa: E731
    for names, width, saved in (
        (("down",), i, ("product",)),
        (("up", "gate"), h, ("act", "up", "gate", "in_up", "in_gate", "normed2", "mid")),
        (("o",), q, ("out", "q16", "k16", "v_rep", "bias")),
        (("q", "k", "v"), h, ("in_q", "in_k", "in_v", "normed1")),
    ):
        A("g_in", 2 * T * width)
        for name in names:
            out = i if name in ("gate", "up", "down") else s["kv"] if name in ("k", "v") else q
            A(f"g16_{name}", 2 * h * out)  # the weight's bf16 gradient, then its fp32 .grad
            ev.append(("A", f"grad_{name}@{layer}", 4 * h * out))
            F(f"g16_{name}"), F(f"w16_{name}")
        for name in saved:
            F(name)
        A("g_res", 4 * T * h), F("g_in"), F("g_res")
    ev.append(("F", f"x@{layer}"))


def step_events(T: int, s: dict = SHAPE, first: bool = False) -> list:
    """One training step of the DDP cell: forward, TRL's chunked loss, backward, AdamW, zero_grad."""
    ev, L, h, V = [("A", "x@0", 4 * T * s["h"])], s["layers"], s["h"], s["vocab"]
    ev.append(("A", "mask", T * T))
    for layer in range(L):
        _layer_forward(ev, layer, T, s)
    ev += [("A", "final", 4 * T * h), ("A", "hidden", 4 * T * h), ("F", "mask")]
    ev += [
        ("A", "tile", 2 * min(T, 4096) * 32768),
        ("A", "w_tile", 2 * V * h),
        ("F", "w_tile"),
        ("F", "tile"),
    ]
    ev += [
        ("A", "g_hidden", 4 * T * h),
        ("A", "grad_lm_head", 4 * V * h),
        ("A", "tile", 2 * min(T, 4096) * 32768),
    ]
    ev += [("A", "w_tile", 2 * V * h), ("F", "w_tile"), ("F", "tile"), ("F", "hidden"), ("F", "final")]
    ev += [("A", "g_x", 4 * T * h), ("F", "g_hidden"), ("F", f"x@{L}")]
    for layer in reversed(range(L)):
        _layer_backward(ev, layer, T, s)
    ev += [("A", "grad_embed", 4 * V * h), ("F", "g_x")]
    grads = [e[1] for e in ev if e[0] == "A" and e[1].startswith("grad_")]
    if first:  # AdamW creates exp_avg and exp_avg_sq at its first step, as large as each fp32 weight
        ev += [
            ("A", f"{m}_{g}", n) for g, n in ((e[1], e[2]) for e in ev if e[1] in grads) for m in ("m", "v")
        ]
    return ev + [("F", g) for g in grads]


def replay(tokens: list[int], expandable: bool, s: dict = SHAPE) -> tuple[float, float]:
    """Peak allocated and reserved GiB over the steps (the fp32 weights allocated first)."""
    alloc, live = Allocator(expandable), {}
    attention = [4 * s["h"] * w for w in (s["q"], s["kv"], s["kv"], s["q"])]
    weights = [4 * s["vocab"] * s["h"]] * 2 + (attention + [4 * s["h"] * s["i"]] * 3) * s["layers"]
    for n in weights:
        alloc.malloc(n)
    for k, T in enumerate(tokens):
        for kind, name, *n in step_events(T, s, first=k == 0):
            if kind == "A":
                live[name] = alloc.malloc(n[0])
            elif name in live:
                alloc.release(live.pop(name))
    return alloc.peak_allocated / GIB, alloc.peak_reserved / GIB


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=3, help="steps of GRID_TOKENS to replay (the grid ran 3)"
    )
    args = parser.parse_args(argv)
    cases = {"the grid's token counts": GRID_TOKENS[: args.steps], "8192 tokens every step": [8192] * 3}
    for fraction in (0.99, 0.97, 0.95, 0.925, 0.9, 0.8, 0.6):
        cases[f"first step {fraction:.1%} of 8192"] = [int(8192 * fraction), 8192, 8192]
    rng = random.Random(0)
    for low in (8050, 7900, 7000):
        cases[f"12 steps uniform in [{low}, 8192]"] = [rng.randint(low, 8192) for _ in range(12)]
    for name, tokens in cases.items():
        fixed, expandable = replay(tokens, False), replay(tokens, True)
        print(
            f"{name:34s} allocated {fixed[0]:6.2f}  reserved fixed {fixed[1]:6.2f} (+{fixed[1] - fixed[0]:5.2f})"
            f"  expandable {expandable[1]:6.2f} (+{expandable[1] - expandable[0]:4.2f})"
        )


if __name__ == "__main__":
    main()
