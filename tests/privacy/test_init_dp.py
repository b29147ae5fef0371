"""The privatised LoRA-SB init: exact without noise or clipping, clipped per example, charged to epsilon."""

from __future__ import annotations

import math

import pytest
import torch

from fedsb.adapters.lora_sb_init import gradient_sums
from fedsb.core.federation import client_init_message, initialise_adapters
from fedsb.errors import FedsbError
from fedsb.privacy import make_dp_trainer
from fedsb.privacy.accounting import epsilon_of
from fedsb.privacy.init_dp import poisson_examples, private_gradient_sums
from fedsb.simulation.simulator import Simulator
from tests.helpers import tiny_federation


def examples(fed, client=0, q=0.3):
    return poisson_examples(fed.shards[client], q, torch.Generator().manual_seed(5))


def test_no_noise_no_clipping_reproduces_the_non_private_init() -> None:
    fed = tiny_federation(init={"source": "federated"})  # the messages below are raw (dense) gradient sums
    ex = examples(fed)
    bs = fed.cfg.init.batch_size
    batches = [fed.objective.collate(ex[i : i + bs]) for i in range(0, len(ex), bs)]
    plain, _ = gradient_sums(fed.adapted, batches, fed.objective.loss, fed.objective.batch_size)
    private = private_gradient_sums(fed.adapted, fed.objective, ex, bs, None, 0.0, torch.Generator())
    assert all(torch.equal(plain[k], private[k]) for k in plain)
    initialise_adapters(fed, [(plain, len(ex))])
    ref = fed.adapted.get_state()
    fed2 = tiny_federation(init={"source": "federated"})
    initialise_adapters(fed2, [(private, len(ex))])
    assert all(torch.equal(ref[k], v) for k, v in fed2.adapted.get_state().items())


def test_per_example_clipping() -> None:
    fed = tiny_federation()
    ex = examples(fed)[:6]
    plain = private_gradient_sums(fed.adapted, fed.objective, ex, 16, None, 0.0, torch.Generator())
    loose = private_gradient_sums(fed.adapted, fed.objective, ex, 16, 1e9, 0.0, torch.Generator())
    for k in plain:
        torch.testing.assert_close(loose[k], plain[k], atol=1e-5, rtol=1e-4)
    c = 1e-3
    tight = private_gradient_sums(fed.adapted, fed.objective, ex, 16, c, 0.0, torch.Generator())
    norm = math.sqrt(sum(float(t.double().pow(2).sum()) for t in tight.values()))
    assert norm <= len(ex) * c * (1 + 1e-5)
    noisy = private_gradient_sums(fed.adapted, fed.objective, ex, 16, c, 2.0, torch.Generator().manual_seed(0))
    resid = torch.cat([(noisy[k] - tight[k]).flatten() for k in tight])
    assert abs(float(resid.std()) / (2.0 * c) - 1) < 0.05  # noise std = sigma * C


def test_private_init_cost_appears_in_epsilon() -> None:
    fed = tiny_federation(dp={"mode": "sample", "epsilon": 2.0})
    trainer = make_dp_trainer(fed)
    sim = Simulator(fed.cfg, fed=fed, trainer=trainer, progress=False)
    sim.initialise()
    delta = trainer.ledger.delta
    for c, plan in trainer.plans.items():
        assert plan.init_sample_rate is not None
        expected = epsilon_of([(plan.init_noise_multiplier, plan.init_sample_rate, 1)], delta)
        assert expected > 0 and abs(trainer.ledger.epsilon(c) - expected) < 1e-9


def test_public_init_costs_nothing_and_lora_methods_have_no_init_cost() -> None:
    for fed in (tiny_federation(init={"source": "public"}, dp={"mode": "sample", "epsilon": 2.0}),
                tiny_federation(method="ffa-lora", dp={"mode": "sample", "epsilon": 2.0})):
        trainer = make_dp_trainer(fed)
        assert trainer.init_messages(fed) is None
        Simulator(fed.cfg, fed=fed, trainer=trainer, progress=False).initialise()
        assert all(e == 0.0 for e in trainer.epsilons().values())


def test_non_private_init_on_client_data_is_refused_when_dp_is_on() -> None:
    fed = tiny_federation(dp={"mode": "sample", "epsilon": 1.0})
    with pytest.raises(FedsbError, match="non-private"):
        client_init_message(fed, 0)
    with pytest.raises(FedsbError, match="non-private"):
        Simulator(fed.cfg, fed=fed, progress=False).initialise()  # the default (non-DP) trainer cannot leak it
