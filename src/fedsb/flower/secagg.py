"""Secure aggregation (Flower's SecAgg+) for the additive methods: the server only sees the weighted mean.

Flower 1.41 has SecAgg+ only as a legacy workflow (``flwr.server.workflow.SecAggPlusWorkflow``); it is
driven here once per round from fedsb's own ServerApp loop, through a thin legacy strategy that samples
the same clients as the simulator and hands the unmasked mean back to fedsb. The mean is passed to the
method's own ``aggregate`` as a single update of weight 1 (``sum_i p_i x_i`` is exactly what every additive
method computes), so no aggregation rule is written twice.

Which methods: those with ``Method.additive`` (Fed-SB, FFA-LoRA, and FedIT, whose aggregate is a plain mean
of the factors: SecAgg+ gives FedIT's usual result, which is itself inexact as a mean of client models).
FedEx-LoRA needs the products ``B_i A_i`` of individual clients and FLoRA stacks individual factors, so
neither can work from a sum; the strategy refuses them.

Client-level DP under SecAgg+: the server sees only the sum of the uploads, so it cannot re-clip each
client's change to ``dp.max_grad_norm`` as it does without SecAgg+. Clipping stays on the clients (an
honest-client assumption: one client that skips it voids the guarantee for all); the runner switches the
server's re-clipping off and ``summary.json`` says so (``privacy.clipping``).

Precision: clients clip to ``+-clipping_range`` (fedsb raises instead of clipping silently) and quantize
stochastically to ``quantization_range`` levels after scaling by ``num_examples / max_weight``; the server
sets ``max_weight`` to the largest declared example count, so the error is about one quantization step
``2 * clipping_range / quantization_range`` (1e-6 with the defaults).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitIns, FitRes, Scalar, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.server.strategy import FedAvg as LegacyFedAvg

from fedsb.errors import FedsbError
from fedsb.flower.records import from_record
from fedsb.methods.base import ClientUpdate
from fedsb.privacy.client_dp import ClientLevelDP

if TYPE_CHECKING:
    from flwr.serverapp import Grid

    from fedsb.flower.strategy import FedsbStrategy
    from fedsb.flower.wire import MeteredGrid

LEGACY_PARAMS = "fitins.parameters"


def as_grid(grid: MeteredGrid) -> Grid:
    """``grid`` where Flower wants its ``Grid``: a MeteredGrid passes every call it does not meter through
    (``__getattr__``), which the type checker cannot see."""
    return cast("Grid", grid)


def selective_secaggplus_mod(msg: Message, ctxt: Context, call_next: Any) -> Message:
    """``secaggplus_mod`` for SecAgg+ stages only; plain fedsb ``train`` messages pass straight through."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def uses_example_weights(cfg: Any) -> bool:
    """Client-level DP needs the plain sum of the clipped updates (uniform weights), whatever ``weighting`` says."""
    return cfg.federation.weighting == "examples" and cfg.dp.mode != "client"


def secagg_train(msg: Message, context: Context) -> Message:
    """Client side of the collect-masked-vectors stage: train, check the clipping range, reply as a FitRes."""
    from fedsb.flower.clientapp import load_node, local_round, scalar_metrics

    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    cfg = fitins.config
    node = load_node(context)
    names = json.loads(str(cfg["fedsb-names"]))
    arrays = parameters_to_ndarrays(fitins.parameters)
    if len(arrays) != len(names):
        raise FedsbError(f"SecAgg+ broadcast holds {len(arrays)} arrays for {len(names)} names")
    rec = ArrayRecord({n: Array(np.asarray(a, dtype=np.float32)) for n, a in zip(names, arrays, strict=True)})
    payload = from_record(rec, "float32", node.fed.adapted.shapes(), what="SecAgg+ broadcast")
    upload, metrics = local_round(node, context, payload, bool(cfg["base-applied"]), int(cfg["server-round"]), int(cfg["step-offset"]))
    clip = float(cfg["fedsb-clip"])
    names_up = sorted(upload)
    for k in names_up:
        peak = float(upload[k].abs().max())
        if peak > clip:
            raise FedsbError(f"{k} has |value| {peak:.3g} > flower.secagg-clipping-range = {clip:g}; raise the clipping range")
    n = len(node.fed.shards[node.client])
    weight = n if uses_example_weights(node.cfg) else 1
    extra = {"dp-history": str(metrics["dp-history"])} if "dp-history" in metrics else {}  # sample-level DP accountant
    fitres = FitRes(status=Status(Code.OK, ""), parameters=ndarrays_to_parameters([upload[k].numpy() for k in names_up]),
                    num_examples=weight, metrics={**scalar_metrics(metrics), "partition-id": node.partition, **extra})
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


class _Glue(LegacyFedAvg):
    """The legacy strategy SecAgg+ calls: fedsb's client sampling in, the unmasked mean out."""

    def __init__(self, runner: SecAggRunner) -> None:
        super().__init__(fraction_evaluate=0.0, min_fit_clients=2, min_available_clients=2)
        self.runner = runner
        self.mean: list[np.ndarray] | None = None
        self.client_metrics: list[dict[str, Any]] = []

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list[tuple[Any, FitIns]]:
        from flwr.server.compat.grid_client_proxy import GridClientProxy

        s = self.runner.strategy
        out = []
        for pid in s.fed.sample_clients(server_round):
            config: dict[str, Scalar] = {"server-round": server_round, "step-offset": s.step_offset(server_round), "base-applied": False,
                      "fedsb-names": json.dumps(self.runner.down_names), "fedsb-clip": s.options.secagg_clipping_range}
            out.append((GridClientProxy(s.node_of[pid], as_grid(self.runner.grid), 0), FitIns(parameters, config)))
        return out

    def aggregate_fit(self, server_round: int, results: list[tuple[Any, FitRes]], failures: list[Any]) -> tuple[Any, dict]:
        if not results:
            return None, {}
        self.mean = parameters_to_ndarrays(results[0][1].parameters)  # the workflow put the mean in every result
        self.client_metrics = [dict(r.metrics) for _, r in results]
        self.failures = len(failures)
        return results[0][1].parameters, {}


class SecAggRunner:
    """Runs one SecAgg+ aggregation per round for a :class:`FedsbStrategy`."""

    def __init__(self, strategy: FedsbStrategy, grid: MeteredGrid, context: Context | None) -> None:
        from flwr.server import LegacyContext, ServerConfig
        from flwr.server.workflow import SecAggPlusWorkflow

        if context is None:
            raise FedsbError("SecAgg+ needs the ServerApp's Context; call FedsbStrategy.run(grid, context=context)")
        self.strategy, self.grid = strategy, grid
        if isinstance(strategy.dp, ClientLevelDP):
            strategy.dp.reclip = False  # only the sum is visible: clipping stays on the clients (module docstring)
        o = strategy.options
        self.glue = _Glue(self)
        self.lctx = LegacyContext(context, config=ServerConfig(num_rounds=strategy.cfg.federation.rounds), strategy=self.glue)
        examples = strategy.examples.values()
        max_weight = float(max(examples)) if uses_example_weights(strategy.cfg) and examples else 1.0
        self.workflow = SecAggPlusWorkflow(
            num_shares=1.0, reconstruction_threshold=0.5, max_weight=max_weight, clipping_range=o.secagg_clipping_range,
            quantization_range=int(o.secagg_quantization_range), modulus_range=int(o.secagg_modulus_range), timeout=o.timeout,
        )
        self.down_names: list[str] = []

    def round(self, r: int) -> None:
        from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

        s = self.strategy
        payload = s.payload
        self.down_names = sorted(payload)
        params = ndarrays_to_parameters([payload[k].numpy() for k in self.down_names])
        self.lctx.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(params, keep_input=True)
        self.lctx.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: r})
        self.glue.mean = None
        self.workflow(as_grid(self.grid), self.lctx)
        if self.glue.mean is None:
            raise FedsbError(f"SecAgg+ round {r} did not complete (too few clients answered); see the ServerApp log")
        up_names = sorted(s.method.upload_names(s.fed.adapted))
        if len(self.glue.mean) != len(up_names):
            raise FedsbError(f"SecAgg+ round {r} returned {len(self.glue.mean)} arrays, expected {len(up_names)}")
        mean = {k: torch.from_numpy(np.asarray(a, dtype=np.float32).copy()) for k, a in zip(up_names, self.glue.mean, strict=True)}
        losses = [float(m["train_loss"]) for m in self.glue.client_metrics if "train_loss" in m]
        metrics = {"train_loss": sum(losses) / len(losses)} if losses else {}
        k = len(self.glue.client_metrics)
        for m in self.glue.client_metrics:  # sample-level DP: each node's accountant history
            if "dp-history" in m:
                s.record_history(int(m["partition-id"]), RecordDict({"dp": ConfigRecord({"history": str(m["dp-history"])})}))
        update = ClientUpdate("secagg-mean", mean, 1, metrics)
        # Client-level DP: the uniform mean of k clipped uploads times k is their sum, which the noising
        # aggregate needs (its fixed denominator is the expected count, not k): pass k copies.
        updates = [update] * k if s.cfg.dp.mode == "client" else [update]
        # Each of the k clients uploaded one (masked) tensor set of the same size: count k uploads.
        s._aggregate(r, updates, [], secure=True, comm_uploads=[mean] * k)
        s.pending_row["secagg_clients"] = k

    def close(self) -> None:
        pass
