"""The embedded nats-server's watchdog: the server never outlives the process that started it.

Run by :mod:`triggerbus.bus.embedded` as a file, ``python -I -S server_watchdog.py <owned store
dir or ""> <grace seconds> <server command...>``, so it imports nothing but the standard library
(no site, no environment, not the package). It starts the server, prints its pid, then waits on
two things: the server's exit, and the end of its stdin, a pipe whose only writer is the
starting process. The kernel closes that pipe however that process ends (exit, SIGTERM,
SIGKILL, a crash), so the watchdog then sends the server SIGTERM (SIGKILL after the grace), and
once the server has exited it removes the temporary store and exits itself. The starting
process's own stop closes the pipe too, so the path taken when it dies is the one every stop
takes. SIGTERM, SIGINT or SIGHUP sent to the watchdog also stop it cleanly (a service manager
signalling the whole group); only a SIGKILL of the watchdog itself can leave a store directory,
and on Linux the server then still gets SIGTERM (PDEATHSIG, armed from the watchdog's main
thread, which lives as long as the watchdog).

Why a process rather than PR_SET_PDEATHSIG on the server alone: Linux sends that signal when
the *thread* that forked the server ends, so it was armed only for a start from the main
thread; the sync API starts the server from its loop thread, and a server started there
outlived a SIGTERM or SIGKILL of the script. That loop thread does not last as long as the
process either: the exit hooks stop its loop, and the signal would fire in the middle of them.
Forking from a thread kept alive for the purpose would fix it on Linux only, and still leave
the store behind (nobody is left to remove it); sweeping stale stores at the next start leaves
them until a next start, which may never come. The pipe works on any POSIX system, from any
thread, for any death, and the watchdog outlives the server, so it can clean up after it. It
costs one small interpreter: about 25 ms more at start, and nothing at stop.
"""

from __future__ import annotations

import _thread
import os
import signal
import sys
from typing import Any

_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    store_dir, grace, *command = argv
    server = _start(command)
    stopping: list[bool] = []

    def stop(*_: object) -> None:
        if not stopping:
            stopping.append(True)
            os.kill(server, signal.SIGTERM)  # not reaped before the wait below returns
            signal.setitimer(signal.ITIMER_REAL, float(grace))

    def watch_parent() -> None:
        try:
            while os.read(0, 65536):
                pass
        finally:
            stop()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    signal.signal(signal.SIGALRM, lambda *_: os.kill(server, signal.SIGKILL))
    os.write(1, b"%d\n" % server)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 1)
    os.dup2(null, 2)  # the server alone holds the log pipe now: its end is the server's end
    os.close(null)
    _thread.start_new_thread(watch_parent, ())
    if store_dir:
        import shutil  # while the server starts: it takes longer to import than all of the above

    code = os.waitstatus_to_exitcode(os.waitpid(server, 0)[1])
    stopping.append(True)  # reaped: its pid is no longer the server's to signal
    signal.setitimer(signal.ITIMER_REAL, 0)
    if store_dir:
        shutil.rmtree(store_dir, ignore_errors=True)
    os._exit(code if code >= 0 else 128 - code)


def _start(command: list[str]) -> int:
    """Fork and exec the server (stdin and stdout on /dev/null; stderr stays the log pipe the
    starting process reads); its pid, or exit with ``error <reason>`` on stdout."""
    watchdog = os.getpid()
    prctl = _prctl()
    failed_r, failed_w = os.pipe()  # close-on-exec: reads empty once the exec has succeeded
    server = os.fork()
    if server == 0:
        try:
            if prctl is not None:  # the server gets SIGTERM should this watchdog die
                prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
            if os.getppid() == watchdog:
                for signum in (signal.SIGPIPE, signal.SIGXFSZ):  # as subprocess restores them
                    signal.signal(signum, signal.SIG_DFL)
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, 0)
                os.dup2(null, 1)
                os.execv(command[0], command)
        except BaseException as exc:
            os.write(failed_w, str(exc).encode())
        os._exit(127)
    os.close(failed_w)
    failed = os.read(failed_r, 4096)
    if failed:
        os.waitpid(server, 0)
        os.write(1, b"error " + failed + b"\n")
        os._exit(1)
    return server


def _prctl() -> Any:
    """Linux's prctl, resolved before the fork (the child makes one foreign call), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    return prctl


if __name__ == "__main__":
    main(sys.argv[1:])
