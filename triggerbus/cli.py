"""The ``triggerbus`` command: run workers, inspect flows.

triggerbus worker module:flow [--chunk NAME]... [--concurrency N] [--no-executions]
triggerbus graph module:flow
triggerbus resume module:flow EXECUTION_ID INTERRUPT_ID [--value JSON] [--request-id ID] [--wait]
triggerbus status module:flow|FLOW_NAME EXECUTION_ID
triggerbus list module:flow|FLOW_NAME [--status waiting] [--limit N]
triggerbus dlq list|show|replay
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
import typing
from collections.abc import Sequence

import msgspec
import structlog

from triggerbus._gc import WORKER_GC, tune_worker_gc
from triggerbus._loop import loop_factory
from triggerbus.actors.hosted import HostedFlow
from triggerbus.actors.worker import Worker, install_signal_handlers, kill_after
from triggerbus.bus.connection import ConnectOptions
from triggerbus.bus.dead_letters import get_dead_letter, list_dead_letters, replay_dead_letter
from triggerbus.bus.jetstream import Bus
from triggerbus.bus.provision import ConsumerPolicy, StoragePolicy
from triggerbus.bus.subjects import Subjects
from triggerbus.config import Settings
from triggerbus.contracts.snapshot import Status
from triggerbus.errors import ConfigurationError, TriggerbusError
from triggerbus.flow import TriggerFlow
from triggerbus.observability.logging import configure_logging
from triggerbus.observability.telemetry import configure_telemetry, shutdown_telemetry

log = structlog.get_logger()

STATUSES: tuple[str, ...] = typing.get_args(Status)
"""An execution's statuses, as its snapshot stores them."""

EXIT_USAGE = 2
EXIT_ERROR = 1


def load_flow(target: str) -> TriggerFlow:
    """Import ``module:attribute`` and return the TriggerFlow it names."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(
            f"flow target {target!r} must look like 'package.module:flow_variable'"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
    flow = getattr(module, attribute, None)
    if not isinstance(flow, TriggerFlow):
        found = "nothing" if flow is None else type(flow).__name__
        raise ConfigurationError(
            f"{target!r} should name a TriggerFlow, but {module_name}.{attribute} is {found}"
        )
    return flow


def _at_least_one(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a count of 0 or less would leave a
    worker that never runs a chunk, or a listing of nothing)."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _seconds(text: str) -> float:
    """An argparse type: a finite, non-negative number of seconds."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return seconds


def _where(command: argparse.ArgumentParser) -> None:
    """The options naming the deployment a command works on."""
    command.add_argument("--nats-url", help="NATS server URL(s); overrides TRIGGERBUS_NATS_URL")
    command.add_argument("--prefix", help="subject prefix; overrides TRIGGERBUS_PREFIX")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="triggerbus",
        description="TriggerFlow as actors on NATS. Configure with TRIGGERBUS_* variables "
        "(TRIGGERBUS_NATS_URL, TRIGGERBUS_PREFIX, TRIGGERBUS_LOG_LEVEL, ...).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = commands.add_parser(
        "worker",
        help="host chunk actors (and execution actors) of a flow until SIGTERM",
        description="Host replicas of a flow's chunks, competing with every other replica for "
        "their invocations. Stops taking work on SIGTERM/SIGINT, finishes what it holds, exits.",
    )
    worker.add_argument(
        "target",
        nargs="+",
        help="the flow, as module:variable (e.g. app.flows:flow); several may be given, and "
        "each flow's sub-flows are hosted with it",
    )
    worker.add_argument(
        "--chunk",
        action="append",
        dest="chunks",
        metavar="NAME",
        help="host this chunk (repeatable); default: every chunk of the flow",
    )
    worker.add_argument(
        "--no-chunks", action="store_true", help="host no chunks (an execution host only)"
    )
    worker.add_argument(
        "--concurrency",
        type=_at_least_one,
        default=None,
        metavar="N",
        help="invocations of each chunk running at once in this process (default 16)",
    )
    worker.add_argument(
        "--no-executions",
        action="store_true",
        help="do not host execution actors (another process does)",
    )
    _where(worker)
    worker.add_argument(
        "--gc",
        choices=WORKER_GC,
        default=None,
        help="the garbage collector: tuned (raised thresholds, start-up objects frozen; "
        "the default) or python (the interpreter's own settings); "
        "overrides TRIGGERBUS_WORKER_GC",
    )
    worker.add_argument(
        "--shutdown-grace",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="how long running invocations may take to finish after SIGTERM (default 30)",
    )

    graph = commands.add_parser(
        "graph",
        help="print a flow's name, fingerprint, chunks and subjects as JSON",
        description="Compile a flow and print what every process must agree on.",
    )
    graph.add_argument("target", help="the flow, as module:variable")
    graph.add_argument("--prefix", help="subject prefix; overrides TRIGGERBUS_PREFIX")
    graph.add_argument("--full", action="store_true", help="print the whole compiled graph")
    resume = commands.add_parser(
        "resume",
        help="continue an execution waiting on an interrupt (continue_with)",
        description="Answer a waiting interrupt (data.pause_for) of a running execution with a "
        "JSON value and print the interrupt record. Any process may do this, any time later.",
    )
    resume.add_argument("target", help="the flow, as module:variable")
    resume.add_argument("execution_id", help="the waiting execution")
    resume.add_argument("interrupt_id", help="the interrupt to answer")
    resume.add_argument(
        "--value", default="null", metavar="JSON", help="the answer, as JSON (default null)"
    )
    resume.add_argument(
        "--request-id",
        dest="resume_request_id",
        metavar="ID",
        help="an idempotency key: the same id with the same value is applied once",
    )
    resume.add_argument("--actor", help="who answers (recorded in the interrupt)")
    resume.add_argument(
        "--wait", action="store_true",
        help="answer once the continuation has settled (paused again, ended or failed), as "
        "Python's continue_with does, and print its status and result instead of the record",
    )  # fmt: skip
    resume.add_argument(
        "--timeout", type=_seconds, default=30.0, metavar="SECONDS",
        help="how long to wait for the execution's answer (default 30)",
    )
    _where(resume)

    status = commands.add_parser(
        "status",
        help="print an execution's status, waiting interrupts and state as JSON",
        description="Read an execution's stored snapshot: its status and lifecycle, the "
        "interrupts waiting for `triggerbus resume` (with their ids), its error if it failed, "
        "and its state. Reads only; any process may do this.",
    )
    status.add_argument("target", help="the flow, as module:variable or by its name")
    status.add_argument("execution_id", help="the execution")
    _where(status)

    listing = commands.add_parser(
        "list",
        help="one line per execution of a flow (e.g. the ones waiting for an answer)",
        description="List a flow's executions from the store: id, status, lifecycle, start "
        "time and the ids of the interrupts each waits on, tab-separated, oldest write first. "
        "Reads only, in one pass over the store.",
    )
    listing.add_argument("target", help="the flow, as module:variable or by its name")
    listing.add_argument(
        "--status", choices=STATUSES, help="only executions with this status"
    )
    listing.add_argument(
        "--limit", type=_at_least_one, default=1000, help="at most this many (1000)"
    )
    _where(listing)

    dlq = commands.add_parser(
        "dlq",
        help="inspect and replay dead letters",
        description="Dead letters are messages that could not be handled, kept with the reason.",
    )
    _where(dlq)
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    dlq_list = dlq_commands.add_parser("list", help="one line per dead letter, oldest first")
    dlq_list.add_argument("--flow", default="*", help="only this flow's dead letters")
    dlq_list.add_argument(
        "--limit", type=_at_least_one, default=100, help="at most this many (100)"
    )
    dlq_show = dlq_commands.add_parser("show", help="print one dead letter as JSON")
    dlq_show.add_argument("sequence", type=int, help="its sequence, as `dlq list` prints it")
    dlq_replay = dlq_commands.add_parser(
        "replay", help="publish a dead message again on its original subject"
    )
    dlq_replay.add_argument("sequence", type=int, help="its sequence, as `dlq list` prints it")
    dlq_replay.add_argument(
        "--delete", action="store_true", help="remove the dead letter once replayed"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        if getattr(args, "prefix", None):
            settings = _replace(settings, prefix=args.prefix)
        if getattr(args, "nats_url", None):
            settings = _replace(settings, nats_url=args.nats_url)
        configure_logging(
            level="info" if settings.log_level == "warning" else settings.log_level,
            fmt=settings.log_format,  # type: ignore[arg-type]
        )
        if args.command == "worker":
            configure_telemetry()  # OTEL_*; flushed when the worker stops
            try:
                with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
                    return runner.run(_run_worker(args, settings))
            finally:
                shutdown_telemetry()
        if args.command == "graph":
            return _print_graph(args, settings)
        if args.command == "dlq":
            return asyncio.run(_dead_letters(args, settings))
        if args.command == "resume":
            return asyncio.run(_resume(args, settings))
        if args.command == "status":
            return asyncio.run(_status(args, settings))
        if args.command == "list":
            return asyncio.run(_list(args, settings))
    except TriggerbusError as exc:
        print(f"triggerbus: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_USAGE


def _replace(settings: Settings, **changes: object) -> Settings:
    import dataclasses

    return dataclasses.replace(settings, **changes)  # type: ignore[arg-type]


def _flow_name(target: str) -> str:
    """A flow named as ``module:variable`` (imported for its name) or by its name."""
    return load_flow(target).name if ":" in target else target


async def _shared_bus(settings: Settings, what: str) -> Bus:
    """The bus of a command that works on a deployment's NATS: ``what`` lives there, and the
    embedded server, private to one process, cannot hold it for another."""
    if settings.nats_url is None:
        raise ConfigurationError(
            f"{what} live on a shared NATS server: set TRIGGERBUS_NATS_URL or pass --nats-url "
            "(the embedded server is private to one process)"
        )
    return await Bus.open(
        ConnectOptions.from_settings(settings, settings.nats_url),
        Subjects(settings.prefix),
        storage=StoragePolicy(replicas=settings.replicas),
    )


async def _run_worker(args: argparse.Namespace, settings: Settings) -> int:
    flows: dict[str, TriggerFlow] = {}
    for target in args.target:
        for each in load_flow(target).hosted_flows():
            flows.setdefault(each.name, each)
    chunks: list[str] | None = [] if args.no_chunks else args.chunks
    hosted, *more = [HostedFlow(f.graph(), f.handlers(), flow_resources=f.runtime_resources)
                     for f in flows.values()]  # fmt: skip
    bus = await _shared_bus(settings, "a worker's chunks and executions")
    try:
        worker = Worker(
            bus,
            hosted,
            chunks=chunks,
            concurrency=args.concurrency or settings.chunk_concurrency,  # None: not given
            host_executions=not args.no_executions,
            shutdown_grace=args.shutdown_grace,
            consumer_policy=ConsumerPolicy(ack_wait=settings.ack_wait),
            after_store=(
                kill_after(settings.fault_kill_after_stores)
                if settings.fault_kill_after_stores
                else None
            ),
            more_flows=more,
        )
        install_signal_handlers(worker)
        tune_worker_gc(args.gc or settings.worker_gc)
        await worker.run()
    finally:
        await bus.close()
    return 0


async def _dead_letters(args: argparse.Namespace, settings: Settings) -> int:
    bus = await _shared_bus(settings, "dead letters")
    try:
        if args.dlq_command == "list":
            letters = await list_dead_letters(bus, flow=args.flow, limit=args.limit)
            if not letters:  # said on stderr: a script counting stdout lines still counts 0
                of_flow = "" if args.flow == "*" else f" of flow {args.flow!r}"
                sys.stderr.write(
                    f"triggerbus: no dead letters{of_flow} under prefix {settings.prefix!r}\n"
                )
            for stored in letters:
                letter = stored.letter
                sys.stdout.write(
                    f"{stored.sequence}\t{letter.subject}\t{letter.execution_id or '-'}\t"
                    f"{letter.reason}\n"
                )
        elif args.dlq_command == "show":
            stored = await get_dead_letter(bus, args.sequence)
            body = {"sequence": stored.sequence, **msgspec.to_builtins(stored.letter)}
            sys.stdout.write(msgspec.json.format(msgspec.json.encode(body)).decode() + "\n")
        elif args.dlq_command == "replay":
            subject = await replay_dead_letter(bus, args.sequence, delete=args.delete)
            sys.stdout.write(f"replayed {args.sequence} to {subject}\n")
    finally:
        await bus.close()
    return 0


async def _resume(args: argparse.Namespace, settings: Settings) -> int:
    import time
    import uuid

    from triggerbus.contracts.codec import WireError, decode, encode
    from triggerbus.contracts.messages import (
        ResumeInterrupt,
        refuses_unknown_execution,
        reply_decoder,
    )

    try:
        value = msgspec.json.decode(args.value.encode())
    except msgspec.DecodeError as exc:
        raise ConfigurationError(f"--value must be JSON ({exc}); e.g. --value '\"yes\"'") from exc
    flow = load_flow(args.target)
    bus = await _shared_bus(settings, "waiting executions")
    subjects = bus.subjects
    try:
        inbox = bus.new_inbox()
        answers = await bus.subscribe(inbox)
        message = ResumeInterrupt(
            id=f"{args.execution_id}:resume:{args.resume_request_id or uuid.uuid4().hex}",
            execution_id=args.execution_id,
            interrupt_id=args.interrupt_id,
            value=value,
            resume_request_id=args.resume_request_id,
            actor=args.actor,
            reply_to=inbox,
            sent_at=time.time(),
            settle=args.wait,
        )
        mailbox = subjects.mailbox(flow.name, args.execution_id)
        fresh = await bus.publish_once(mailbox, encode(message), msg_id=message.id)
        if not fresh:
            sys.stderr.write("triggerbus: this resume request was already sent; nothing changed\n")
            return 0
        try:
            async with asyncio.timeout(args.timeout):
                data, _ = await answers.next()
        except TimeoutError:
            raise TriggerbusError(
                f"no answer from execution {args.execution_id!r} within {args.timeout} s; is an "
                "execution host of the flow running (`triggerbus worker`)?"
            ) from None
        finally:
            await answers.close()
        try:
            reply = decode(reply_decoder, data)
        except WireError as exc:
            raise TriggerbusError(f"unreadable answer: {exc.reason}") from exc
    finally:
        await bus.close()
    if reply.ignored:
        sys.stderr.write(f"triggerbus: the execution is {reply.ignored}; nothing changed\n")
        return 0
    if not reply.ok:
        error = reply.error
        reason = f"{error.error_type}: {error.message}" if error else "refused"
        if refuses_unknown_execution(error):
            reason = (
                f"flow {flow.name!r} has no execution {args.execution_id!r} (never started, or "
                "started under another TRIGGERBUS_PREFIX)"
            )
        elif error is not None and error.chunk:
            reason = f"the continuation failed: chunk {error.chunk!r} raised {reason}"
        sys.stderr.write(f"triggerbus: {reason}\n")
        return EXIT_ERROR
    shown = {"status": reply.status, "result": reply.value} if args.wait else reply.value
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(shown)).decode() + "\n")
    return 0


async def _status(args: argparse.Namespace, settings: Settings) -> int:
    from triggerbus.actors.execution import interrupt_record
    from triggerbus.actors.state_paths import close_snapshot
    from triggerbus.contracts.codec import decode
    from triggerbus.contracts.snapshot import snapshot_decoder

    name = _flow_name(args.target)
    bus = await _shared_bus(settings, "executions")
    try:
        loaded = await bus.load(bus.subjects.execution_key(name, args.execution_id))
    finally:
        await bus.close()
    if loaded is None:
        sys.stderr.write(
            f"triggerbus: flow {name!r} has no execution {args.execution_id!r} (never started, "
            "or started under another TRIGGERBUS_PREFIX)\n"
        )
        return EXIT_ERROR
    snapshot, revision = decode(snapshot_decoder, loaded[0]), loaded[1]
    shown = {
        "execution_id": snapshot.execution_id,
        "flow": name,
        "status": snapshot.status,
        "lifecycle_state": snapshot.lifecycle,
        "started_at": snapshot.started_at or None,
        "closed_at": snapshot.closed_at or None,
        "close_reason": snapshot.close_reason or None,
        "state_version": revision,
        "error": msgspec.to_builtins(snapshot.error) if snapshot.error is not None else None,
        "waiting_interrupts": {
            key: interrupt_record(interrupt)
            for key, interrupt in snapshot.interrupts.items()
            if interrupt.status == "waiting"
        },
        "state": close_snapshot(snapshot),
    }
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(shown)).decode() + "\n")
    return 0


async def _list(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import UTC, datetime

    from triggerbus.contracts.codec import WireError, decode
    from triggerbus.contracts.snapshot import snapshot_decoder

    name = _flow_name(args.target)
    bus = await _shared_bus(settings, "executions")
    shown = 0
    try:
        async for key, value, _ in bus.scan(bus.subjects.execution_keys(name)):
            if key.rpartition(".")[2].startswith("="):
                continue  # the flow's data, kept beside its executions
            try:
                snapshot = decode(snapshot_decoder, value)
            except WireError as exc:  # say so and go on: one bad entry hides no other
                sys.stderr.write(f"triggerbus: unreadable snapshot at {key!r}: {exc.reason}\n")
                continue
            if args.status and snapshot.status != args.status:
                continue
            started = (
                datetime.fromtimestamp(snapshot.started_at, UTC).isoformat(timespec="seconds")
                if snapshot.started_at
                else "-"
            )
            waiting = ",".join(k for k, i in snapshot.interrupts.items() if i.status == "waiting")
            sys.stdout.write(f"{snapshot.execution_id}\t{snapshot.status}\t"
                             f"{snapshot.lifecycle}\t{started}\t{waiting or '-'}\n")  # fmt: skip
            shown += 1
            if shown >= args.limit:
                break
    finally:
        await bus.close()
    if not shown:  # said on stderr: a script counting stdout lines still counts 0
        which = f" with status {args.status!r}" if args.status else ""
        sys.stderr.write(
            f"triggerbus: no executions of flow {name!r}{which} under prefix {settings.prefix!r}\n"
        )
    return 0


def _print_graph(args: argparse.Namespace, settings: Settings) -> int:
    flow = load_flow(args.target)
    graph = flow.graph()
    subjects = Subjects(settings.prefix)
    summary = {
        "flow": graph.flow,
        "fingerprint": graph.fingerprint,
        "chunks": {
            c.name: {
                "subject": subjects.run(graph.flow, c.token),
                "consumer": subjects.run_consumer(graph.flow, c.token),
                "trigger": c.trigger,
            }
            for c in graph.chunks
        },
        "mailbox": subjects.mailboxes(graph.flow),
        "stream": subjects.stream(graph.flow, "<execution_id>"),
        "closed": subjects.closed(graph.flow, "<execution_id>"),
        "snapshot_bucket": subjects.executions_bucket,
    }
    if args.full:
        summary["graph"] = msgspec.to_builtins(graph)
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(summary)).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
