"""What a DP run will spend, decided before it starts: delta, sample rates, steps per client, sigma."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedsb.config import RunConfig
from fedsb.core.federation import Federation
from fedsb.errors import UsageError
from fedsb.init.sources import INIT_SOURCES, DenseInit


def participation(fed: Federation, rounds: int) -> dict[int, list[int]]:
    """Rounds (1-based) each client is sampled in. The schedule is seeded and data-independent."""
    out: dict[int, list[int]] = {c: [] for c in range(len(fed.shards))}
    for r in range(1, rounds + 1):
        for c in fed.sample_clients(r):
            out[c].append(r)
    return out


def private_init_needed(cfg: RunConfig, fed: Federation) -> bool:
    """True when the LoRA-SB init would read clients' private data (adapter mode lora-sb, federated source)."""
    return fed.method.gradient_init and INIT_SOURCES[cfg.init.source].federated


def check_init_source(cfg: RunConfig) -> None:
    """Private init messages are noised sums; only sources whose server step adds messages accept them."""
    if INIT_SOURCES[cfg.init.source].federated and INIT_SOURCES[cfg.init.source] is not DenseInit:
        raise UsageError(
            f"init.source = {cfg.init.source!r} cannot be privatised yet; with dp.mode = {cfg.dp.mode!r} use "
            "init.source = federated (noised gradient sums) or public (no privacy cost)"
        )


def resolve_delta(cfg: RunConfig, population: dict[str, int], unit: str) -> float:
    """``dp.delta``, or ``1 / (10 max(population))`` by default; a delta above ``1 / n`` for any party is refused
    unless ``dp.allow_loose_delta`` (a delta near ``1/n`` allows publishing one record outright).

    The largest party sets the rule so that it holds for every party: one delta serves all accountants.
    """
    limit = 1.0 / max(population.values())
    delta = cfg.dp.delta if cfg.dp.delta is not None else limit / 10
    if delta > limit * (1 + 1e-12) and not cfg.dp.allow_loose_delta:
        who, n = max(population.items(), key=lambda kv: kv[1])
        raise UsageError(
            f"dp.delta = {delta:.3g} is looser than 1/{unit} = 1/{n} = {limit:.3g} ({who}); lower dp.delta or set "
            "dp.allow_loose_delta = true if you accept the weaker guarantee"
        )
    return delta


@dataclass
class ClientPlan:
    """One party's planned mechanism: sigma for its noisy steps, and what it plans to spend."""

    size: int
    sample_rate: float
    steps_per_round: int
    rounds: list[int]
    noise_multiplier: float = 0.0
    init_sample_rate: float | None = None  # None: no private init for this party
    init_noise_multiplier: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def total_steps(self) -> int:
        return self.steps_per_round * len(self.rounds)

    def round_entries(self, rounds: list[int]) -> list[tuple[float, float, int]]:
        """Ledger entries the given rounds would add for this party."""
        n = sum(1 for r in rounds if r in self.rounds)
        return [(self.noise_multiplier, self.sample_rate, self.steps_per_round * n)] if n else []
