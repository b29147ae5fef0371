"""A Flower (Message API) ``Strategy`` that runs any fedsb :class:`~fedsb.methods.base.Method`.

The strategy owns the server side of a run exactly as :class:`fedsb.simulation.simulator.Simulator` does (a model
copy for the LoRA-SB init, validation shapes and evaluation; the method's :class:`ServerState`; the
communication ledger; metrics rows), but its clients are Flower ClientApps:

- ``setup`` round (``query.setup``): every node gets the resolved config, builds the same Federation as
  the simulator and answers with its partition id, example count and (LoRA-SB, federated init) its
  gradient-sum message; the server runs ``initialise_adapters`` on the messages in partition order;
- ``sync`` round (``query.sync``): the one-time B/A broadcast (Fed-SB), at setup and again after a resume;
- training rounds (``train``): ``configure_train`` sends ``method.broadcast(state)``; ``aggregate_train``
  decodes and validates replies (``UpdateValidator``) and calls ``method.aggregate``.

Base-weight increments (FedEx-LoRA residual, FLoRA stack) are only meaningful to a client holding every
earlier increment. The server tracks, per partition, how many aggregations' increments the node holds
(:class:`fedsb.core.rounds.BaseVersions`) and names in every message the aggregation count it brings the node
to (``base-round``): a node one behind gets the pending increment, a node that already holds it (after a
skipped round) gets none, a node further behind (``federation.fraction < 1``, a resumed run, a failed
message) gets the server's absolute residual. The node checks the count too, so no increment is ever
applied twice. Client evaluation brings every node to the server's base the same way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy

from fedsb.comm.accounting import ClientDownload, CommLedger, Size, size_of, to_wire
from fedsb.config import RunConfig
from fedsb.core import rounds as _rounds
from fedsb.core.client import ClientTrainer, train_client
from fedsb.core.federation import Federation, build_federation, initialise_adapters
from fedsb.core.personal import personal_columns, personalised_metrics
from fedsb.core.rounds import BaseVersions, cached, complete_row, gated_rounds, round_row, server_step
from fedsb.core.summary import run_summary
from fedsb.core.validation import UpdateValidator
from fedsb.errors import FedsbError
from fedsb.flower import node_store
from fedsb.flower.records import array_record, dumps, from_record, record_int, record_size, to_record
from fedsb.flower.wire import MeteredGrid, summarise
from fedsb.init.sources import get_init_source
from fedsb.methods import METHODS
from fedsb.methods.base import ClientUpdate, ServerState
from fedsb.privacy import DPTrainer, make_dp_trainer
from fedsb.privacy.client_dp import ClientLevelDP

RoundCallback = Callable[[dict[str, Any]], None]
SETUP, SYNC = "query.setup", "query.sync"


@dataclass
class FlowerOptions:
    """Options of the Flower transport (``flower.*`` keys); everything else is fedsb's own config."""

    wire_dtype: str = "float32"
    timeout: float = 600.0  # seconds to wait for replies in one round
    connect_timeout: float = 120.0  # seconds to wait for the SuperNodes to connect
    secagg: bool = False
    secagg_clipping_range: float = 8.0
    secagg_quantization_range: int = 2**24
    secagg_modulus_range: int = 2**32
    client_eval: bool = False


class FedsbStrategy(Strategy):
    """Server side of a fedsb run over Flower. Attributes mirror ``Simulator`` so ``fedsb.io.checkpoint`` works."""

    def __init__(self, cfg: RunConfig, options: FlowerOptions | None = None, fed: Federation | None = None,
                 on_round: RoundCallback | None = None) -> None:
        from fedsb.privacy.noise import refuse_reproducible_noise

        refuse_reproducible_noise(cfg)  # the seed goes to every node: seed-derived noise is known to all
        self.cfg = cfg
        self.options = options or FlowerOptions()
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.fed = fed or build_federation(cfg)
        self.method = self.fed.method
        self.comm = CommLedger(wire_dtype=self.options.wire_dtype)
        # Format checks and the bounds of [federation] (DESIGN §5.2); setup() records each node's declared count.
        self.validator = UpdateValidator.from_config(cfg, fed=self.fed)
        self.on_round = on_round
        # The simulator's DP trainer on the server side: the accountants (sample-level: mirrored from the
        # nodes' reports; client-level: the server's own) and, for client-level DP, the noising aggregate.
        # The checkpoint saves its state_dict; the run summary reads its privacy_summary.
        self.dp: DPTrainer | None = make_dp_trainer(self.fed)
        self.trainer: ClientTrainer = self.dp or train_client
        self.method = self.fed.method  # client-level DP wraps it
        self.stop_reason: str | None = None  # Simulator.summary reads it (DP budget stops)
        self.final_round: int | None = None
        self.rows: list[dict[str, Any]] = []
        self.state: ServerState | None = None
        self.one_time: dict[str, int] = {}
        self.one_time_message: dict[str, torch.Tensor] = {}  # the encoded one-time broadcast (setup's sync round)
        self.init_seconds = 0.0
        self.payload: dict[str, torch.Tensor] = {}
        self.node_of: dict[int, int] = {}  # partition id -> node id
        self.examples: dict[int, int] = {}  # partition id -> declared example count
        self.versions = BaseVersions(cfg.federation.clients)  # partition id -> aggregations whose base it holds
        self.downs: list[ClientDownload] = []  # what this round's train messages carried (the ledger's downloads)
        self.uploads: list[Size] = []  # the sizes of this round's replies (the ledger's uploads)
        self.resume_wire: dict[str, Any] = {}  # the metered setup + sync of a resume (result_summary)
        self.pending_row: dict[str, Any] = {}
        self.started = time.perf_counter()
        # Over Flower the nodes keep their own tensors (FedSA-LoRA's B) in their Context.state; the server holds none.
        self.local_state: dict[int, dict[str, torch.Tensor]] = {}
        self.local_start: dict[str, torch.Tensor] = {}
        # Where they keep them on disk (fedsb.flower.node_store): this run's random id, which a resume reuses, and
        # each partition's newest saved round as it reported it (checkpointed; a resume must restore at least that).
        self.node_stores: dict[str, Any] = {"run_id": node_store.new_run_id(), "local_rounds": {}}
        self.personal_replies: tuple[list[tuple[int, dict[str, float]]], list[tuple[int, dict[str, float]]]] | None = None
        if self.options.secagg and not self.method.additive:
            raise FedsbError(
                f"flower.secagg: {self.method.name} cannot use secure aggregation, because its server needs each "
                f"client's individual tensors ({self.method.server_needs}), "
                f"not only their sum; use {', '.join(n for n, m in METHODS.items() if m.additive)}, or set flower.secagg = false"
            )

    # --- helpers -----------------------------------------------------------------------------------
    @property
    def partition_of(self) -> dict[int, int]:
        return {n: p for p, n in self.node_of.items()}

    def _message(self, content: RecordDict, node: int, message_type: str) -> Message:
        return Message(content=content, dst_node_id=node, message_type=message_type)

    def _fed_config(self) -> str:
        return dumps(self.cfg.to_dict())

    def record_history(self, pid: int, content: RecordDict) -> None:
        """Sample-level DP: adopt a node's reported accountant history (JSON ``[sigma, q, steps]`` triples)."""
        if self.dp is None or self.dp.mode != "sample" or "dp" not in content.config_records:
            return
        from fedsb.privacy.accounting import merge_history

        try:
            hist = merge_history((float(a), float(q), int(n)) for a, q, n in json.loads(str(content["dp"]["history"])))
        except (TypeError, ValueError) as e:
            raise FedsbError(f"partition {pid} sent an invalid accountant history ({e})") from None
        self.dp.ledger.histories[str(pid)] = hist

    def wait_for_nodes(self, grid: Any) -> list[int]:
        want = self.cfg.federation.clients
        t0 = time.time()
        while True:
            ids = sorted(grid.get_node_ids())
            if len(ids) >= want:
                return ids
            if time.time() - t0 > self.options.connect_timeout:
                raise FedsbError(
                    f"only {len(ids)} of federation.clients = {want} SuperNodes connected within "
                    f"{self.options.connect_timeout:.0f} s; start {want} SuperNodes (one per partition-id) or lower federation.clients"
                )
            time.sleep(0.2)

    # --- setup: config to every node, LoRA-SB init round, one-time broadcast -----------------------------
    def setup(self, grid: MeteredGrid, resume: bool = False, resumed_at: int = 0) -> None:
        """Config to every node, the LoRA-SB init round and the one-time broadcast; after a resume (from the
        checkpoint of round ``resumed_at``) only the config, each node restoring what it keeps on its own disk."""
        fed, cfg = self.fed, self.cfg
        grid.phase, grid.round = "setup", 0
        nodes = self.wait_for_nodes(grid)
        source = get_init_source(cfg.init.source, cfg.init.eta)
        want_init = fed.method.gradient_init and source.federated and not resume
        cfg_json = self._fed_config()
        setup_cfg: dict[str, Any] = {"fedsb-config": cfg_json, "wire-dtype": self.options.wire_dtype, "want-init": want_init,
                                     "run-id": self.node_stores["run_id"]}
        if resume:  # nodes of a personalised method restore their own tensors as of this round
            setup_cfg["resume-round"] = resumed_at
        if resume and self.dp is not None:  # each node keeps the longer of this record and its own accountant
            setup_cfg["dp-histories"] = json.dumps({k: [list(e) for e in v] for k, v in self.dp.ledger.histories.items()})
        msgs = [self._message(RecordDict({"config": ConfigRecord(dict(setup_cfg))}), n, SETUP) for n in nodes]
        t0 = time.perf_counter()
        replies = self._ok(grid.send_and_receive(msgs, timeout=self.options.timeout), "setup")
        init_msgs: dict[int, tuple[dict[str, torch.Tensor], int]] = {}
        self.node_of = {}
        for r in replies:
            m = r.content["metrics"]
            pid, node = record_int(m, "partition-id", "setup reply"), int(r.metadata.src_node_id)
            if not 0 <= pid < cfg.federation.clients or pid in self.node_of:
                raise FedsbError(
                    f"SuperNode {node} reports partition-id {pid}, which is out of range or taken; give each SuperNode a "
                    f"distinct --node-config 'partition-id=i num-partitions={cfg.federation.clients}' with i < {cfg.federation.clients}"
                )
            self.node_of[pid] = node
            self.examples[pid] = record_int(m, "num-examples", f"setup reply of partition {pid}")
            if not resume:
                self.record_history(pid, r.content)
            if want_init:
                what = f"init message of partition {pid}"
                init_msgs[pid] = (from_record(array_record(r.content, "init", what), raw=True, what=what),
                                  record_int(m, "init-examples", what))
        if len(self.node_of) < cfg.federation.clients:
            raise FedsbError(f"{len(self.node_of)} of {cfg.federation.clients} partitions answered the setup round; check the SuperNode logs")
        self.validator.declare({str(p): n for p, n in self.examples.items()})  # every round's count must match
        if resume:
            self.check_restored(replies)
            return
        client_messages = [init_msgs[p] for p in sorted(init_msgs)] if want_init else None
        if client_messages and isinstance(self.dp, ClientLevelDP):
            client_messages = self.dp.add_init_noise(client_messages)  # re-clipped and noised here
        up = initialise_adapters(fed, client_messages)
        self.init_seconds = time.perf_counter() - t0
        self.one_time_message = up["broadcast"]  # the encoded B and A the sync round sends (fedsb.init.broadcast)
        self.one_time = self.comm.record_setup(Size(up["upload_params"], up["upload_bytes"]), up["broadcast_size"], len(fed.shards))
        self.state = fed.method.initial_state(fed.adapted)
        self.sync(grid, next_round=1)
        fed.method.load_adapter(fed.adapted, fed.method.broadcast(self.state))
        fed.method.begin_round(fed.adapted, self.state.round)
        self.payload = to_wire(fed.method.broadcast(self.state), self.options.wire_dtype)
        wire = summarise(grid.take("setup") + grid.take("sync"))
        row0 = {"round": 0, **(self.evaluate() if self.cfg.eval.initial else {}), **self.trainer.round_report(0), "clipped": up["clipped"],
                "seconds": round(self.init_seconds, 3),
                **{k: v for k, v in wire.items()}}
        self._emit(row0)

    def check_restored(self, replies: list[Message]) -> None:
        """A resume of a personalised method: refuse when a node keeps its own tensors only in memory, or restored
        an older round than it reported having saved (its store lost rounds, or is another directory): either way
        its tensors would silently restart from older values."""
        if not self.method.local_names(self.fed.adapted):
            return
        for r in replies:
            m = r.content["metrics"]
            pid = record_int(m, "partition-id", "setup reply")
            if not record_int(m, "local-store", f"setup reply of partition {pid}"):
                raise FedsbError(
                    f"flower.resume: partition {pid} keeps its {self.method.name} tensors only in memory, so a resumed run would "
                    "restart them from their initial values; start its SuperNode with --node-config 'state-dir=DIR' "
                    "(or FEDSB_NODE_STATE_DIR) from the first run on, or start the run afresh"
                )
            held = record_int(m, "local-round", f"setup reply of partition {pid}")
            saved = int(self.node_stores["local_rounds"].get(str(pid), 0))
            if held < saved:
                raise FedsbError(
                    f"flower.resume: partition {pid} restored its own {self.method.name} tensors from round {held} but reported "
                    f"saving them after round {saved}; its state-dir lost rounds or is another directory: give it back its "
                    "state-dir, or start the run afresh"
                )

    def sync(self, grid: MeteredGrid, next_round: int, resume: bool = False) -> None:
        """Send the one-time tensors (Fed-SB's B and A) to every node. Nodes have just been set up, so they hold
        no base increment: each catches up the first time it is sent a round (``BaseVersions``)."""
        fed = self.fed
        grid.phase, grid.round = "sync", next_round - 1
        self.versions = BaseVersions(self.cfg.federation.clients)
        one_time = fed.adapted.get_state(fed.method.one_time_names(fed.adapted))
        if not one_time:
            return
        # At setup the encoded broadcast (``onetime-encoded`` below 32 bits: packed codes and scales, decoded by the
        # node as the server decoded them); after a resume the decoded float32 bases, since the server keeps no codes.
        bits = self.cfg.init.broadcast_bits
        encoded = not resume and fed.method.gradient_init and bits != 32
        record = to_record(self.one_time_message, "float16" if bits == 16 else "float32") if encoded else to_record(one_time, "float32")
        msgs = [self._message(RecordDict({"onetime-encoded" if encoded else "onetime": record}), n, SYNC) for n in self.node_of.values()]
        self._ok(grid.send_and_receive(msgs, timeout=self.options.timeout), "sync")
        if resume:  # at setup the ledger has it as the one-time broadcast already
            self.comm.record_resync(one_time, len(msgs))

    def _ok(self, replies: Iterable[Message], what: str) -> list[Message]:
        out = list(replies)
        bad = [r for r in out if r.has_error()]
        if bad:
            err = bad[0].error
            raise FedsbError(f"{len(bad)} node(s) failed in the {what} round: {err.reason}")
        return out

    def evaluate(self) -> dict[str, float]:
        """The server's test metrics; for a personalised method, the nodes' evaluation of their own models (before
        the first round every node holds the server's model, which the server scores on each test share)."""
        fed, bs = self.fed, self.cfg.eval.batch_size
        if fed.method.personalised and self.personal_replies is not None:
            common, own = self.personal_replies
            self.personal_replies = None
            return personalised_metrics(common, own)
        out = fed.objective.evaluate(fed.adapted.model, fed.task.test, bs)
        if fed.method.personalised or self.cfg.eval.personal == "on":
            shares = fed.test_shares()
            own = [(len(sh), fed.objective.evaluate(fed.adapted.model, sh, bs)) for sh in shares]
            if fed.method.personalised:
                return personalised_metrics([(len(s), out) for s in fed.shards], own)
            out.update(personal_columns(own))
        return out

    # --- Flower Strategy interface ------------------------------------------------------------------
    def step_offset(self, round_idx: int) -> int:
        fed = self.fed
        return (round_idx - 1) * max(fed.local_steps(c) for c in range(len(fed.shards)))

    def configure_train(self, server_round: int, arrays: ArrayRecord | None, config: ConfigRecord | None,
                        grid: Any) -> Iterable[Message]:
        """One ``train`` message per sampled node: the broadcast (wire dtype) and the round's schedule offset.

        The pending base increment goes only to a node that needs exactly it, the absolute residual (``sync``)
        to one further behind; ``base-round`` names the aggregation count the message brings the node to."""
        assert self.state is not None
        extra = dict(config) if config else {}
        msgs, self.downs = [], []
        for pid, down, content in self._base_messages(self.fed.sample_clients(server_round)):
            content["config"] = ConfigRecord({"server-round": server_round, "step-offset": self.step_offset(server_round),
                                              "base-round": self.state.round, **extra})
            msgs.append(self._message(content, self.node_of[pid], MessageType.TRAIN))
            self.downs.append(down)
        return msgs

    def _base_messages(self, partitions: Iterable[int]) -> list[tuple[int, ClientDownload, RecordDict]]:
        """Per partition: what it must be sent (``BaseVersions``) and the records carrying it."""
        assert self.state is not None
        residual = cached(self.fed.adapted.residual_state)
        records: dict[tuple[str, ...], ArrayRecord] = {}  # at most two broadcasts: with and without the increment
        catchup: ArrayRecord | None = None
        out = []
        for pid in partitions:
            down = self.versions.download(pid, self.payload, self.state.round, residual, self.method)
            key = tuple(down.broadcast)
            if key not in records:
                records[key] = to_record(down.broadcast, self.options.wire_dtype)
            content = RecordDict({"arrays": records[key]})
            if down.catchup:
                catchup = catchup if catchup is not None else to_record(down.catchup, "float32")
                content["sync"] = catchup
            out.append((pid, down, content))
        return out

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Decode and validate the uploads, aggregate with the method, update the server model."""
        fed = self.fed
        updates: list[ClientUpdate] = []
        failed: list[dict[str, str]] = []
        part = self.partition_of
        shapes = fed.adapted.shapes()
        assert self.state is not None
        self.uploads = []
        for r in replies:
            node = int(r.metadata.src_node_id)
            pid = part.get(node)
            if r.has_error():
                if pid is not None:
                    self.versions.forget(pid)  # it may have stopped half-way: send it the absolute residual next time
                failed.append({"client": str(pid if pid is not None else f"node {node}"), "reason": f"node error: {r.error.reason}"})
                continue
            if pid is None:
                failed.append({"client": f"node {node}", "reason": "reply from a node that is not part of this run"})
                continue
            # It handled the message, so it holds the base the message named; what it sent travelled, valid or not.
            self.versions.received(pid, self.state.round)
            self.uploads.append(record_size(r.content.array_records["arrays"]) if "arrays" in r.content.array_records else Size(0, 0))
            try:
                what = f"upload of client {pid}"
                payload = from_record(array_record(r.content, "arrays", what), self.options.wire_dtype, shapes, what=what)
                m = r.content["metrics"]
                metrics = {k: float(v) for k, v in m.items() if isinstance(v, (int, float))
                           and k not in ("num-examples", "partition-id", "local-round")}
                if "local-round" in m:  # a personalised node's newest saved tensors (check_restored)
                    self.node_stores["local_rounds"][str(pid)] = record_int(m, "local-round", what)
                n = m["num-examples"]
            except (FedsbError, KeyError, TypeError, ValueError) as e:
                failed.append({"client": str(pid), "reason": str(e)})
                continue
            try:
                self.record_history(pid, r.content)  # spent whether or not the update is accepted
            except FedsbError as e:
                failed.append({"client": str(pid), "reason": str(e)})
                continue
            # A count that is no int goes to the validator as sent: it rejects the update, naming the count.
            updates.append(ClientUpdate(str(pid), payload, int(n) if isinstance(n, int) else cast(int, n), metrics))
        updates.sort(key=lambda u: int(u.client_id))  # the simulator's order (float sums depend on it)
        return self._aggregate(server_round, updates, failed)

    def _aggregate(self, server_round: int, updates: list[ClientUpdate], failed: list[dict[str, str]],
                   secure: bool = False, comm_uploads: list[dict[str, torch.Tensor]] | None = None,
                   ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        fed, method = self.fed, self.method
        assert self.state is not None
        if comm_uploads is not None:  # SecAgg+: every sampled node got the broadcast (additive methods: no base
            # increments) and each of k clients uploaded one masked tensor set of the mean's size
            downs = [ClientDownload(self.payload) for _ in fed.sample_clients(server_round)]
            ups = [size_of(u, self.options.wire_dtype) for u in comm_uploads]
        else:
            downs, ups = self.downs, self.uploads
        comm_row = self.comm.record_round(downs, ups)
        need = 1 if secure else self.validator.min_clients
        # SecAgg+ shows the server only the mean: no single update to bound (README "Secure aggregation").
        validator = self.validator.without_bounds() if secure else self.validator
        self.state, accepted, rejected, skipped, next_payload = server_step(
            fed, method, self.state, updates, validator, self.options.wire_dtype, need
        )
        self.payload = next_payload
        rejections = failed + [{"client": u.client_id, "reason": why} for u, why in rejected]
        self.pending_row = round_row(server_round, len(fed.sample_clients(server_round)), accepted, rejections, validator,
                                     skipped, comm_row, self.comm)
        return to_record(self.state.adapter, "float32"), MetricRecord({"clients_accepted": len(accepted)})

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord | None, config: ConfigRecord | None,
                           grid: Any) -> Iterable[Message]:
        """Federated evaluation on each node's local test data (``flower.client-eval``); off by default.

        Each node is brought to the server's base for the evaluation as for training (the pending increment or
        the absolute residual), without keeping it: the next train message still brings what it needs."""
        if not self.client_eval(server_round):
            return []
        assert self.state is not None
        msgs, downs = [], []
        for pid, down, content in self._base_messages(sorted(self.node_of)):
            final = server_round in (self.final_round, self.cfg.federation.rounds)  # personalised nodes export their own model
            content["config"] = ConfigRecord({"server-round": server_round, "base-round": self.state.round, "final": final})
            msgs.append(self._message(content, self.node_of[pid], MessageType.EVALUATE))
            downs.append(down)
        self.comm.record_evaluate(downs)
        return msgs

    def client_eval(self, server_round: int) -> bool:
        """Whether round ``server_round`` has a client evaluation: ``flower.client-eval``, and every evaluation
        round of a personalised method (only the nodes hold their own models)."""
        return self.options.client_eval or (self.method.personalised and _rounds.is_eval_round(self.cfg, server_round, self.final_round))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        out: dict[str, float] = {}
        total = 0
        replies = [r for r in replies if not r.has_error()]
        if self.method.personalised:  # each node's own model: the row's metrics come from these (``evaluate``)
            common, own = [], []
            for r in replies:
                m = r.content["metrics"]
                vals = {k: float(v) for k, v in m.items() if isinstance(v, (int, float))}
                common.append((record_int(m, "train-examples", "evaluate reply"),
                               {k.removeprefix("common-"): v for k, v in vals.items() if k.startswith("common-")}))
                own.append((record_int(m, "own-examples", "evaluate reply"),
                            {k.removeprefix("own-"): v for k, v in vals.items() if k.startswith("own-")}))
            self.personal_replies = (common, own)
            return None
        for r in replies:
            m = r.content["metrics"]
            n = record_int(m, "num-examples", "evaluate reply")
            total += n
            for k, v in m.items():
                if k != "num-examples" and isinstance(v, (int, float)):
                    out[f"client_{k}"] = out.get(f"client_{k}", 0.0) + n * float(v)
        return MetricRecord({k: v / total for k, v in out.items()}) if total else None

    def summary(self) -> None:
        print(f"fedsb strategy: {self.method.name} r={self.cfg.adapter.rank}, {self.cfg.federation.clients} clients, "
              f"wire {self.options.wire_dtype}, secagg {self.options.secagg}")

    # --- rounds -----------------------------------------------------------------------------------------
    def finish_round(self, server_round: int, wire_entries: list, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        row = dict(self.pending_row)
        row.update(summarise(wire_entries))
        row.update(extra or {})
        complete_row(row, server_round, self.trainer, self.cfg, self.final_round, self.evaluate)
        row["seconds"] = round(time.perf_counter() - self._t_round, 3)
        self._emit(row)
        return row

    def _emit(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.on_round:
            self.on_round(row)

    def run(self, grid: Any, start_round: int = 1, context: Any = None) -> None:
        """Setup (or re-sync after a resume), then the training rounds ``start_round..federation.rounds``."""
        from fedsb.flower.secagg import SecAggRunner

        metered = grid if isinstance(grid, MeteredGrid) else MeteredGrid(grid)
        self.started = time.perf_counter()
        if self.state is None:
            self.setup(metered)
        else:
            self.setup(metered, resume=True, resumed_at=start_round - 1)
            self.sync(metered, next_round=start_round, resume=True)
            self.payload = to_wire(self.method.broadcast(self.state), self.options.wire_dtype)
            wire = summarise(metered.take("setup") + metered.take("sync"))  # the ledger's resync, as metered
            self.resume_wire = {k: v for k, v in wire.items() if k != "wire_messages"}
        secagg = SecAggRunner(self, metered, context) if self.options.secagg else None
        try:
            rounds = self.cfg.federation.rounds
            for r in gated_rounds(self, start_round, rounds):  # DP: the simulator's stopping rule
                self._t_round = time.perf_counter()
                metered.round = r
                extra: dict[str, Any] = {}
                if secagg is not None:
                    metered.phase = "secagg"
                    secagg.round(r)
                else:
                    metered.phase = "train"
                    replies = metered.send_and_receive(self.configure_train(r, None, None, metered), timeout=self.options.timeout)
                    self.aggregate_train(r, replies)
                if self.client_eval(r):
                    metered.phase = "evaluate"
                    ev = self.aggregate_evaluate(r, metered.send_and_receive(self.configure_evaluate(r, None, None, metered),
                                                                            timeout=self.options.timeout))
                    extra.update(dict(ev) if ev else {})
                entries = [e for e in metered.take(rnd=r) if e.phase != "evaluate"]
                self.finish_round(r, entries, extra)
                metered.take()
        finally:
            if secagg is not None:
                secagg.close()

    def result_summary(self) -> dict[str, Any]:
        """``summary.json``: the simulator's summary plus the Flower transport's measured bytes."""
        s = run_summary(self, time.perf_counter() - self.started)
        rounds = [r for r in self.rows if r.get("round", 0) > 0]
        s["flower"] = {
            "wire_dtype": self.options.wire_dtype,
            "secagg": self.options.secagg,
            "wire_upload_payload_bytes_total": sum(r.get("wire_upload_payload_bytes", 0) for r in rounds),
            "wire_download_payload_bytes_total": sum(r.get("wire_download_payload_bytes", 0) for r in rounds),
            "wire_upload_message_bytes_total": sum(r.get("wire_upload_message_bytes", 0) for r in rounds),
            "wire_download_message_bytes_total": sum(r.get("wire_download_message_bytes", 0) for r in rounds),
            "wire_setup": {k: v for k, v in self.rows[0].items() if k.startswith("wire_") and k != "wire_messages"}
            if self.rows and self.rows[0].get("round") == 0 else {},
            "wire_resume": self.resume_wire,  # this resume's setup and one-time re-send
            "partitions": {str(p): n for p, n in sorted(self.node_of.items())},
        }
        return s
