"""Client-level DP ("dp.mode = client"): clip each client's update, add Gaussian noise at the server.

This is DP-FedAvg (McMahan et al., 2018), the mode Flower's DP strategies implement. Each sampled client
trains normally, then scales its update ``delta_i = (uploaded tensors) - (broadcast tensors)`` to joint L2
norm at most ``C`` (``dp.max_grad_norm``). The server does not trust that clipping: it clips every
received change again (jointly over the uploaded tensors) and forms

    new = broadcast + (sum_i clip_C(delta_i) + N(0, (sigma C)^2 I)) / m      m = clients per round

(uniform weights and a fixed denominator: example-weighted means would let one client's weight, and so
its influence, depend on its data size). One unclipped (faulty or malicious) update therefore moves the
aggregate by at most ``C / m`` plus noise, as for an honest one. Each client's init message is clipped to
``C`` again before the server adds the init noise. Under SecAgg+ (``flower.secagg``) the server only sees
the sum and cannot re-clip: clipping then stays with the clients (``privacy.clipping`` in summary.json).

Accounting, q = 1 over the rounds a client takes part in. The clients of a round are a fixed-size subset
drawn from the run seed (:func:`fedsb.core.federation.scheduled_clients`): a public schedule, so subsampling
gives no amplification. Each round's release is a Gaussian mechanism (sensitivity C, noise sigma C) on
the clients scheduled in it; a client not scheduled in a round has no influence on that round's release
beyond what earlier releases (post-processing) carry. So every client has its own accountant, charged
``(sigma, q = 1, 1 step)`` for each round it is scheduled in (whether or not its update arrives or is
accepted) plus the private init, and the reported epsilon is the maximum over clients. One sigma serves
every client; it is solved for the client scheduled in the most rounds. (Secret Poisson sampling of
clients at the server would allow ``q = m / clients`` but needs a server-side secret schedule that the
nodes cannot check; with few clients the gain is small. Per-client accounting over scheduled rounds is
tighter than charging every client for every round and equals what each Flower node records itself.)

Guarantee: (epsilon, delta)-DP with respect to adding or removing *one whole client* (all its examples),
for everyone who sees the aggregates and the final model. It does NOT protect a client from the server,
which sees the updates in the clear and is trusted to add the noise (use sample-level DP for that). With
few clients the guarantee is weak by nature: delta defaults to 1/(10 clients).

Only methods whose aggregate is a mean of the uploads qualify (fed-sb, ffa-lora, fedit). FedEx-LoRA's
residual and FLoRA's stack release products or the individual factors of each client, which noise on the
mean does not cover: use sample-level DP for them.
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
from torch import Tensor

from fedsb.core.federation import Federation, client_init_message
from fedsb.errors import UsageError
from fedsb.methods import METHODS
from fedsb.methods.base import ClientUpdate, Method, ServerState
from fedsb.privacy.accounting import PrivacyLedger, solve_noise_multiplier
from fedsb.privacy.init_dp import clip_total
from fedsb.privacy.noise import generator_on
from fedsb.privacy.plan import (
    ClientPlan,
    check_init_source,
    participation,
    private_init_needed,
    resolve_delta,
)
from fedsb.privacy.trainer_base import DPTrainer


def client_dp_methods() -> list[str]:
    """The methods whose aggregate is a mean of the uploads (``Method.additive``)."""
    return [name for name, cls in METHODS.items() if cls.additive]


def joint_norm(tensors: dict[str, Tensor]) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors.values()))


def reclip_message(msg: dict[str, Tensor], max_norm: float) -> dict[str, Tensor]:
    """A received init message scaled to joint norm at most ``max_norm``. A message with a non-float tensor
    or a non-finite norm is passed on unchanged: the init source rejects it (clipping would launder it)."""
    if not all(t.is_floating_point() for t in msg.values()):
        return msg
    norm = joint_norm(msg)
    return clip_total(msg, max_norm) if math.isfinite(norm) else msg


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
        plan = t.server_plan
        factors = [t.reclip_factor(u.payload, state.adapter) for u in updates]  # the server's own clipping
        m = t.expected_clients
        std = plan.noise_multiplier * t.clip  # on the sum (sensitivity C); the mean's noise is sigma C / m
        g = t.generator(3, state.round + 1)
        new: dict[str, Tensor] = {}
        for name, prev in state.adapter.items():
            acc = torch.zeros_like(prev, dtype=torch.float64)
            for u, f in zip(updates, factors, strict=True):
                acc.add_(u.payload[name].to(torch.float64) - prev.to(torch.float64), alpha=f)
            noise = torch.normal(0.0, std, size=prev.shape, generator=generator_on(g, prev.device), dtype=torch.float64,
                                 device=prev.device) if std > 0 else 0.0
            new[name] = (prev.to(torch.float64) + (acc + noise) / m).to(torch.float32)
        t.charge_round(state.round + 1 if t.round is None else t.round)
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
        self.reclip = True  # the server clips every change again; False only under SecAgg+ (it sees the sum)
        self.round: int | None = None  # the round the runner opened last (round_gate)
        self.private_init = private_init_needed(cfg, fed)
        if self.private_init:
            check_init_source(cfg)
        # Public schedule, so q = 1 for every round a client takes part in (module docstring).
        scheduled = participation(fed, cfg.federation.rounds)
        init_q = 1.0 if self.private_init else None
        plans = {str(c): ClientPlan(size=len(fed.shards[c]), sample_rate=1.0, steps_per_round=1, rounds=scheduled[c],
                                    init_sample_rate=init_q) for c in range(k)}
        most = max(len(r) for r in scheduled.values())
        # The server's mechanism: one sigma for all, sized for the client scheduled in the most rounds.
        plan = ClientPlan(size=k, sample_rate=1.0, steps_per_round=1, rounds=list(range(1, cfg.federation.rounds + 1)),
                          init_sample_rate=init_q)
        dp = cfg.dp
        if dp.noise_multiplier is not None:
            plan.noise_multiplier = dp.noise_multiplier
            plan.init_noise_multiplier = dp.init_noise_multiplier if dp.init_noise_multiplier is not None else dp.noise_multiplier
        else:
            assert dp.epsilon is not None  # fedsb.config.validate refuses DP with neither epsilon nor noise_multiplier
            stretches = [(1.0, most)]
            fixed = []
            if self.private_init:
                if dp.init_noise_multiplier is not None:
                    fixed = [(dp.init_noise_multiplier, 1.0, 1)]
                else:
                    stretches.insert(0, (1.0, 1))
            plan.noise_multiplier = solve_noise_multiplier(dp.epsilon, delta, stretches, dp.accountant, fixed)
            plan.init_noise_multiplier = dp.init_noise_multiplier if dp.init_noise_multiplier is not None else plan.noise_multiplier
        for p in plans.values():
            p.noise_multiplier, p.init_noise_multiplier = plan.noise_multiplier, plan.init_noise_multiplier
        self.server_plan = plan
        super().__init__(fed, PrivacyLedger(dp.accountant, delta), plans, dp.epsilon)
        fed.method = cast(Method, ClientLevelDPMethod(fed.method, self))  # a Method by delegation (__getattr__)

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
        """The server's side of the private init: every received message clipped to C again (a client may
        not have), then one noise summand appended; charged to every client's accountant."""
        msgs = [(reclip_message(m, self.clip), n) for m, n in msgs]
        plan = self.server_plan
        std = plan.init_noise_multiplier * self.clip
        g = self.generator(4)
        msgs = [*msgs, ({k: torch.normal(0.0, std, size=v.shape, generator=generator_on(g, v.device), device=v.device)
                         for k, v in msgs[0][0].items()}, 0)]
        for c in self.plans:
            self.ledger.spend(c, plan.init_noise_multiplier, 1.0, 1)
        return msgs

    # --- the server's accounting and clipping ---------------------------------------------------------
    def round_gate(self, round_idx: int, rounds: int) -> tuple[str | None, bool]:
        self.round = round_idx  # aggregate charges the clients scheduled in this round
        return super().round_gate(round_idx, rounds)

    def charge_round(self, round_idx: int) -> None:
        """A noised aggregate of round ``round_idx`` is released: charge every client scheduled in it."""
        for c in self.fed.sample_clients(round_idx):
            self.ledger.spend(c, self.server_plan.noise_multiplier, 1.0, 1)

    def reclip_factor(self, payload: dict[str, Tensor], broadcast: dict[str, Tensor]) -> float:
        """The factor that scales ``payload - broadcast`` (jointly over the tensors) to norm at most C; 1 when
        the server cannot re-clip (SecAgg+: the uploads are a sum)."""
        if not self.reclip:
            return 1.0
        norm = math.sqrt(sum(float((payload[n].double() - prev.double()).pow(2).sum()) for n, prev in broadcast.items()))
        return min(1.0, self.clip / norm) if norm > 0 else 1.0

    def privacy_summary(self) -> dict[str, Any]:
        return {
            **super().privacy_summary(),
            "clipping": ("server re-clips every change and init message to max_grad_norm" if self.reclip else
                         "clients clip; SecAgg+ hides the individual changes, so the server cannot re-clip"),
            "client_sampling": "public schedule from the config seed: q = 1 for every round a client takes part in",
        }

    # --- a Flower node's own record (the server keeps its own ledger) -----------------------------------
    def charge_node_init(self, client: int) -> None:
        """This node sent its (clipped) init message: the server's init noise covers it once."""
        self.ledger.spend(client, self.server_plan.init_noise_multiplier, 1.0, 1)

    def charge_node_round(self, client: int) -> None:
        """This node uploaded one round's (clipped) change: one Gaussian release at q = 1."""
        self.ledger.spend(client, self.server_plan.noise_multiplier, 1.0, 1)

    def __call__(self, fed: Federation, client: int, round_idx: int, step_offset: int) -> dict[str, float]:
        from fedsb.core.client import train_client

        names = fed.method.upload_names(fed.adapted)
        before = fed.adapted.get_state(names)
        metrics = train_client(fed, client, round_idx, step_offset)
        after = fed.adapted.get_state(names)
        delta = {n: after[n] - before[n] for n in names}
        norm = joint_norm(delta)
        factor = min(1.0, self.clip / (norm + 1e-12))
        fed.adapted.set_state({n: before[n] + factor * delta[n] for n in names})
        return metrics
