"""One round's server step and the bookkeeping both engines share.

:func:`server_step` validates, bounds and aggregates the round's updates and builds the next broadcast;
:func:`gated_rounds` stops before a round a DP budget cannot pay for; :class:`BaseVersions` tracks which
base-weight increments each client holds so every increment is applied exactly once; :func:`round_row` and
:func:`complete_row` build the metrics row the simulator and the Flower strategy both write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

from fedsb.comm.accounting import ClientDownload, CommLedger, to_wire
from fedsb.config import RunConfig
from fedsb.core.client import ClientTrainer
from fedsb.core.federation import Federation
from fedsb.core.validation import UpdateValidator
from fedsb.methods.base import ClientUpdate, Method, ServerState, is_base_update


class GatedRunner(Protocol):
    """What :func:`gated_rounds` reads and sets on an engine (the simulator and the Flower strategy)."""

    trainer: ClientTrainer
    stop_reason: str | None
    final_round: int | None


def gated_rounds(runner: GatedRunner, start_round: int, rounds: int) -> Iterator[int]:
    """Rounds ``start_round..rounds``. Under DP (``runner.trainer.round_gate``) it stops before a round that would
    overspend the budget (setting ``runner.stop_reason``) and marks the last round the budget allows as
    ``runner.final_round``, so that round gets the final evaluation. Shared by the simulator and Flower."""
    for r in range(start_round, rounds + 1):
        runner.stop_reason, last = runner.trainer.round_gate(r, rounds)
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
    # What every client started from (the broadcast adapter; FLoRA's fresh one): changes are measured from it.
    method.load_adapter(fed.adapted, to_wire(state.adapter, wire_dtype))
    method.begin_round(fed.adapted, state.round)  # what the clients trained this round (RoLoRA's factor)
    names = method.upload_names(fed.adapted)
    reference = fed.adapted.get_state(names)
    accepted, rejected = validator.filter(updates, reference, names, fed.adapted.shapes(), wire_dtype,
                                          method.check_upload_names)
    skipped = len(accepted) < min_valid
    if not skipped:
        state = method.aggregate(state, accepted)
    next_payload = to_wire(method.broadcast(state), wire_dtype)
    if not skipped:
        method.apply_base_update(fed.adapted, next_payload)
    method.load_adapter(fed.adapted, next_payload)
    method.begin_round(fed.adapted, state.round)
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
                 residual: Callable[[], dict[str, torch.Tensor]], method: Method | None = None) -> ClientDownload:
        """What ``client`` must be sent so that it holds the base of ``aggregations`` aggregations; ``method``
        may leave out adapter tensors the client already holds (:meth:`~fedsb.methods.base.Method.download`)."""
        held = self.held.get(client, self.UNKNOWN)
        if method is not None:
            broadcast = method.download(broadcast, held, aggregations)
        base = [k for k in broadcast if is_base_update(k)]
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


def round_row(
    round_idx: int, sampled: int, accepted: list[ClientUpdate], rejected: list[dict[str, str]], validator: UpdateValidator,
    skipped: bool, comm_row: dict[str, Any], comm: CommLedger,
) -> dict[str, Any]:
    """The metrics row of a training round as both engines write it (before the trainer's columns and the
    evaluation, see :func:`complete_row`). ``rejected``: failed or refused replies and rejected updates."""
    losses = [u.metrics["train_loss"] for u in accepted if "train_loss" in u.metrics]
    row: dict[str, Any] = {
        "round": round_idx,
        "clients_sampled": sampled,
        "clients_accepted": len(accepted),
        "rejected": rejected,
        "clipped": validator.clipped,
        "capped": validator.capped,
        "skipped": skipped,
        "train_loss": sum(losses) / len(losses) if losses else None,
        **{k: v for k, v in comm_row.items() if k != "clients"},
        "upload_bytes_cum": comm.upload_bytes,
        "download_bytes_cum": comm.download_bytes,
    }
    extra = {k: v for u in accepted for k, v in u.metrics.items() if k != "train_loss"}
    row.update({k: v for k, v in extra.items() if isinstance(v, (int, float))})
    return row


def is_eval_round(cfg: RunConfig, round_idx: int, final_round: int | None) -> bool:
    """Evaluate every ``eval.every`` rounds, after the last planned round, and after the last round a DP budget allows."""
    return round_idx % cfg.eval.every == 0 or round_idx == cfg.federation.rounds or round_idx == final_round


def complete_row(row: dict[str, Any], round_idx: int, trainer: ClientTrainer, cfg: RunConfig, final_round: int | None,
                 evaluate: Callable[[], dict[str, float]]) -> dict[str, Any]:
    """Add the trainer's columns (epsilon) and, in an evaluation round, the server's test metrics."""
    row.update(trainer.round_report(round_idx))
    if is_eval_round(cfg, round_idx, final_round):
        row.update(evaluate())
    return row
