"""Randomness that stays on the right device and never leaks into the caller's global RNG (DESIGN.md 5.3).

``torch.manual_seed`` seeds the CPU *and every CUDA* generator, so calling it inside
``torch.random.fork_rng(devices=[])`` (which saves and restores only the CPU state) reseeds the global
CUDA RNG for good. :func:`seeded_rng` forks the CPU generator and the generators of the devices it is
given, seeds exactly those, and restores them on exit.

Local training runs under :func:`seeded_rng` with :func:`client_round_seed`, so dropout (drawn from the
global RNG of the model's device) is a function of (seed, round, client) alone: a client trains the same
way in the simulator, on a Flower node and after a resume, whatever ran before it in that process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def _cuda_indices(devices: tuple[torch.device | str | None, ...]) -> list[int]:
    out = set()
    for d in devices:
        if d is None:
            continue
        d = torch.device(d)
        if d.type == "cuda":
            out.add(d.index if d.index is not None else torch.cuda.current_device())
    return sorted(out)


@contextmanager
def seeded_rng(seed: int, *devices: torch.device | str | None) -> Iterator[None]:
    """Run a block with the global RNG of the CPU and of ``devices`` (CUDA ones; others draw from the CPU's)
    seeded with ``seed``; every one of them is restored on exit, and no other generator is touched."""
    seed = int(seed) % 2**64
    cuda = _cuda_indices(devices)
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for i in cuda:
            torch.cuda.default_generators[i].manual_seed(seed)
        yield


def client_round_seed(seed: int, round_idx: int, client: int) -> int:
    """The seed of client ``client``'s global RNG in round ``round_idx`` (dropout): a hash, so it shares no
    stream with the seeds of batch order or init sketches derived arithmetically from the same numbers."""
    digest = hashlib.sha256(f"fedsb-local-rng/{int(seed)}/{int(round_idx)}/{int(client)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@contextmanager
def client_rng(seed: int, round_idx: int, client: int, device: torch.device | str | None) -> Iterator[None]:
    """:func:`seeded_rng` for one client's local training in one round (the CPU and the model's device)."""
    with seeded_rng(client_round_seed(seed, round_idx, client), device):
        yield
