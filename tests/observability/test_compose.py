"""compose.yaml is what runs: it parses, and each service's command runs against a local
nats-server (there is no Docker engine here), exporting traces to a local OTLP receiver."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tomllib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import yaml

from tests._helpers import ROOT, child_env
from triggerbus.observability.testing import OtlpReceiver

COMPOSE = ROOT / "compose.yaml"


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _ours(services: Mapping[str, Any]) -> dict[str, Any]:
    """The services built from this project's image."""
    return {name: s for name, s in services.items() if s.get("image") == "triggerbus:dev"}


class Service:
    """One compose service run as a local process; its JSON log lines can be waited on."""

    def __init__(self, name: str, spec: Mapping[str, Any], env: Mapping[str, str]) -> None:
        entrypoint = spec.get("entrypoint")
        if entrypoint:
            assert entrypoint[0] == "python"
            self.argv = [sys.executable, *entrypoint[1:]]
        else:  # the image's ENTRYPOINT is `triggerbus`
            self.argv = [sys.executable, "-m", "triggerbus", *spec["command"]]
        self.name = name
        self.env = {**os.environ, **child_env(), **env}
        self.records: list[dict[str, Any]] = []
        self.stdout = ""
        self._changed = asyncio.Condition()
        self._process: asyncio.subprocess.Process | None = None
        self._readers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            *self.argv,
            cwd=str(ROOT),  # the image's working_dir /app holds the same tree
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        loop = asyncio.get_running_loop()
        self._readers = [loop.create_task(self._read_logs()), loop.create_task(self._read_out())]

    async def _read_logs(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        async for raw in self._process.stderr:
            async with self._changed:
                with contextlib.suppress(ValueError):
                    record = json.loads(raw)
                    if isinstance(record, dict):
                        self.records.append(record)
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    async def _read_out(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        self.stdout = (await self._process.stdout.read()).decode()

    async def wait_for(self, event: str) -> dict[str, Any]:
        async with self._changed:
            while True:
                for record in self.records:
                    if record.get("event") == event:
                        return record
                assert not self._readers[0].done(), f"{self.name} exited before {event!r}"
                await self._changed.wait()

    async def wait_exit(self) -> int:
        assert self._process is not None
        code = await self._process.wait()
        await asyncio.gather(*self._readers)
        return code

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.send_signal(signal.SIGTERM)
            await self.wait_exit()


@contextlib.asynccontextmanager
async def _running(services: list[Service]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for service in services:
            if service._process is not None and service._process.returncode is None:
                service._process.kill()
                await service.wait_exit()


class TestComposeFile:
    def test_compose_declares_nats_jaeger_and_scalable_workers(self) -> None:
        services = _compose()["services"]
        assert "-js" in services["nats"]["command"]
        assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
        assert {"4317:4317", "4318:4318"} <= set(services["jaeger"]["ports"])
        ours = _ours(services)
        assert {"execution-host", "edge-worker", "fetch-worker", "demo"} <= set(ours)
        for name, spec in ours.items():
            env = spec["environment"]
            assert env["TRIGGERBUS_NATS_URL"] == "nats://nats:4222", name
            assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318", name
            assert env["OTEL_SERVICE_NAME"] == name
        # --scale needs replicas that do not collide: no fixed name, no host port.
        assert "container_name" not in ours["fetch-worker"]
        assert "ports" not in ours["fetch-worker"]

    def test_the_image_copies_every_package_the_project_installs(self) -> None:
        pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
        folders = set(pyproject["tool"]["setuptools"]["package-dir"].values())
        copied = {
            line.split()[1]
            for line in (ROOT / "Dockerfile").read_text().splitlines()
            if line.startswith("COPY ")
        }
        assert folders <= copied, f"Dockerfile misses {sorted(folders - copied)}"
        assert "examples" in copied  # the services' flow module


async def test_each_compose_service_command_runs_and_the_demo_is_traced(
    nats_url: str, prefix: str
) -> None:
    """Workers from compose get ready on a local nats-server (fetch-worker twice, as
    ``--scale`` would start it); the demo client runs the playbook through them; the trace
    reaches OTLP with each service's name."""
    ours = _ours(_compose()["services"])
    with OtlpReceiver() as receiver:
        overrides = {
            "TRIGGERBUS_NATS_URL": nats_url,
            "TRIGGERBUS_PREFIX": prefix,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }

        def service(name: str) -> Service:
            return Service(name, ours[name], {**ours[name]["environment"], **overrides})

        workers = [service(name) for name in ours if "profiles" not in ours[name]] + [
            service("fetch-worker")
        ]
        demo = service("demo")
        async with _running([*workers, demo]):
            async with asyncio.timeout(60):
                for worker in workers:
                    await worker.start()
                ready = [await worker.wait_for("worker_ready") for worker in workers]
                await demo.start()
                code = await demo.wait_exit()
                spans = await receiver.wait_for(
                    lambda spans: any(s.name.startswith("execution ") for s in spans)
                )
                for worker in workers:
                    await worker.stop()

    assert code == 0, demo.stdout
    assert "RESULT:" in demo.stdout
    assert {r["flow"] for r in ready} == {ready[0]["flow"]}
    (execution,) = [s for s in spans if s.name.startswith("execution ")]
    assert execution.service == "execution-host"
    mine = [s for s in spans if s.trace_id == execution.trace_id]
    assert {"execution-host", "edge-worker", "fetch-worker"} <= {s.service for s in mine}
    assert {s.name for s in mine} >= {
        "process normalize",
        "process fetch_facts",
        "process fetch_risks",
        "process compile_report",
    }
