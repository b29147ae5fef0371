"""The fedsb ClientApp: one federated client per SuperNode, training with the simulator's own code.

A node learns the run's config from the server's ``setup`` message and builds the same
:class:`~fedsb.core.federation.Federation` as the simulator (``build_federation`` partitions deterministically by
seed, so ``partition-id`` i holds the simulator's client i). With ``data-path`` in its ``node_config`` a
node trains on its own local data file instead (deployment).

A node decides what it trains (DESIGN 5.1: a server that picks the architecture can make gradients leak
data): ``model-name``, ``data-path`` and ``task`` in its ``node_config`` pin the model, its own data file,
or the task its partition is cut from, and a server config naming another is refused before anything is
loaded (:func:`check_pins`). A node that pins nothing trains what the server names (simulation, where one
person runs every party; ``fedsb flower deploy`` pins both).

What a node must remember between rounds lives in ``Context.state`` (ClientApps may run in a fresh process
per message): the config, Fed-SB's one-time B/A, the base residual folded in so far (FedEx-LoRA, FLoRA)
and how many server aggregations it covers (:func:`receive_base`),
and the trainer's ``state_dict()`` (hook for per-client state such as a DP accountant, see
:func:`set_trainer`). Every message starts from a pristine model copy and restores that state, so one
process may serve many nodes (Ray actors in simulation).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from torch import Tensor

from fedsb.config import RunConfig, from_dict, validate
from fedsb.core.client import ClientTrainer, train_client
from fedsb.core.federation import Federation, build_federation, client_init_message, scheduled_clients
from fedsb.core.validation import all_finite
from fedsb.devices import client_rng
from fedsb.errors import FedsbError
from fedsb.flower import node_store
from fedsb.flower.records import array_record, dumps, from_record, record_int, to_record
from fedsb.flower.secagg import LEGACY_PARAMS, secagg_train, selective_secaggplus_mod
from fedsb.init.broadcast import decode_bases, layer_dims
from fedsb.methods.base import Method, is_base_update

STATE_META, STATE_ONETIME, STATE_RESIDUAL, STATE_TRAINER = "fedsb", "fedsb.onetime", "fedsb.residual", "fedsb.trainer"
STATE_BASE = "fedsb.base"  # how many server aggregations' base increments the node holds
STATE_GLOBAL = "fedsb.global"  # the last broadcast adapter, where the method sends only what changed (RoLoRA)
STATE_LOCAL = "fedsb.local"  # the tensors this node keeps for itself (FedSA-LoRA's B and head)

_TRAINER: ClientTrainer = train_client
_CACHE: dict[str, tuple[Federation, dict[str, Tensor]]] = {}
_DP: dict[str, Any] = {}  # config key -> the DP trainer of the cached federation (dp.mode != off)


def set_trainer(trainer: ClientTrainer) -> None:
    """Replace the local training function (default: ``fedsb.core.client.train_client``).

    A trainer with ``state_dict() -> dict`` (JSON) and ``load_state_dict(dict)`` keeps per-client state
    across rounds (e.g. a DP accountant): it is loaded from ``Context.state`` before and saved after every
    local round, once per node.
    """
    global _TRAINER
    _TRAINER = trainer


@dataclass
class Node:
    cfg: RunConfig
    fed: Federation
    client: int  # index into fed.shards
    partition: int
    wire: str
    planned: list[int]  # the rounds the server's (public) schedule gives this partition
    store: Path | None = None  # this node's own disk for its personal tensors (fedsb.flower.node_store)


class Refused(FedsbError):
    """This node will not train the round it was asked for (its own budget or schedule); the reply says why."""


def node_identity(context: Context) -> tuple[int, int | None, str | None]:
    nc = context.node_config
    if "partition-id" not in nc:
        raise FedsbError("this SuperNode has no partition-id; start it with --node-config 'partition-id=i num-partitions=N'")
    pid = int(nc["partition-id"])
    nparts = int(nc["num-partitions"]) if "num-partitions" in nc else None
    path = str(nc["data-path"]) if nc.get("data-path") else None
    return pid, nparts, path


def _same_path(a: str, b: str) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def check_pins(cfg: RunConfig, context: Context) -> None:
    """Refuse a server config whose model or data differs from what this SuperNode's ``node_config`` pins.

    ``model-name`` must equal ``model.name`` exactly (the same alias, directory or hub id); ``data-path``
    (the node's own file) refuses a server config that names another ``task.path``; ``task`` (partition
    mode) must equal ``task.path`` (as a path) or, without one, ``task.name``.
    """
    nc = context.node_config
    model = nc.get("model-name")
    if model and cfg.model.name != str(model):
        raise FedsbError(f"the server's config names model {cfg.model.name!r} but this SuperNode is pinned to {str(model)!r} "
                         "(node config model-name); refused: set model.name to it on the server or change the node config")
    data = nc.get("data-path")
    if data and cfg.task.path and not _same_path(cfg.task.path, str(data)):
        raise FedsbError(f"the server's config names data file {cfg.task.path!r} but this SuperNode trains only on its "
                         f"data-path {str(data)!r}; refused: leave task.path unset on the server or make the two equal")
    task = nc.get("task")
    if task and not data:
        same = _same_path(cfg.task.path, str(task)) if cfg.task.path else cfg.task.name == str(task)
        if not same:
            raise FedsbError(f"the server's config names task {cfg.task.path or cfg.task.name!r} but this SuperNode is pinned "
                             f"to {str(task)!r} (node config task); refused: run the server on that task or change the node config")


def federation_for(cfg: RunConfig) -> tuple[Federation, dict[str, Tensor]]:
    """Build (once per process and config) the federation and a snapshot of its freshly initialised adapters."""
    key = dumps(cfg.to_dict())
    if key not in _CACHE:
        torch.set_num_threads(cfg.train.threads or 1)
        fed = build_federation(cfg)
        if not fed.method.gradient_init:
            fed.method.init_adapter(fed.adapted)  # the server's seeded init: FFA's frozen A is never sent
        _CACHE.clear()  # one model per process at a time
        _DP.clear()
        if cfg.dp.mode != "off":
            from fedsb.privacy import make_dp_trainer

            _DP[key] = make_dp_trainer(fed)  # the simulator's DP trainer (client-level DP also wraps fed.method)
        _CACHE[key] = (fed, {k: v.clone() for k, v in fed.adapted.get_state().items()})
    return _CACHE[key]


def load_node(context: Context) -> Node:
    meta = context.state.config_records.get(STATE_META)
    if meta is None:
        raise FedsbError("this node has not received the run's setup message; the ServerApp must start with the setup round")
    cfg = validate(from_dict(json.loads(str(meta["config"]))))
    if cfg.dp.reproducible_noise:  # the server must not be able to switch this node to seed-derived noise
        from fedsb.privacy.noise import refuse_reproducible_noise

        refuse_reproducible_noise(cfg)
    check_pins(cfg, context)  # before any model or data named by the server is loaded
    pid, nparts, path = node_identity(context)
    client = pid
    # The schedule of the run as the server configured it (before a deployment node narrows cfg to one client).
    run = cfg.federation
    planned = [r for r in range(1, run.rounds + 1) if pid in scheduled_clients(cfg.seed, run.clients, run.fraction, r)]
    if path:  # deployment: the node's own data file is its whole shard
        cfg = cfg.model_copy(update={"task": cfg.task.model_copy(update={"path": path}), "federation": cfg.federation.model_copy(
            update={"clients": 1, "partition": "iid", "min_clients": 1})})
        client = 0
    elif nparts is not None and nparts != cfg.federation.clients:
        raise FedsbError(f"num-partitions = {nparts} on this SuperNode but federation.clients = {cfg.federation.clients}; make them equal")
    elif pid >= cfg.federation.clients:
        raise FedsbError(f"partition-id {pid} is out of range for federation.clients = {cfg.federation.clients}")
    fed, pristine = federation_for(cfg)
    # Restore this node's model: pristine adapters, then its one-time tensors and base residual.
    fed.adapted.set_state(pristine)
    st = context.state.array_records
    fed.adapted.set_residual_state(from_record(st[STATE_RESIDUAL]) if STATE_RESIDUAL in st else {})
    if STATE_ONETIME in st:
        fed.adapted.set_state(from_record(st[STATE_ONETIME]))
    store = node_store.store_dir(context, str(meta.get("run-id", "")), pid) if fed.method.local_names(fed.adapted) else None
    return Node(cfg, fed, client, pid, str(meta["wire-dtype"]), planned, store)


def dp_trainer(node: Node, context: Context) -> Any:
    """The cached DP trainer (None when DP is off) holding exactly this node's accountant from ``Context.state``.

    One process may serve many nodes, so the ledger is replaced (or emptied) on every message.
    """
    trainer = _DP.get(dumps(node.cfg.to_dict()))
    if trainer is None:
        return None
    rec = context.state.config_records.get(STATE_TRAINER)
    if rec is not None:
        trainer.load_state_dict(json.loads(str(rec["json"])))
    else:
        trainer.ledger.histories = {}
    return trainer


def save_dp(trainer: Any, context: Context) -> None:
    context.state[STATE_TRAINER] = ConfigRecord({"json": json.dumps(trainer.state_dict())})


def dp_report(node: Node, trainer: Any) -> dict[str, Any]:
    """What a sample-level DP node tells the server: its epsilon and its accountant history (JSON)."""
    if trainer is None or trainer.mode != "sample":
        return {}
    return {"epsilon": trainer.ledger.epsilon(node.client), "dp-history": json.dumps(trainer.ledger.history(node.client))}


def save_residual(node: Node, context: Context) -> None:
    res = node.fed.adapted.residual_state()
    if res:
        context.state[STATE_RESIDUAL] = to_record(res, "float32")


def held_base(context: Context) -> int:
    """How many server aggregations' base increments this node has folded in (0 after setup)."""
    rec = context.state.config_records.get(STATE_BASE)
    return record_int(rec, "aggregations", "node state") if rec is not None else 0


def check_increment(node: Node, increment: dict[str, Tensor]) -> None:
    """Refuse a base increment that does not fit this model (FedEx-LoRA: ``<layer>.residual``, d_out x d_in;
    FLoRA: ``<layer>.stack_A`` m x d_in with ``<layer>.stack_B`` d_out x m)."""
    layers = node.fed.adapted.layers
    for k, t in increment.items():
        name, _, part = k.rpartition(".")
        layer = layers.get(name)
        if layer is None:
            raise FedsbError(f"broadcast: base increment {k!r} names no adapted layer of this model; server and node configs differ")
        if part == "residual":
            ok = tuple(t.shape) == (layer.d_out, layer.d_in)
        else:
            a, b = increment.get(f"{name}.stack_A"), increment.get(f"{name}.stack_B")
            ok = (a is not None and b is not None and a.dim() == b.dim() == 2 and a.shape[1] == layer.d_in
                  and b.shape[0] == layer.d_out and a.shape[0] == b.shape[1])
        if not ok:
            raise FedsbError(f"broadcast: base increment {k!r} has shape {tuple(t.shape)}, which does not fit layer {name} "
                             f"({layer.d_out} x {layer.d_in}); server and node configs differ")


def receive_base(node: Node, context: Context, content: RecordDict, payload: dict[str, Tensor], base_round: int,
                 keep: bool) -> None:
    """Bring this node's base weights to the server's after ``base_round`` aggregations (FedEx-LoRA, FLoRA).

    The message carries the absolute residual (``sync``), or the increment of aggregation ``base_round``, or
    nothing when the node already holds it (a skipped round). An increment is applied only by a node holding
    exactly the one before, so none is ever applied twice; ``keep`` saves the result in ``Context.state``
    (training; client evaluation leaves the node's state as it was).
    """
    fed, method = node.fed, node.fed.method
    if not method.base_updates:
        return
    held = held_base(context)
    if "sync" in content.array_records:
        want = {f"{n}.residual": (layer.d_out, layer.d_in) for n, layer in fed.adapted.layers.items()}
        res = from_record(content.array_records["sync"], shapes=want, what="residual sync")
        if not set(res) <= set(want):
            raise FedsbError(f"residual sync: unexpected arrays {sorted(set(res) - set(want))[:3]}; server and node configs differ")
        fed.adapted.set_residual_state(res)
        held = base_round
    increment = {k: v for k, v in payload.items() if is_base_update(k)}
    if increment and held == base_round - 1:
        check_increment(node, increment)
        method.apply_base_update(fed.adapted, increment)
        held = base_round
    if held != base_round:
        raise FedsbError(f"this node holds the base increments of {held} aggregations and the message brings it to {base_round} "
                         "without the ones between; the server sends the absolute residual with its next message")
    if keep:
        save_residual(node, context)
        context.state[STATE_BASE] = ConfigRecord({"aggregations": held})


def full_broadcast(node: Node, context: Context, payload: dict[str, Tensor], keep: bool) -> dict[str, Tensor]:
    """The whole broadcast: where the method sends only what changed since this node's last message
    (:meth:`~fedsb.methods.base.Method.download`), the rest is the node's copy of the previous one."""
    method = node.fed.method
    if getattr(method.download, "__func__", None) is Method.download:  # (a DP wrapper delegates to the method)
        return payload
    st = context.state.array_records
    held = from_record(st[STATE_GLOBAL]) if STATE_GLOBAL in st else {}
    full = {**held, **payload}
    if keep:
        context.state[STATE_GLOBAL] = to_record({k: v for k, v in full.items() if not is_base_update(k)}, "float32")
    return full


def load_local(node: Node, context: Context) -> None:
    """Put back the tensors this node keeps for itself (none before its first round: it starts from the server's)."""
    if STATE_LOCAL in context.state.array_records and node.fed.method.local_names(node.fed.adapted):
        own = from_record(context.state.array_records[STATE_LOCAL], shapes=node.fed.adapted.shapes(), what="node state")
        node.fed.adapted.set_state(own)


def local_round(node: Node, context: Context, payload: dict[str, Tensor], base_applied: bool, rnd: int,
                step_offset: int, aggregations: int = 0) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Receive a broadcast and train: the same calls as ``Simulator.run_round`` makes for one client.

    Under DP the node first checks the round against its own schedule and accountant and raises
    :class:`Refused` (before anything is trained or changed) when it must not take part.
    """
    fed, method = node.fed, node.fed.method
    why = node_refusal(node, context, rnd)
    if why:
        raise Refused(why)
    dp = dp_trainer(node, context)
    if base_applied:
        method.load_adapter(fed.adapted, payload)
    else:
        method.receive(fed.adapted, payload)
    save_residual(node, context)
    load_local(node, context)
    method.begin_round(fed.adapted, aggregations)
    # Dropout draws from the global RNG: seeded per (seed, round, partition), as the simulator does per client.
    rng = client_rng(node.cfg.seed, rnd, node.partition, fed.device)
    if dp is not None:  # DP trainer: accountant loaded from and saved to Context.state around the round
        with rng:
            method.prepare_client(fed, node.client, rnd)
            metrics = dp(fed, node.client, rnd, step_offset)
        if dp.mode == "client":  # sample-level DP charges its steps inside; here the server's release of this round
            dp.charge_node_round(node.client)
        save_dp(dp, context)
        save_local(node, context, rnd)
        return method.client_update(fed.adapted), {**metrics, **dp_report(node, dp)}
    load_fn, state_fn = getattr(_TRAINER, "load_state_dict", None), getattr(_TRAINER, "state_dict", None)
    if callable(load_fn) and STATE_TRAINER in context.state.config_records:
        load_fn(json.loads(str(context.state.config_records[STATE_TRAINER]["json"])))
    with rng:
        method.prepare_client(fed, node.client, rnd)
        metrics = _TRAINER(fed, node.client, rnd, step_offset)
    if callable(state_fn):
        context.state[STATE_TRAINER] = ConfigRecord({"json": json.dumps(state_fn())})
    save_local(node, context, rnd)
    return method.client_update(fed.adapted), metrics


def save_local(node: Node, context: Context, rnd: int) -> None:
    """Keep this node's personal tensors after training round ``rnd``: in ``Context.state`` for the next
    message, and on the node's own disk (when it has a store) for a resumed run."""
    names = node.fed.method.local_names(node.fed.adapted)
    if names:
        mine = node.fed.adapted.get_state(names)
        if all_finite(mine):  # a diverged round leaves the node's personal tensors as they were
            context.state[STATE_LOCAL] = to_record(mine, "float32")
            if node.store is not None:
                node_store.save_round(node.store, rnd, mine)


def restore_local(node: Node, context: Context, config: ConfigRecord | ArrayRecord | MetricRecord, metrics: dict[str, Any]) -> None:
    """Setup of a personalised method: a resumed run takes the node's personal tensors from its own disk as
    of the server's checkpoint (``resume-round``; a new run has a new run id, so an empty store). The reply says
    whether the node has a store and which round it restored, for the server to check."""
    names = set(node.fed.method.local_names(node.fed.adapted))
    if not names:
        return
    metrics["local-store"] = int(node.store is not None)
    if node.store is None or "resume-round" not in config:
        return
    rnd, own = node_store.restore(node.store, record_int(config, "resume-round", "setup config"), node.fed.adapted.shapes(), names)
    if own:
        context.state[STATE_LOCAL] = to_record(own, "float32")
    elif STATE_LOCAL in context.state.array_records:
        del context.state.array_records[STATE_LOCAL]
    metrics["local-round"] = rnd


def export_personal(node: Node) -> None:
    """The node's own final model (shared A, its B and task head), written where only it can read it: its
    store, as ``adapter_state.safetensors`` and the PEFT adapter ``adapter/`` (the simulator writes the same
    as ``adapter-client-<i>/``)."""
    from fedsb.io.outputs import save_model

    if node.store is not None:
        save_model(node.fed, node.store / "adapter_state.safetensors", node.store / "adapter")


def node_refusal(node: Node, context: Context, rnd: int) -> str | None:
    """Why this node must not train round ``rnd`` (None: it may): under DP, a round outside its schedule or
    one that would take its own accountant past ``dp.epsilon`` (DESIGN.md 5.1: each party enforces its budget)."""
    dp = dp_trainer(node, context)
    return None if dp is None else dp.refusal(node.client, rnd, node.planned)


def refusal_reply(msg: Message, reason: str) -> Message:
    """An error reply carrying a node's one-line refusal (the strategy logs it with the rejected updates)."""
    return Message(error=Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


app = ClientApp(mods=[selective_secaggplus_mod])


@app.query("setup")
def setup(msg: Message, context: Context) -> Message:
    c = msg.content["config"]
    for key in (STATE_ONETIME, STATE_RESIDUAL, STATE_GLOBAL):  # a node's own tensors (STATE_LOCAL) outlive a setup
        if key in context.state.array_records:
            del context.state.array_records[key]
    if STATE_BASE in context.state.config_records:  # a set-up node holds no base increment
        del context.state.config_records[STATE_BASE]
    if STATE_TRAINER in context.state.config_records and json.loads(str(c["fedsb-config"]))["dp"]["mode"] == "off":
        del context.state.config_records[STATE_TRAINER]  # a DP accountant is never dropped by a new setup
    context.state[STATE_META] = ConfigRecord({"config": str(c["fedsb-config"]), "wire-dtype": str(c["wire-dtype"]),
                                              "run-id": str(c.get("run-id", ""))})
    node = load_node(context)
    metrics: dict[str, Any] = {"partition-id": node.partition, "num-examples": len(node.fed.shards[node.client])}
    restore_local(node, context, c, metrics)
    content = RecordDict()
    dp = dp_trainer(node, context)
    if dp is not None and "dp-histories" in c:  # a resumed run: the server's record of this node's accountant
        hist = json.loads(str(c["dp-histories"])).get(str(node.partition), [])
        dp.adopt_longer(node.client, [(float(a), float(q), int(n)) for a, q, n in hist])  # never lowers its own
    if bool(c["want-init"]):
        why = dp.over_budget(node.client, dp.init_cost(node.client), "the private init") if dp is not None else None
        if why:
            return refusal_reply(msg, why)
        if dp is None:
            init, n = client_init_message(node.fed, node.client)
        elif dp.mode == "sample":  # clipped, noised, charged to this node's accountant
            init, n = dp.init_message(node.fed, node.client)
        else:  # client-level: clipped here, clipped again and noised by the server
            init, n = dp.client_init(node.fed, node.client)
            dp.charge_node_init(node.client)
        content["init"] = to_record(init, "float32")
        metrics["init-examples"] = int(n)
    if dp is not None:
        save_dp(dp, context)
        report = dp_report(node, dp)
        if report:
            content["dp"] = ConfigRecord({"history": report.pop("dp-history")})
            metrics.update(report)
    content["metrics"] = MetricRecord(metrics)
    return Message(content=content, reply_to=msg)


@app.query("sync")
def sync(msg: Message, context: Context) -> Message:
    node = load_node(context)
    shapes = node.fed.adapted.shapes()
    if "onetime" in msg.content.array_records:
        names = set(node.fed.method.one_time_names(node.fed.adapted))
        one_time = from_record(msg.content.array_records["onetime"], shapes=shapes, what="one-time broadcast")
        if set(one_time) != names:
            raise FedsbError("the one-time broadcast does not name this model's B/A tensors; server and node configs differ")
        context.state[STATE_ONETIME] = to_record(one_time, "float32")
    elif "onetime-encoded" in msg.content.array_records:  # B and A in init.broadcast_bits, decoded as the server did
        what = "one-time broadcast"
        encoded = from_record(array_record(msg.content, "onetime-encoded", what), raw=True, what=what)
        one_time = decode_bases(encoded, layer_dims(node.fed.adapted), node.cfg.init.broadcast_bits, what)
        context.state[STATE_ONETIME] = to_record(one_time, "float32")
    return Message(content=RecordDict({"metrics": MetricRecord({"ok": 1})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    if LEGACY_PARAMS in msg.content.array_records:  # a SecAgg+ round (legacy FitIns layout)
        return secagg_train(msg, context)
    node = load_node(context)
    c = msg.content["config"]
    payload = from_record(array_record(msg.content, "arrays", "broadcast"), node.wire, node.fed.adapted.shapes(), what="broadcast")
    why = node_refusal(node, context, record_int(c, "server-round", "train config"))
    if why:  # before anything changes; an error reply, which the server records as a rejected update
        return refusal_reply(msg, why)
    aggregations = record_int(c, "base-round", "train config")
    receive_base(node, context, msg.content, payload, aggregations, keep=True)
    payload = full_broadcast(node, context, payload, keep=True)
    upload, metrics = local_round(node, context, payload, True, record_int(c, "server-round", "train config"),
                                  record_int(c, "step-offset", "train config"), aggregations)
    reply = RecordDict({
        "arrays": to_record(upload, node.wire),
        "metrics": MetricRecord({**scalar_metrics(metrics), "num-examples": len(node.fed.shards[node.client]),
                                 "partition-id": node.partition,
                                 # a personalised node's newest saved tensors: what a resume must restore at least
                                 **({"local-round": node_store.latest_round(node.store)} if node.store is not None else {})}),
    })
    if "dp-history" in metrics:  # sample-level DP: the node's whole accountant history, for the server's report
        reply["dp"] = ConfigRecord({"history": str(metrics["dp-history"])})
    return Message(content=reply, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the broadcast model on this node's test split (its own data file in deployment)."""
    node = load_node(context)
    payload = from_record(array_record(msg.content, "arrays", "broadcast"), node.wire, node.fed.adapted.shapes(), what="broadcast")
    # The server's base for this evaluation, not saved: the next train message brings what the node needs.
    receive_base(node, context, msg.content, payload, record_int(msg.content["config"], "base-round", "evaluate config"),
                 keep=False)
    fed, bs = node.fed, node.cfg.eval.batch_size
    fed.method.load_adapter(fed.adapted, full_broadcast(node, context, payload, keep=False))
    if not fed.method.personalised:
        metrics = fed.objective.evaluate(fed.adapted.model, fed.task.test, bs)
        return Message(content=RecordDict({"metrics": MetricRecord({**scalar_metrics(metrics), "num-examples": len(fed.task.test)})}),
                       reply_to=msg)
    # A personalised method: this node's own model, on the common test set and on its own test share (the
    # simulator's Simulator.evaluate, per client); in deployment the node's test split is its own share.
    load_local(node, context)
    share = fed.task.test if node.client == 0 and len(fed.shards) == 1 else \
        fed.test_shares()[node.client]
    common = scalar_metrics(fed.objective.evaluate(fed.adapted.model, fed.task.test, bs))
    own = scalar_metrics(fed.objective.evaluate(fed.adapted.model, share, bs)) if share else {}
    out: dict[str, int | float | list[int] | list[float]] = {**{f"common-{k}": v for k, v in common.items()}, **{f"own-{k}": v for k, v in own.items()},
           "own-examples": len(share), "train-examples": len(fed.shards[node.client]), "num-examples": len(fed.task.test)}
    if bool(msg.content["config"].get("final", False)):
        export_personal(node)
        out["exported"] = int(node.store is not None)
    return Message(content=RecordDict({"metrics": MetricRecord(out)}), reply_to=msg)
