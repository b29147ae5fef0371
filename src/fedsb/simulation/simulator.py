"""The in-process federated simulator: k virtual clients sharing one base model in memory.

Each round the server broadcasts its state; the base-weight part of a broadcast (FedEx residual, FLoRA
stack) is folded into the shared model once, since every client receives the same one; then each
sampled client loads the broadcast adapter, trains with a fresh optimizer, and uploads. Updates are
validated, aggregated by the method, and the global model is evaluated on the server.

The communication ledger counts what a deployment sends, not what the shared model needs: per client it
tracks which base increments that client holds (:class:`BaseVersions`), so a client that missed rounds is
counted a float32 catch-up residual and a client that already holds an increment is not sent it again (a
skipped round). A resume counts as a deployment's resume (a new Flower run): every client starts empty, is
sent the one-time tensors again (``resync``) and catches up on the base the first time it is sampled.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from fedsb.comm.accounting import CommLedger, Size, size_of, to_wire
from fedsb.config import RunConfig
from fedsb.core.client import ClientTrainer, train_client
from fedsb.core.federation import Federation, build_federation, initialise_adapters
from fedsb.core.personal import personal_columns, personalised_metrics
from fedsb.core.rounds import BaseVersions, cached, complete_row, gated_rounds, round_row, server_step
from fedsb.core.summary import run_summary
from fedsb.core.validation import UpdateValidator, all_finite
from fedsb.devices import client_rng
from fedsb.methods.base import ClientUpdate, ServerState

RoundCallback = Callable[[dict[str, Any]], None]


@dataclass
class SimulationResult:
    rows: list[dict[str, Any]]
    state: ServerState
    comm: CommLedger
    summary: dict[str, Any]
    fed: Federation
    extra: dict[str, Any] = field(default_factory=dict)


class Simulator:
    """Runs a federated job in one process. ``on_round`` gets each metrics row as it is produced."""

    def __init__(
        self,
        cfg: RunConfig,
        fed: Federation | None = None,
        trainer: ClientTrainer = train_client,
        on_round: RoundCallback | None = None,
        progress: bool = True,
        wire_dtype: str = "float32",
    ) -> None:
        self.cfg = cfg
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.fed = fed or build_federation(cfg)
        self.trainer = trainer
        self.on_round = on_round
        self.progress = progress
        self.comm = CommLedger(wire_dtype=wire_dtype)
        self.versions = BaseVersions(len(self.fed.shards))  # not checkpointed: a resume starts every client empty
        # A declared example count above the whole training set is impossible (README "Failure handling"); a
        # round's count must equal the client's shard size, the simulator's setup declaration.
        self.validator = UpdateValidator.from_config(cfg, max_examples=len(self.fed.task.train), fed=self.fed)
        self.validator.declare({str(c): len(s) for c, s in enumerate(self.fed.shards)})
        self.rows: list[dict[str, Any]] = []
        self.state: ServerState | None = None
        self.one_time: dict[str, int] = {}
        self.init_seconds = 0.0
        self.init_clipped: list[dict[str, Any]] = []  # init messages the server clipped (row 0's ``clipped``)
        self.stop_reason: str | None = None  # set when the trainer's budget ends the run early
        self.final_round: int | None = None
        # Tensors each client keeps for itself (FedSA-LoRA's B and head): client -> its latest values; a client
        # not yet sampled starts from the server's initial values (``local_start``). Checkpointed.
        self.local_state: dict[int, dict[str, torch.Tensor]] = {}
        self.local_start: dict[str, torch.Tensor] = {}
        self._shares: list[list[Any]] | None = None

    # --- setup -----------------------------------------------------------------------------------
    def initialise(self) -> ServerState:
        fed = self.fed
        t0 = time.perf_counter()
        up = initialise_adapters(fed, self.trainer.init_messages(fed))  # a DP trainer privatises the init upload
        self.init_seconds = time.perf_counter() - t0
        self.init_clipped = up["clipped"]
        # The one-time broadcast as encoded (Fed-SB's B and A in init.broadcast_bits): what a deployment sends.
        self.one_time = self.comm.record_setup(Size(up["upload_params"], up["upload_bytes"]), up["broadcast_size"], len(fed.shards))
        self.state = fed.method.initial_state(fed.adapted)
        self.local_start = fed.adapted.get_state(fed.method.local_names(fed.adapted))
        return self.state

    @property
    def personal_eval(self) -> bool:
        """Evaluate every client's model on its own test share (``eval.personal``; auto: personalised methods)."""
        mode = self.cfg.eval.personal
        return mode == "on" or (mode == "auto" and self.fed.method.personalised)

    def load_client(self, client: int, payload: dict[str, torch.Tensor]) -> None:
        """Put ``client``'s model in the shared model: the broadcast plus the tensors it keeps for itself."""
        self.fed.method.load_adapter(self.fed.adapted, payload)
        own = self.local_state.get(client, self.local_start)
        if own:
            self.fed.adapted.set_state(own)

    def evaluate(self) -> dict[str, float]:
        """The server's test metrics. A personalised method has no global model: each client's own model is scored
        on the common test set (means weighted by its training examples, plus ``_mean`` and ``_min`` over clients)."""
        fed, bs = self.fed, self.cfg.eval.batch_size
        if not fed.method.personalised:
            out = fed.objective.evaluate(fed.adapted.model, fed.task.test, bs)
            if self.personal_eval:
                shares = self.client_test_shares()
                out.update(personal_columns([(len(sh), fed.objective.evaluate(fed.adapted.model, sh, bs)) for sh in shares]))
            return out
        assert self.state is not None
        payload = to_wire(fed.method.broadcast(self.state), self.comm.wire_dtype)
        if self.state.round > 0:
            # Only the clients hold their models: a deployment sends each one the broadcast to evaluate (metered as
            # Flower's client evaluation is) without changing what it holds for training. Before round 1 every
            # client holds the common start, which the server scores itself.
            residual = cached(fed.adapted.residual_state)
            self.comm.record_evaluate([self.versions.download(c, payload, self.state.round, residual, fed.method)
                                       for c in range(len(fed.shards))])
        common, own = [], []
        for c, share in enumerate(self.client_test_shares()):
            self.load_client(c, payload)
            common.append((len(fed.shards[c]), fed.objective.evaluate(fed.adapted.model, fed.task.test, bs)))
            own.append((len(share), fed.objective.evaluate(fed.adapted.model, share, bs)))
        self.fed.method.load_adapter(fed.adapted, payload)
        self.fed.adapted.set_state(self.local_start)
        return personalised_metrics(common, own)

    def client_test_shares(self) -> list[list[Any]]:
        if self._shares is None:
            self._shares = self.fed.test_shares()
        return self._shares

    # --- one round ---------------------------------------------------------------------------------
    def run_round(self, round_idx: int, payload: dict[str, torch.Tensor], bar: tqdm | None = None) -> dict[str, Any]:
        fed, method = self.fed, self.fed.method
        assert self.state is not None
        t0 = time.perf_counter()
        sampled = fed.sample_clients(round_idx)
        sched_offset = (round_idx - 1) * max(fed.local_steps(c) for c in range(len(fed.shards)))
        aggregations = self.state.round
        residual = cached(fed.adapted.residual_state)  # the base every client must hold this round
        downs = [self.versions.download(c, payload, aggregations, residual, method) for c in sampled]
        updates: list[ClientUpdate] = []
        local = method.local_names(fed.adapted)
        for c in sampled:
            self.load_client(c, payload)
            method.begin_round(fed.adapted, aggregations)
            with client_rng(fed.cfg.seed, round_idx, c, fed.device):  # dropout: a function of (seed, round, client)
                method.prepare_client(fed, c, round_idx)
                metrics = self.trainer(fed, c, round_idx, sched_offset)
            if local:
                mine = fed.adapted.get_state(local)
                if all_finite(mine):  # a diverged round leaves the client's personal tensors as they were
                    self.local_state[c] = mine
            up = to_wire(method.client_update(fed.adapted), self.comm.wire_dtype)
            updates.append(ClientUpdate(str(c), up, len(fed.shards[c]), metrics))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(round=round_idx, client=c, loss=f"{metrics.get('train_loss', float('nan')):.3f}")
        comm_row = self.comm.record_round(downs, [size_of(u.payload, self.comm.wire_dtype) for u in updates])
        for c in sampled:
            self.versions.received(c, aggregations)
        self.state, accepted, rejected, skipped, next_payload = server_step(
            fed, method, self.state, updates, self.validator, self.comm.wire_dtype, self.validator.min_clients
        )
        rejections = [{"client": u.client_id, "reason": why} for u, why in rejected]
        row = round_row(round_idx, len(sampled), accepted, rejections, self.validator, skipped, comm_row, self.comm)
        complete_row(row, round_idx, self.trainer, self.cfg, self.final_round, self.evaluate)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        self._next_payload = next_payload
        return row

    # --- whole run ---------------------------------------------------------------------------------
    def run(self, start_round: int = 1) -> SimulationResult:
        fed = self.fed
        t_start = time.perf_counter()
        if self.state is None:
            self.initialise()
            assert self.state is not None  # initialise() set it
            fed.method.load_adapter(fed.adapted, fed.method.broadcast(self.state))
            fed.method.begin_round(fed.adapted, self.state.round)
            row0 = {"round": 0, **(self.evaluate() if self.cfg.eval.initial else {}), **self.trainer.round_report(0), "clipped": self.init_clipped,
                    "seconds": round(self.init_seconds, 3)}
            self.rows.append(row0)
            if self.on_round:
                self.on_round(row0)
        elif self.rows:  # restored from a checkpoint: a deployment re-sends the one-time tensors (module docstring)
            self.comm.record_resync(fed.adapted.get_state(fed.method.one_time_names(fed.adapted)), len(fed.shards))
        assert self.state is not None
        payload = getattr(self, "_next_payload", None) or to_wire(fed.method.broadcast(self.state), self.comm.wire_dtype)
        rounds = self.cfg.federation.rounds
        total_updates = sum(len(fed.sample_clients(r)) for r in range(start_round, rounds + 1))
        with tqdm(total=total_updates, desc="clients", unit="client", disable=not self.progress, leave=False) as bar:
            for r in gated_rounds(self, start_round, rounds):
                row = self.run_round(r, payload, bar)
                payload = self._next_payload
                self.rows.append(row)
                if self.on_round:
                    self.on_round(row)
        wall = time.perf_counter() - t_start
        return SimulationResult(self.rows, self.state, self.comm, self.summary(wall), fed)

    def summary(self, wall_seconds: float) -> dict[str, Any]:
        return run_summary(self, wall_seconds)
