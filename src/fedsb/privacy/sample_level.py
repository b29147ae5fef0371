"""Sample-level DP ("dp.mode = sample"): DP-SGD inside every client, one accountant per client.

Guarantee: for each client, (epsilon, delta)-DP with respect to adding or removing one of *its* training
examples, against anyone who sees what the client sends (the server included) and therefore against
everyone who sees the final model. It covers the whole run: the privatised LoRA-SB init (when the init
reads client data) and every local step of every round, composed in the client's accountant.
"""

from __future__ import annotations

import torch

from fedsb.core.federation import Federation, layer_shapes
from fedsb.core.training import build_optimizer
from fedsb.errors import UsageError
from fedsb.init.sources import init_source_for
from fedsb.privacy.accounting import PrivacyLedger, solve_noise_multiplier
from fedsb.privacy.dp_sgd import dp_local_train
from fedsb.privacy.init_dp import init_sample_rate, poisson_examples, private_gradient_sums
from fedsb.privacy.plan import ClientPlan, participation, private_init_needed, resolve_delta
from fedsb.privacy.trainer_base import DPTrainer


class SampleLevelDP(DPTrainer):
    mode = "sample"
    label = "sample-level DP (DP-SGD in each client; epsilon per client, w.r.t. one training example)"

    def __init__(self, fed: Federation) -> None:
        cfg = fed.cfg
        dp = cfg.dp
        sizes = {str(c): len(s) for c, s in enumerate(fed.shards)}
        if min(sizes.values()) == 0:
            raise UsageError("a client holds no training examples; DP-SGD needs data on every client (use fewer clients)")
        delta = resolve_delta(cfg, {f"client {k}": v for k, v in sizes.items()}, "N_client")
        private_init = private_init_needed(cfg, fed)  # any source's encoding is post-processing of the noised sums
        ledger = PrivacyLedger(dp.accountant, delta)
        plans: dict[str, ClientPlan] = {}
        rounds = participation(fed, cfg.federation.rounds)
        for c, n in enumerate(sizes.values()):
            plan = ClientPlan(size=n, sample_rate=min(1.0, cfg.train.batch_size / n), steps_per_round=fed.local_steps(c),
                              rounds=rounds[c])
            if private_init:
                plan.init_sample_rate = init_sample_rate(cfg.init.samples, n)
            plans[str(c)] = plan
            self._solve(plan, cfg, delta)
        super().__init__(fed, ledger, plans, dp.epsilon)

    @staticmethod
    def _solve(plan: ClientPlan, cfg, delta: float) -> None:
        dp = cfg.dp
        if dp.noise_multiplier is not None:
            plan.noise_multiplier = dp.noise_multiplier
            plan.init_noise_multiplier = dp.init_noise_multiplier if dp.init_noise_multiplier is not None else dp.noise_multiplier
            return
        stretches = [(plan.sample_rate, plan.total_steps)]
        fixed = []
        if plan.init_sample_rate is not None:
            if dp.init_noise_multiplier is not None:
                fixed = [(dp.init_noise_multiplier, plan.init_sample_rate, 1)]
            else:
                stretches.insert(0, (plan.init_sample_rate, 1))
        sigma = solve_noise_multiplier(dp.epsilon, delta, stretches, dp.accountant, fixed)
        plan.noise_multiplier = sigma
        plan.init_noise_multiplier = dp.init_noise_multiplier if dp.init_noise_multiplier is not None else sigma

    # --- privatised LoRA-SB init --------------------------------------------------------------------
    def init_messages(self, fed: Federation) -> list[tuple[dict[str, torch.Tensor], int]] | None:
        """Every client's privatised init upload (None when the init reads no client data)."""
        if not private_init_needed(fed.cfg, fed):
            return None
        return [self.init_message(fed, c) for c in range(len(fed.shards))]

    def init_message(self, fed: Federation, client: int) -> tuple[dict[str, torch.Tensor], int]:
        """One client's privatised init upload, charged to its accountant (what a Flower node calls)."""
        plan = self.plans[str(client)]
        assert plan.init_sample_rate is not None
        source = init_source_for(fed.cfg.init, fed.cfg.adapter.rank, layer_shapes(fed), fed.cfg.seed, client)
        g = self.generator(2, client)
        chosen = poisson_examples(fed.shards[client], plan.init_sample_rate, g)
        sums = private_gradient_sums(fed.adapted, fed.objective, chosen, fed.cfg.init.batch_size,
                                     fed.cfg.dp.max_grad_norm, plan.init_noise_multiplier, g)
        self.ledger.spend(client, plan.init_noise_multiplier, plan.init_sample_rate, 1)
        # The true count is data-dependent (Poisson); send the public expected count instead.
        expected = round(plan.init_sample_rate * plan.size)
        return source.encode(sums, expected), expected

    # --- one client's round ---------------------------------------------------------------------------
    def __call__(self, fed: Federation, client: int, round_idx: int, step_offset: int) -> dict[str, float]:
        cfg = fed.cfg
        plan = self.plans[str(client)]
        opt = build_optimizer(fed.adapted, fed.lr, fed.head_lr, cfg.train.weight_decay)

        def on_step(q: float) -> None:
            self.ledger.spend(client, plan.noise_multiplier, q, 1)

        return dp_local_train(
            fed.adapted, fed.objective, fed.shards[client], fed.local_steps(client), opt, fed.schedule(), step_offset,
            plan.noise_multiplier, cfg.dp.max_grad_norm, cfg.train.batch_size, self.generator(1, round_idx, client),
            on_step,
        )
