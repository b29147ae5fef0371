"""An in-process stand-in for Flower's Grid: messages go straight to a ClientApp, one Context per node.

It runs the real ServerApp strategy and the real ClientApp handlers (and SecAgg+ mods) without Ray or
sockets, so protocol tests take seconds. Real transports are covered by the run_simulation and
deployment tests.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity


def allow_messages(run_id: int = 1) -> None:
    """Message() needs a task identity, which Flower sets only inside a running app."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = run_id, 1, 0


def copy_content(content: RecordDict) -> RecordDict:
    """A copy with fresh records (a node mutating its ConfigRecord must not change the server's)."""
    out = RecordDict()
    for k, rec in content.items():
        if isinstance(rec, ArrayRecord):
            out[k] = ArrayRecord(dict(rec.items()))
        elif isinstance(rec, ConfigRecord):
            out[k] = ConfigRecord(dict(rec))
        else:
            out[k] = MetricRecord(dict(rec))
    return out


class FakeGrid:
    def __init__(self, client_app, num_nodes: int, node_config=None, drop: set[int] | None = None) -> None:
        allow_messages()
        self.app = client_app
        self.nodes = list(range(101, 101 + num_nodes))
        self.contexts = {
            n: Context(run_id=1, node_id=n, node_config=(node_config or (lambda i, k: {"partition-id": i, "num-partitions": k}))(i, num_nodes),
                       state=RecordDict(), run_config={})
            for i, n in enumerate(self.nodes)
        }
        self.drop = drop or set()  # node ids whose replies are lost
        self.sent: list[Message] = []
        self.crash_on: str | None = None  # message type at which the "server" dies (resume tests)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        out = []
        messages = list(messages)
        if self.crash_on and any(m.metadata.message_type == self.crash_on for m in messages):
            raise KeyboardInterrupt("simulated ServerApp crash")
        for m in messages:
            self.sent.append(m)
            node = m.metadata.dst_node_id
            # What a real transport does: the node sees a deserialised copy, not the server's object.
            copy = Message(content=copy_content(m.content), dst_node_id=node, message_type=m.metadata.message_type)
            reply = self.app(copy, self.contexts[node])
            if node not in self.drop:
                out.append(reply)
        return out


def crash_on_train_round(grid: FakeGrid, n: int) -> None:
    """Make ``grid`` raise KeyboardInterrupt (a killed ServerApp) when the n-th train round is sent."""
    real, calls = grid.send_and_receive, {"train": 0}

    def send_and_receive(messages, *, timeout=None):  # type: ignore[no-untyped-def]
        messages = list(messages)
        if messages and messages[0].metadata.message_type == "train":
            calls["train"] += 1
            if calls["train"] == n:
                raise KeyboardInterrupt("ServerApp killed")
        return real(messages, timeout=timeout)

    grid.send_and_receive = send_and_receive  # type: ignore[method-assign]
