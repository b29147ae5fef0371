"""Measure every message the ServerApp sends and receives, on the Flower objects that go on the wire.

:class:`MeteredGrid` wraps Flower's ``Grid``: every ``send_and_receive`` (ours and the SecAgg+ workflow's)
logs one :class:`WireEntry` per message and per reply, tagged with the current phase and round.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flwr.app import Message

from fedsb.flower.records import count


@dataclass
class WireEntry:
    phase: str  # setup | sync | train | secagg | evaluate
    round: int
    direction: str  # down (server -> client) | up (client -> server)
    node: int
    message_type: str
    payload_bytes: int
    record_bytes: int
    message_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "framing_bytes": self.message_bytes - self.payload_bytes}


def measure(msg: Message, phase: str, rnd: int, direction: str) -> WireEntry:
    c = count(msg.content)
    node = msg.metadata.dst_node_id if direction == "down" else msg.metadata.src_node_id
    return WireEntry(phase, rnd, direction, int(node), str(msg.metadata.message_type), c.payload, c.record, c.message)


class MeteredGrid:
    """A ``Grid`` that logs the size of every message it carries (all other calls pass through)."""

    def __init__(self, grid: Any) -> None:
        self._grid = grid
        self.phase = "setup"
        self.round = 0
        self.entries: list[WireEntry] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        msgs = list(messages)
        for m in msgs:
            self.entries.append(measure(m, self.phase, self.round, "down"))
        replies = list(self._grid.send_and_receive(msgs, timeout=timeout))
        for r in replies:
            if not r.has_error():
                self.entries.append(measure(r, self.phase, self.round, "up"))
        return replies

    def take(self, phase: str | None = None, rnd: int | None = None) -> list[WireEntry]:
        """Remove and return the entries of ``phase``/``rnd`` (all when None)."""
        keep: list[WireEntry] = []
        out: list[WireEntry] = []
        for e in self.entries:
            hit = (phase is None or e.phase == phase) and (rnd is None or e.round == rnd)
            (out if hit else keep).append(e)
        self.entries = keep
        return out


def summarise(entries: list[WireEntry]) -> dict[str, Any]:
    """Totals per direction plus the per-message list (what goes in ``metrics.jsonl``)."""
    out: dict[str, Any] = {}
    for d, name in (("down", "download"), ("up", "upload")):
        es = [e for e in entries if e.direction == d]
        out[f"wire_{name}_messages"] = len(es)
        out[f"wire_{name}_payload_bytes"] = sum(e.payload_bytes for e in es)
        out[f"wire_{name}_record_bytes"] = sum(e.record_bytes for e in es)
        out[f"wire_{name}_message_bytes"] = sum(e.message_bytes for e in es)
        out[f"wire_{name}_framing_bytes"] = sum(e.message_bytes - e.payload_bytes for e in es)
        out[f"wire_{name}_payload_bytes_per_client"] = max((e.payload_bytes for e in es), default=0)
    out["wire_messages"] = [e.as_dict() for e in entries]
    return out
