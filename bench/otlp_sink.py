"""An OTLP/HTTP receiver in its own process, for benchmark 7.

    python -m bench.otlp_sink

Prints its endpoint, then answers each line read on stdin with the bytes received so far; exits
at end of input. A collector never shares the application's process (or its GIL), so the
benchmark must not either.
"""

from __future__ import annotations

import sys

from triggerbus.observability.testing import OtlpReceiver


def main() -> int:
    with OtlpReceiver(decode=False) as receiver:
        print(receiver.endpoint, flush=True)
        for _line in sys.stdin:
            print(receiver.bytes_received, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
