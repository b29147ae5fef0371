"""Client-level DP: clipped client deltas, uniform mean plus server noise, one accountant over rounds."""

from __future__ import annotations

import pytest
import torch

from fedsb.errors import UsageError
from fedsb.methods.base import ClientUpdate, ServerState
from fedsb.privacy import make_dp_trainer
from fedsb.privacy.accounting import epsilon_of
from fedsb.simulation import Simulator
from tests.helpers import tiny_federation


def test_clipped_uniform_mean_and_noise_scale() -> None:
    fed = tiny_federation(dp={"mode": "client", "noise_multiplier": 0.0, "max_grad_norm": 1.0}, init={"source": "public"})
    trainer = make_dp_trainer(fed)
    prev = {"w": torch.zeros(4)}
    ups = [ClientUpdate("0", {"w": torch.tensor([3.0, 0, 0, 0])}, 10), ClientUpdate("1", {"w": torch.tensor([0, 0.5, 0, 0])}, 90)]
    # the trainer clips on the client; here the server's arithmetic: (sum of deltas) / m, m = 3 expected clients
    out = fed.method.aggregate(ServerState(0, prev), ups)
    torch.testing.assert_close(out.adapter["w"], torch.tensor([1.0, 0.5 / 3, 0, 0]))
    assert trainer.ledger.history("clients") == [(0.0, 1.0, 1)]


def test_client_updates_are_clipped_and_epsilon_is_accounted_per_round() -> None:
    fed = tiny_federation(dp={"mode": "client", "epsilon": 5.0, "max_grad_norm": 0.01}, init={"source": "public"})
    trainer = make_dp_trainer(fed)
    sim = Simulator(fed.cfg, fed=fed, trainer=trainer, progress=False)
    sim.initialise()
    names = fed.method.upload_names(fed.adapted)
    before = fed.adapted.get_state(names)
    trainer(fed, 0, 1, 0)
    after = fed.adapted.get_state(names)
    norm = float(torch.sqrt(sum(((after[n] - before[n]).double() ** 2).sum() for n in names)))
    assert norm <= 0.01 * (1 + 1e-5)
    fed2 = tiny_federation(dp={"mode": "client", "epsilon": 5.0}, init={"source": "public"})
    t2 = make_dp_trainer(fed2)
    rows = Simulator(fed2.cfg, fed=fed2, trainer=t2, progress=False).run().rows
    sigma = t2.plans["clients"].noise_multiplier
    for row in rows[1:]:
        assert abs(row["epsilon"] - epsilon_of([(sigma, 1.0, row["round"])], row["delta"])) < 1e-9
    assert rows[-1]["epsilon"] <= 5.0 and rows[0]["delta"] == pytest.approx(1 / 30)


def test_client_level_dp_refuses_methods_that_release_per_client_factors() -> None:
    for method in ("fedex-lora", "flora"):
        with pytest.raises(UsageError, match="dp.mode = sample"):
            make_dp_trainer(tiny_federation(method=method, dp={"mode": "client", "epsilon": 1.0}))
