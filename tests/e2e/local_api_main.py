"""The e2e local API (e2e_lib.LocalAPI) as a process of its own, for tests that
kill and restart it, or run it inside a network namespace:

    python3 local_api_main.py DEVICE [PORT]     prints "port N" once listening

SIGUSR1 writes the request ids it saw (JSON) to $LOCAL_API_IDS when set."""

import json
import os
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e_lib as lib  # noqa: E402


def main():
    api = lib.LocalAPI(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    ids = os.environ.get("LOCAL_API_IDS")
    done = threading.Event()

    def dump(*_):
        if ids:
            with api._lock:
                doc = {"requests": api.requests, "max_active": api.max_active, "ids": dict(api.request_ids)}
            Path(ids + ".tmp").write_text(json.dumps(doc))
            os.replace(ids + ".tmp", ids)

    signal.signal(signal.SIGUSR1, dump)
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    print(f"port {api.port}", flush=True)
    done.wait()
    dump()


if __name__ == "__main__":
    main()
