"""The only place subjects, stream names, consumer names and KV keys are spelled.

Layout (ARCHITECTURE §3), with ``p`` the configured prefix:

    p.<flow>.run.<chunk>          chunk invocations     stream p_run     (work queue)
    p.<flow>.exec.<execution>     execution mailbox     stream p_exec    (work queue)
    p.<flow>.stream.<execution>   runtime stream        stream p_stream  (limits, max age)
    p.<flow>.closed.<execution>   close notifications   core NATS
    p.<flow>.flow_data            flow-data changes     core NATS
    p.<flow>.dlq.<chunk>          dead letters          stream p_dlq
    p.<flow>.timer.<execution>    pending timers        stream p_timer   (work queue)
    KV p_executions, key <flow>.<execution>, and <flow>.=flow_data for the flow's shared data

Flow and chunk names arrive already folded into tokens (triggerbus/_naming.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EXECUTION_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")
"""What an execution id may be: one subject token, and never a KV key of ours (``=flow_data``)."""

MAILBOX_DLQ = "__mailbox__"
"""The dead-letter token for messages refused by the execution mailbox."""


@dataclass(frozen=True)
class Subjects:
    """Names under one prefix."""

    prefix: str = "tb"

    # streams and bucket
    @property
    def run_stream(self) -> str:
        return f"{self.prefix}_run"

    @property
    def exec_stream(self) -> str:
        return f"{self.prefix}_exec"

    @property
    def stream_stream(self) -> str:
        return f"{self.prefix}_stream"

    @property
    def dlq_stream(self) -> str:
        return f"{self.prefix}_dlq"

    @property
    def timer_stream(self) -> str:
        return f"{self.prefix}_timer"

    @property
    def executions_bucket(self) -> str:
        return f"{self.prefix}_executions"

    # wildcard subjects each stream covers
    def all_runs(self) -> str:
        return f"{self.prefix}.*.run.*"

    def all_mailboxes(self) -> str:
        return f"{self.prefix}.*.exec.*"

    def all_streams(self) -> str:
        return f"{self.prefix}.*.stream.*"

    def all_dead_letters(self) -> str:
        return f"{self.prefix}.*.dlq.*"

    def all_timers(self) -> str:
        return f"{self.prefix}.*.timer.*"

    # concrete subjects
    def run(self, flow: str, chunk: str) -> str:
        return f"{self.prefix}.{flow}.run.{chunk}"

    def mailbox(self, flow: str, execution_id: str) -> str:
        return f"{self.prefix}.{flow}.exec.{execution_id}"

    def mailboxes(self, flow: str) -> str:
        return f"{self.prefix}.{flow}.exec.*"

    def stream(self, flow: str, execution_id: str) -> str:
        return f"{self.prefix}.{flow}.stream.{execution_id}"

    def closed(self, flow: str, execution_id: str) -> str:
        return f"{self.prefix}.{flow}.closed.{execution_id}"

    def flow_data(self, flow: str) -> str:
        """Core NATS: changes of the flow's shared data (``FlowDataUpdated``)."""
        return f"{self.prefix}.{flow}.flow_data"

    def timer(self, flow: str, execution_id: str) -> str:
        """A ``TimerFired`` waiting, in JetStream, for its due time."""
        return f"{self.prefix}.{flow}.timer.{execution_id}"

    def timers(self, flow: str) -> str:
        return f"{self.prefix}.{flow}.timer.*"

    def dead_letter(self, flow: str, chunk: str) -> str:
        return f"{self.prefix}.{flow}.dlq.{chunk}"

    def dead_letters(self, flow: str = "*") -> str:
        return f"{self.prefix}.{flow}.dlq.*"

    # durable consumers
    def exec_consumer(self, flow: str) -> str:
        return f"exec_{flow}"

    def run_consumer(self, flow: str, chunk: str) -> str:
        return f"run_{flow}_{chunk}"

    def timer_consumer(self, flow: str) -> str:
        return f"timer_{flow}"

    # KV
    def execution_key(self, flow: str, execution_id: str) -> str:
        return f"{flow}.{execution_id}"

    def execution_keys(self, flow: str) -> str:
        """Every key of ``flow`` in the executions bucket (its flow data's too: skip ``=``)."""
        return f"{flow}.*"

    def flow_data_key(self, flow: str) -> str:
        """The flow data shared by every execution of ``flow``. ``=`` cannot appear in an
        execution id, so this key never meets an execution's (KV keys refuse ``$``)."""
        return f"{flow}.=flow_data"

    @staticmethod
    def execution_id_of(subject: str) -> str:
        """The last token of a mailbox or stream subject."""
        return subject.rsplit(".", 1)[-1]
