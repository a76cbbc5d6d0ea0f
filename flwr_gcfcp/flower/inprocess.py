"""An in-process ``Grid`` that calls a ``ClientApp`` directly (no Ray, no SuperLink): for tests and debugging.

``InProcessGrid(client_app, num_nodes)`` gives node ``i`` the node config ``partition-id=i``,
``num-partitions=num_nodes``. Faults can be injected per partition id:

- ``"error"``: the node replies with error code 2 (as if the ClientApp raised);
- ``"unavailable"``: the node replies with error code 5 whose ``src_node_id`` is the SuperLink's (as Flower does);
- ``"silent"``: no reply at all (the strategy's timeout path);
- a callable ``f(reply) -> reply``: rewrite a successful reply (e.g. corrupt a payload);
- a dict ``{message_type: fault}`` restricts the fault to one message type, e.g. ``{"query.gcfcp_calibrate": "error"}``.

A ClientApp exception becomes a code-2 error reply, as in a real SuperNode.

Building ``Message`` objects outside a running Flower app needs the process-wide ``TaskIdentity`` (private flwr
API, set here the way ``flwr.simulation.run_simulation`` does).
"""

from __future__ import annotations

import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

SUPERLINK_NODE_ID = 1
ERROR_CLIENT_EXCEPTION = 2
ERROR_NODE_UNAVAILABLE = 5


def set_task_identity(run_id: int = 1, task_id: int = 1, node_id: int = SUPERLINK_NODE_ID) -> None:
    TaskIdentity.task_id = task_id
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = node_id


class InProcessGrid(Grid):
    """Synchronous in-process grid over ``num_nodes`` simulated nodes of one ``ClientApp``."""

    def __init__(
        self,
        client_app: Callable[[Message, Context], Message],
        num_nodes: int,
        run_config: Mapping[str, Any] | None = None,
        faults: Mapping[int, Any] | None = None,
        run_id: int = 4242,
        node_id_offset: int = 1000,
    ) -> None:
        self.client_app = client_app
        self._run = Run.create_empty(run_id=run_id)
        set_task_identity(run_id=run_id)
        self.faults = dict(faults or {})
        self.node_ids = [node_id_offset + i for i in range(num_nodes)]
        self.contexts = {
            nid: Context(
                run_id=run_id,
                node_id=nid,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
            for i, nid in enumerate(self.node_ids)
        }
        self._replies: dict[str, Message] = {}
        self.sent: list[Message] = []

    # ------------------------------------------------------------------ Grid API
    def set_run(self, run: Run) -> None:  # type: ignore[override]
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            ids.append(msg.metadata.message_id)
            self.sent.append(msg)
            reply = self._deliver(msg)
            if reply is not None:
                reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
                self._replies[msg.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(mid) for mid in list(message_ids) if mid in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        ids = list(self.push_messages(list(messages)))
        return list(self.pull_messages(ids))

    # ------------------------------------------------------------------ delivery
    def _fault_for(self, msg: Message) -> Any:
        pid = self.node_ids.index(int(msg.metadata.dst_node_id))
        fault = self.faults.get(pid)
        if isinstance(fault, Mapping):
            fault = fault.get(msg.metadata.message_type)
        return fault

    def _deliver(self, msg: Message) -> Message | None:
        nid = int(msg.metadata.dst_node_id)
        if nid not in self.contexts:
            return self._error(msg, ERROR_NODE_UNAVAILABLE, f"node {nid} is not connected")
        fault = self._fault_for(msg)
        if fault == "silent":
            return None
        if fault == "unavailable":
            return self._error(msg, ERROR_NODE_UNAVAILABLE, "Node is unavailable (injected)")
        if fault == "error":
            return self._error(msg, ERROR_CLIENT_EXCEPTION, "RuntimeError: injected client failure")
        try:
            reply = self.client_app(msg, self.contexts[nid])
        except Exception as exc:  # a ClientApp exception -> code 2, as a SuperNode reports it
            return self._error(
                msg, ERROR_CLIENT_EXCEPTION, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
            )
        if callable(fault):
            reply = fault(reply)
        return reply

    @staticmethod
    def _error(msg: Message, code: int, reason: str) -> Message:
        reply = Message(Error(code=code, reason=reason), reply_to=msg)
        if code == ERROR_NODE_UNAVAILABLE:  # Flower's code-5 replies come from the SuperLink, not the dead node
            reply.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
        return reply
