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

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from fedsb.comm import (
    ClientDownload,
    CommLedger,
    LayerDims,
    Size,
    dtype_bytes,
    one_time_params,
    round_params,
    size_of,
    to_wire,
)
from fedsb.config import RunConfig
from fedsb.devices import client_rng
from fedsb.federation import Federation, build_federation, initialise_adapters
from fedsb.methods.base import ClientUpdate, Method, ServerState, is_base_update
from fedsb.training import build_optimizer, local_train
from fedsb.validation import UpdateValidator

ClientTrainer = Callable[[Federation, int, int, int], dict[str, float]]
RoundCallback = Callable[[dict[str, Any]], None]


def train_client(fed: Federation, client: int, round_idx: int, step_offset: int) -> dict[str, float]:
    """Default local training of one client (no DP): AdamW for the configured local steps."""
    cfg = fed.cfg
    opt = build_optimizer(fed.adapted, fed.lr, fed.head_lr, cfg.train.weight_decay)
    steps = fed.local_steps(client)
    return local_train(
        fed.adapted, fed.objective, fed.client_batches(client, round_idx), steps, opt, fed.schedule(), step_offset,
        cfg.train.max_grad_norm,
    )


@dataclass
class SimulationResult:
    rows: list[dict[str, Any]]
    state: ServerState
    comm: CommLedger
    summary: dict[str, Any]
    fed: Federation
    extra: dict[str, Any] = field(default_factory=dict)


def layer_dims(fed: Federation) -> list[LayerDims]:
    return [LayerDims(layer.d_out, layer.d_in) for layer in fed.adapted.layers.values()]


def analytic_round_params(fed: Federation, k: int) -> tuple[int, int]:
    head = sum(p.numel() for p in fed.adapted.head_parameters())
    return round_params(fed.cfg.method, fed.cfg.adapter.rank, layer_dims(fed), k, head)


def gated_rounds(runner: Any, start_round: int, rounds: int) -> Iterator[int]:
    """Rounds ``start_round..rounds``. Under DP (``runner.trainer.round_gate``) it stops before a round that would
    overspend the budget (setting ``runner.stop_reason``) and marks the last round the budget allows as
    ``runner.final_round``, so that round gets the final evaluation. Shared by the simulator and Flower."""
    gate = getattr(runner.trainer, "round_gate", None)
    for r in range(start_round, rounds + 1):
        if gate is not None:
            runner.stop_reason, last = gate(r, rounds)
            if runner.stop_reason:
                return
            if last:
                runner.final_round = r
        yield r


def server_step(
    fed: Federation, method: Method, state: ServerState, updates: list[ClientUpdate], validator: UpdateValidator, wire_dtype: str,
    min_valid: int,
) -> tuple[ServerState, list[ClientUpdate], list[tuple[ClientUpdate, str]], bool, dict[str, torch.Tensor]]:
    """The server's half of a round, shared by the simulator and the Flower strategy: validate the updates,
    aggregate them (or skip the round when fewer than ``min_valid`` are valid), build the next broadcast and
    apply it to the server's model. Returns (state, accepted, rejected, skipped, next payload); what the
    validator clipped or capped is in ``validator.clipped`` / ``validator.capped``."""
    names = method.upload_names(fed.adapted)
    # What every client started from (the broadcast adapter; FLoRA's fresh one): changes are measured from it.
    method.load_adapter(fed.adapted, to_wire(state.adapter, wire_dtype))
    reference = fed.adapted.get_state(names)
    accepted, rejected = validator.filter(updates, reference, names, fed.adapted.shapes(), wire_dtype)
    skipped = len(accepted) < min_valid
    if not skipped:
        state = method.aggregate(state, accepted)
    next_payload = to_wire(method.broadcast(state), wire_dtype)
    if not skipped:
        method.apply_base_update(fed.adapted, next_payload)
    method.load_adapter(fed.adapted, next_payload)
    return state, accepted, rejected, skipped, next_payload


class BaseVersions:
    """Which base-weight increments (FedEx-LoRA residual, FLoRA stack) each client holds, so that each is
    applied exactly once. Both engines use it: the Flower strategy to build every node's message, the
    simulator (one shared model, so no real catch-up) to count what a deployment sends.

    ``held[c]`` is the number of server aggregations whose increments client ``c`` has folded into its base
    (``ServerState.round`` counts aggregations; the broadcast after aggregation ``A`` carries increment ``A``).
    A client holding ``A`` is sent the broadcast without the increment (after a skipped round it already has
    it), one holding ``A - 1`` is sent it, one further behind (or unknown, -1) is sent the server's absolute
    residual instead. Every client starts at 0, at setup and after a resume (a resumed Flower run is a new
    run: every SuperNode starts from an empty state).
    """

    UNKNOWN = -1

    def __init__(self, clients: int) -> None:
        self.held = dict.fromkeys(range(clients), 0)

    def download(self, client: int, broadcast: dict[str, torch.Tensor], aggregations: int,
                 residual: Callable[[], dict[str, torch.Tensor]]) -> ClientDownload:
        """What ``client`` must be sent so that it holds the base of ``aggregations`` aggregations."""
        base = [k for k in broadcast if is_base_update(k)]
        held = self.held.get(client, self.UNKNOWN)
        if not base or held == aggregations - 1:
            return ClientDownload(dict(broadcast))
        adapter = {k: v for k, v in broadcast.items() if k not in base}
        return ClientDownload(adapter) if held == aggregations else ClientDownload(adapter, residual())

    def received(self, client: int, aggregations: int) -> None:
        self.held[client] = aggregations

    def forget(self, client: int) -> None:
        """The client's state is unknown (it failed while handling a message): send it the absolute residual."""
        self.held[client] = self.UNKNOWN


def cached(fn: Callable[[], dict[str, torch.Tensor]]) -> Callable[[], dict[str, torch.Tensor]]:
    """``fn()`` computed at most once (the server's residual, for the catch-ups of one round)."""
    memo: list[dict[str, torch.Tensor]] = []

    def get() -> dict[str, torch.Tensor]:
        if not memo:
            memo.append(fn())
        return memo[0]

    return get


def analytic_one_time(fed: Federation) -> dict[str, int]:
    """One-time costs per client from the formulas: B/A broadcast and the configured init source's upload."""
    cfg = fed.cfg
    down = one_time_params(cfg.method, cfg.adapter.rank, layer_dims(fed))["download"]
    if not fed.method.gradient_init:
        return {"download_params": down, "upload_params": 0, "upload_bytes": 0}
    from fedsb.federation import layer_shapes
    from fedsb.init_sources import default_lowrank_rank, expected_upload

    rank = cfg.init.lowrank_rank or default_lowrank_rank(cfg.adapter.rank, cfg.init.lowrank_bits)
    up = expected_upload(cfg.init.source, layer_shapes(fed), rank, cfg.init.lowrank_bits)
    return {"download_params": down, "upload_params": up["params"], "upload_bytes": up["bytes"]}


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

    # --- setup -----------------------------------------------------------------------------------
    def initialise(self) -> ServerState:
        fed = self.fed
        t0 = time.perf_counter()
        init_messages = getattr(self.trainer, "init_messages", None)  # a DP trainer privatises the init upload
        up = initialise_adapters(fed, init_messages(fed) if init_messages else None)
        self.init_seconds = time.perf_counter() - t0
        self.init_clipped = up["clipped"]
        one_time_down = fed.adapted.get_state(fed.method.one_time_names(fed.adapted))
        self.one_time = self.comm.record_setup(Size(up["upload_params"], up["upload_bytes"]), one_time_down, len(fed.shards))
        self.state = fed.method.initial_state(fed.adapted)
        return self.state

    def evaluate(self) -> dict[str, float]:
        fed = self.fed
        return fed.objective.evaluate(fed.adapted.model, fed.task.test, self.cfg.eval.batch_size)

    # --- one round ---------------------------------------------------------------------------------
    def run_round(self, round_idx: int, payload: dict[str, torch.Tensor], bar: tqdm | None = None) -> dict[str, Any]:
        fed, method = self.fed, self.fed.method
        assert self.state is not None
        t0 = time.perf_counter()
        sampled = fed.sample_clients(round_idx)
        sched_offset = (round_idx - 1) * max(fed.local_steps(c) for c in range(len(fed.shards)))
        aggregations = self.state.round
        residual = cached(fed.adapted.residual_state)  # the base every client must hold this round
        downs = [self.versions.download(c, payload, aggregations, residual) for c in sampled]
        updates: list[ClientUpdate] = []
        for c in sampled:
            method.load_adapter(fed.adapted, payload)
            with client_rng(fed.cfg.seed, round_idx, c, fed.device):  # dropout: a function of (seed, round, client)
                metrics = self.trainer(fed, c, round_idx, sched_offset)
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
        row: dict[str, Any] = {
            "round": round_idx,
            "clients_sampled": len(sampled),
            "clients_accepted": len(accepted),
            "rejected": [{"client": u.client_id, "reason": why} for u, why in rejected],
            "clipped": self.validator.clipped,
            "capped": self.validator.capped,
            "skipped": skipped,
            "train_loss": sum(u.metrics.get("train_loss", 0.0) for u in accepted) / max(len(accepted), 1) if accepted else None,
            **{f"{k}": v for k, v in comm_row.items() if k != "clients"},
            "upload_bytes_cum": self.comm.upload_bytes,
            "download_bytes_cum": self.comm.download_bytes,
        }
        extra_metrics = {k: v for u in accepted for k, v in u.metrics.items() if k != "train_loss"}
        row.update({k: v for k, v in extra_metrics.items() if isinstance(v, (int, float))})
        report = getattr(self.trainer, "round_report", None)  # e.g. epsilon spent so far (DP trainers)
        if report is not None:
            row.update(report(round_idx))
        if round_idx % self.cfg.eval.every == 0 or round_idx == self.cfg.federation.rounds or round_idx == self.final_round:
            row.update(self.evaluate())
        row["seconds"] = round(time.perf_counter() - t0, 3)
        self._next_payload = next_payload
        return row

    # --- whole run ---------------------------------------------------------------------------------
    def run(self, start_round: int = 1) -> SimulationResult:
        fed = self.fed
        t_start = time.perf_counter()
        if self.state is None:
            self.initialise()
            fed.method.load_adapter(fed.adapted, fed.method.broadcast(self.state))
            report = getattr(self.trainer, "round_report", None)  # DP: what the init has spent
            row0 = {"round": 0, **self.evaluate(), **(report(0) if report else {}), "clipped": self.init_clipped,
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
        fed, cfg = self.fed, self.cfg
        k_round = max(1, round(cfg.federation.fraction * cfg.federation.clients))
        up, down = analytic_round_params(fed, k_round)
        final = {k: v for k, v in self.rows[-1].items() if k in ("accuracy", "loss") or k.startswith(("acc", "eps"))}
        first = self.rows[0] if self.rows and self.rows[0]["round"] == 0 else {}
        wire = self.comm.wire_dtype

        return {
            "method": cfg.method,
            "rank": cfg.adapter.rank,
            "num_clients": cfg.federation.clients,
            "clients_per_round": k_round,
            "rounds": cfg.federation.rounds,
            "model": fed.loaded.source,
            "task": fed.task.name,
            "trainable_params": fed.adapted.num_trainable(),
            "initial_metrics": {k: v for k, v in first.items() if k in ("accuracy", "loss")},
            "final_metrics": final,
            "comm": {
                "wire_dtype": wire,
                "upload_params_per_client_round": up,
                "download_params_per_client_round": down,
                "upload_bytes_per_client_round": up * dtype_bytes(wire),
                "download_bytes_per_client_round": down * dtype_bytes(wire),
                "upload_params_total": self.comm.upload_params,
                "download_params_total": self.comm.download_params,
                "upload_bytes_total": self.comm.upload_bytes,
                "download_bytes_total": self.comm.download_bytes,
                "catchup_download_bytes_total": self.comm.catchup_download_bytes,
                "one_time_bytes": self.comm.one_time_upload_bytes + self.comm.one_time_download_bytes,
                "resync_download_params_total": self.comm.resync_download_params,
                "resync_download_bytes_total": self.comm.resync_download_bytes,
                "evaluate_download_bytes_total": self.comm.evaluate_download_bytes,
                "all_bytes_total": self.comm.total_bytes,
                "one_time": {
                    **self.one_time,
                    "upload_bytes_total": self.comm.one_time_upload_bytes,
                    "download_bytes_total": self.comm.one_time_download_bytes,
                },
                "analytic_one_time_per_client": analytic_one_time(fed),
            },
            **({"stopped_early": self.stop_reason} if self.stop_reason else {}),
            **({"privacy": self.trainer.privacy_summary()} if hasattr(self.trainer, "privacy_summary") else {}),
            "init_seconds": round(self.init_seconds, 3),
            "wall_seconds": round(wall_seconds, 3),
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
        }
