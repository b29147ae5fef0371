"""Client-level DP ("dp.mode = client"): clip each client's update, add Gaussian noise at the server.

This is DP-FedAvg (McMahan et al., 2018), the mode Flower's DP strategies implement. Each sampled client
trains normally, then scales its update ``delta_i = (uploaded tensors) - (broadcast tensors)`` to joint L2
norm at most ``C`` (``dp.max_grad_norm``). The server forms

    new = broadcast + (sum_i delta_i + N(0, (sigma C)^2 I)) / m        m = expected clients per round

(uniform weights and a fixed denominator: example-weighted means would let one client's weight, and so
its influence, depend on its data size). One accountant for the whole population records one step of the
subsampled Gaussian mechanism per round with sample rate ``q = m / clients``.

Guarantee: (epsilon, delta)-DP with respect to adding or removing *one whole client* (all its examples),
for everyone who sees the aggregates and the final model. It does NOT protect a client from the server,
which sees the clipped updates in the clear (use sample-level DP, or secure aggregation, for that). The
amplification by sampling assumes the server samples clients at random and keeps the draw secret; with
``federation.fraction = 1`` (every client every round) q = 1 and nothing is assumed. With few clients
the guarantee is weak by nature: delta defaults to 1/(10 clients).

Only methods whose aggregate is a mean of the uploads qualify (fed-sb, ffa-lora, fedit). FedEx-LoRA's
residual and FLoRA's stack release products or the individual factors of each client, which noise on the
mean does not cover: use sample-level DP for them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from fedsb.errors import UsageError
from fedsb.federation import Federation, client_init_message
from fedsb.methods import METHODS
from fedsb.methods.base import ClientUpdate, ServerState
from fedsb.privacy.accounting import PrivacyLedger, solve_noise_multiplier
from fedsb.privacy.init_dp import clip_total
from fedsb.privacy.noise import generator_on
from fedsb.privacy.plan import ClientPlan, check_init_source, private_init_needed, resolve_delta
from fedsb.privacy.trainer_base import DPTrainer


def client_dp_methods() -> list[str]:
    """The methods whose aggregate is a mean of the uploads (``Method.additive``)."""
    return [name for name, cls in METHODS.items() if cls.additive]
PARTY = "clients"


def joint_norm(tensors: dict[str, Tensor]) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors.values()))


class ClientLevelDPMethod:
    """Wraps a mean-aggregating method: uniform, fixed-denominator mean of clipped deltas plus server noise.

    Every other call is delegated to the wrapped method unchanged.
    """

    def __init__(self, inner: Any, trainer: ClientLevelDP) -> None:
        self.inner = inner
        self.trainer = trainer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def aggregate(self, state: ServerState, updates: list[ClientUpdate]) -> ServerState:
        t = self.trainer
        plan = t.plans[PARTY]
        m = t.expected_clients
        std = plan.noise_multiplier * t.clip  # on the sum (sensitivity C); the mean's noise is sigma C / m
        g = t.generator(3, state.round + 1)
        new: dict[str, Tensor] = {}
        for name, prev in state.adapter.items():
            acc = torch.zeros_like(prev, dtype=torch.float64)
            for u in updates:
                acc.add_(u.payload[name].to(torch.float64) - prev.to(torch.float64))
            noise = torch.normal(0.0, std, size=prev.shape, generator=generator_on(g, prev.device), dtype=torch.float64,
                                 device=prev.device) if std > 0 else 0.0
            new[name] = (prev.to(torch.float64) + (acc + noise) / m).to(torch.float32)
        t.ledger.spend(PARTY, plan.noise_multiplier, plan.sample_rate, 1)
        return ServerState(round=state.round + 1, adapter=new, pending={})


class ClientLevelDP(DPTrainer):
    mode = "client"
    label = "client-level DP (DP-FedAvg: clipped client updates, Gaussian noise at the server; w.r.t. one client)"

    def __init__(self, fed: Federation) -> None:
        cfg = fed.cfg
        if not fed.method.additive:
            raise UsageError(
                f"dp.mode = client needs a method whose aggregate is a mean of uploads ({', '.join(client_dp_methods())}); "
                f"{cfg.method} releases per-client products or factors: use dp.mode = sample"
            )
        k = len(fed.shards)
        delta = resolve_delta(cfg, {"clients": k}, "clients")
        self.expected_clients = max(1, round(cfg.federation.fraction * k))
        self.clip = cfg.dp.max_grad_norm
        self.private_init = private_init_needed(cfg, fed)
        if self.private_init:
            check_init_source(cfg)
        rounds = list(range(1, cfg.federation.rounds + 1))
        plan = ClientPlan(size=k, sample_rate=self.expected_clients / k, steps_per_round=1, rounds=rounds,
                          init_sample_rate=1.0 if self.private_init else None)
        dp = cfg.dp
        if dp.noise_multiplier is not None:
            plan.noise_multiplier = dp.noise_multiplier
            plan.init_noise_multiplier = dp.init_noise_multiplier if dp.init_noise_multiplier is not None else dp.noise_multiplier
        else:
            stretches = [(plan.sample_rate, len(rounds))]
            fixed = []
            if self.private_init:
                if dp.init_noise_multiplier is not None:
                    fixed = [(dp.init_noise_multiplier, 1.0, 1)]
                else:
                    stretches.insert(0, (1.0, 1))
            plan.noise_multiplier = solve_noise_multiplier(dp.epsilon, delta, stretches, dp.accountant, fixed)
            plan.init_noise_multiplier = dp.init_noise_multiplier if dp.init_noise_multiplier is not None else plan.noise_multiplier
        super().__init__(fed, PrivacyLedger(dp.accountant, delta), {PARTY: plan}, dp.epsilon)
        fed.method = ClientLevelDPMethod(fed.method, self)  # type: ignore[assignment]

    def init_messages(self, fed: Federation) -> list[tuple[dict[str, Tensor], int]] | None:
        """Each client's init gradient sum clipped as a whole to C; the server's noise enters as one more
        summand (the federated source only adds messages), charged as one full-participation step."""
        if not self.private_init:
            return None
        return self.add_init_noise([self.client_init(fed, c) for c in range(len(fed.shards))])

    def client_init(self, fed: Federation, client: int) -> tuple[dict[str, Tensor], int]:
        """One client's init message clipped as a whole to C (what a Flower node sends)."""
        msg, n = client_init_message(fed, client, privatised_by_caller=True)
        return clip_total(msg, self.clip), n

    def add_init_noise(self, msgs: list[tuple[dict[str, Tensor], int]]) -> list[tuple[dict[str, Tensor], int]]:
        """The server's side of the private init: one noise summand appended, charged to the ledger."""
        plan = self.plans[PARTY]
        std = plan.init_noise_multiplier * self.clip
        g = self.generator(4)
        msgs = [*msgs, ({k: torch.normal(0.0, std, size=v.shape, generator=generator_on(g, v.device), device=v.device)
                         for k, v in msgs[0][0].items()}, 0)]
        self.ledger.spend(PARTY, plan.init_noise_multiplier, 1.0, 1)
        return msgs

    def __call__(self, fed: Federation, client: int, round_idx: int, step_offset: int) -> dict[str, float]:
        from fedsb.simulation import train_client

        names = fed.method.upload_names(fed.adapted)
        before = fed.adapted.get_state(names)
        metrics = train_client(fed, client, round_idx, step_offset)
        after = fed.adapted.get_state(names)
        delta = {n: after[n] - before[n] for n in names}
        norm = joint_norm(delta)
        factor = min(1.0, self.clip / (norm + 1e-12))
        fed.adapted.set_state({n: before[n] + factor * delta[n] for n in names})
        return metrics
