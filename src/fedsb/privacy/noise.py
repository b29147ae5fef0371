"""Where DP randomness comes from: a secret per-party source by default, the config seed only on request.

DP noise and Poisson sampling must be unpredictable to everyone the guarantee names, the server included
(DESIGN.md section 5.1). The run's ``seed`` is chosen by the server and sent to every node, so noise derived
from it can be rebuilt and subtracted by anyone holding the config. By default every generator used for
DP is therefore seeded from 63 bits of operating-system entropy (:func:`secrets.randbits`), drawn afresh for
each party and use and never stored or sent. ``dp.reproducible_noise = true`` restores seed-derived noise
for research simulations; it is refused over Flower and labelled "not private" wherever epsilon is shown.
"""

from __future__ import annotations

import secrets

import torch

from fedsb.config import RunConfig
from fedsb.errors import UsageError

NOT_PRIVATE = "not private: noise derived from the config seed"
SECRET = "secret"
REPRODUCIBLE = f"reproducible ({NOT_PRIVATE})"


def noise_label(cfg: RunConfig) -> str:
    """What ``metrics.jsonl`` rows (``dp_noise``) and ``summary.json`` (``privacy.noise``) say about the noise."""
    return REPRODUCIBLE if cfg.dp.reproducible_noise else SECRET


def derived_seed(seed: int, *parts: int) -> int:
    """The seed ``dp.reproducible_noise`` derives from the run seed and a use's ``parts`` (public)."""
    for p in parts:
        seed = (seed * 1_000_003 + p) % (2**63 - 1)
    return seed


def dp_generator(cfg: RunConfig, *parts: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator on ``device`` for one party's DP sampling or noise.

    Seeded from operating-system entropy unless ``dp.reproducible_noise`` (then from the run seed and
    ``parts``, which anyone holding the config can rebuild).
    """
    seed = derived_seed(cfg.seed, *parts) if cfg.dp.reproducible_noise else secrets.randbits(63)
    return torch.Generator(device=device).manual_seed(seed)


def generator_on(generator: torch.Generator, device: torch.device | str) -> torch.Generator:
    """``generator`` itself when it lives on ``device``; otherwise a generator on ``device`` seeded from it.

    CPU generators must not be passed to CUDA ops (DESIGN.md section 5.3). The derived generator is as
    secret (or as reproducible) as the one it is seeded from, and on CPU nothing changes.
    """
    device = torch.device(device)
    have = generator.device
    if device.type == "meta" or (have.type == device.type and (device.index is None or have.index in (None, device.index))):
        return generator  # meta tensors draw nothing (and no generator lives on meta)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


def refuse_reproducible_noise(cfg: RunConfig) -> None:
    """Over Flower the server sends the seed to every node, so seed-derived noise protects nothing."""
    if cfg.dp.mode != "off" and cfg.dp.reproducible_noise:
        raise UsageError(
            "dp.reproducible_noise = true derives the DP noise from the config seed, which the server sends to every "
            "node (not private); it is for `fedsb run` simulations only: drop it to run over Flower"
        )
