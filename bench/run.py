"""Run every benchmark beside its anchors, write JSON, print a table.

    python bench/run.py [--quick] [--only NAME]... [--out bench/results/latest.json]

One nats-server (JetStream, store in a temp dir) serves the whole run. Each benchmark runs as a
child process (``python -m bench.benchmarks NAME``) with its own subject prefix and a hard time
bound; it points its in-process triggerbus runtime at the server and spawns real
``python -m triggerbus worker bench.flows:<flow>`` processes where the benchmark is about
processes. The Agently anchors run in bench/.venv-agently (created here when missing), never in
the triggerbus venv. Targets are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import subprocess
import sys
import time
import venv
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from triggerbus.bus.embedded import EmbeddedServer  # noqa: E402

AGENTLY_VENV = REPO / "bench" / ".venv-agently"
AGENTLY_REQUIREMENT = "agently==4.1.3.9"  # 4.1.4.10 breaks sync state.set in async chunks
ORDER = ["hop", "throughput", "fanout", "stream", "scaling", "waiting", "telemetry", "state"]
NOT_AVAILABLE: list[tuple[str, str]] = []
CHILD_TIMEOUT = {"quick": 300.0, "full": 900.0}


def agently_python(*, create: bool) -> str | None:
    """The Agently venv's interpreter, created with pip on first use."""
    python = AGENTLY_VENV / "bin" / "python"
    if python.exists():
        return str(python)
    if not create:
        return None
    print(f"creating {AGENTLY_VENV.relative_to(REPO)} with {AGENTLY_REQUIREMENT} ...",
          file=sys.stderr)
    try:
        venv.EnvBuilder(with_pip=True).create(AGENTLY_VENV)
        subprocess.run([str(python), "-m", "pip", "install", "-q", AGENTLY_REQUIREMENT],
                       check=True, timeout=600)
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"Agently anchors unavailable: {exc}", file=sys.stderr)
        return None
    return str(python)


def run_child(name: str, *, url: str, prefix: str, quick: bool, agently: str | None,
              server_pid: int | None) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.benchmarks", name, "--url", url, "--prefix", prefix,
            "--server-pid", str(server_pid or 0)]
    if quick:
        argv.append("--quick")
    if agently:
        argv += ["--agently-python", agently]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TRIGGERBUS_NATS_URL", None)
    timeout = CHILD_TIMEOUT["quick" if quick else "full"]
    began = time.perf_counter()
    try:
        completed = subprocess.run(argv, cwd=str(REPO), env=env, capture_output=True,
                                   text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return {"error": f"timed out after {timeout:.0f} s",
                "stderr": (exc.stderr or b"")[-3000:].decode("utf-8", "replace")
                if isinstance(exc.stderr, bytes) else (exc.stderr or "")[-3000:]}
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        return {"error": f"exit code {completed.returncode}",
                "stderr": completed.stderr[-3000:]}
    result = json.loads(lines[-1])
    result["wall_seconds"] = round(time.perf_counter() - began, 1)
    return result


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table (readable on a terminal too)."""
    header = ["bench", "measurement", "value", "anchor", "anchor value", "ratio", "target", "ok"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        ok = {True: "PASS", False: "MISS", None: ""}[r.get("pass")]
        value = f"{fmt(r.get('value'))} {r.get('unit') or ''}".strip()
        ratio = f"{r['ratio']:.2f}x" if r.get("ratio") is not None else "-"
        measurement = r["measurement"] + (f" ({r['note']})" if r.get("note") else "")
        lines.append("| " + " | ".join([
            r["bench"], measurement, value, r.get("anchor") or "-",
            fmt(r.get("anchor_value")), ratio, r.get("target") or "-", ok,
        ]) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (a few minutes)")
    parser.add_argument("--only", action="append", choices=ORDER, metavar="NAME",
                        help=f"run only these benchmarks (repeatable): {', '.join(ORDER)}")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "latest.json"))
    parser.add_argument("--no-agently", action="store_true",
                        help="skip the Agently anchors (and do not create their venv)")
    args = parser.parse_args()
    names = [n for n in ORDER if not args.only or n in args.only]
    agently = None if args.no_agently else agently_python(create=True)
    run_id = "b" + secrets.token_hex(3)
    started = time.time()
    results: dict[str, Any] = {}
    with EmbeddedServer() as server:
        server_pid = server.pid
        for index, name in enumerate(names):
            print(f"[{time.strftime('%H:%M:%S')}] {name} ...", file=sys.stderr, flush=True)
            results[name] = run_child(name, url=server.url, prefix=f"{run_id}{index}",
                                      quick=args.quick, agently=agently, server_pid=server_pid)
            if "error" in results[name]:
                print(f"  {name} failed: {results[name]['error']}\n"
                      f"{results[name].get('stderr', '')[-1500:]}", file=sys.stderr)
            else:
                print(f"  done in {results[name].get('wall_seconds')} s", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    for name in names:
        result = results[name]
        if "error" in result:
            rows.append({"bench": name, "measurement": f"FAILED: {result['error']}",
                         "value": None, "unit": "", "pass": None})
        else:
            rows.extend(result["rows"])
    for bench, what in NOT_AVAILABLE:
        if not args.only:
            rows.append({"bench": bench, "measurement": f"not available yet ({what})",
                         "value": None, "unit": "", "pass": None})
    report = {
        "mode": "quick" if args.quick else "full",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "git_commit": _git_commit(),
        "rows": rows,
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(table(rows))
    print(f"\n{report['mode']} run, {report['seconds']} s; JSON in {out}")
    return 0 if not any("error" in r for r in results.values()) else 1


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                              capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    raise SystemExit(main())
