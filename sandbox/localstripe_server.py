"""Child-process entry point that serves localstripe's aiohttp app on a listening socket it inherits.

Run by `sandbox.localstripe.LocalStripe`, not by hand: `python -P .../localstripe_server.py --fd N`. It imports
nothing from `ingest`, so the child starts as fast as localstripe itself.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence

from aiohttp import web


def main(argv: Sequence[str] | None = None) -> None:
    """Serve localstripe on the inherited socket until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="file descriptor of a listening TCP socket")
    args = parser.parse_args(argv)

    from localstripe import server  # imported here: building its app at import is only wanted in the child

    # localstripe pickles its whole store to the fixed path /tmp/localstripe.pickle on every write. We always
    # start from scratch, so the file is never read; writing it only costs time and lets parallel instances
    # overwrite each other's file.
    server.store.dump_to_disk = lambda: None
    sock = socket.socket(fileno=args.fd)
    # The parent holds our stdin open; EOF means it is gone (even killed with SIGKILL), so stop rather than
    # linger as an orphan holding the port.
    threading.Thread(target=_stop_on_stdin_eof, name="parent-watch", daemon=True).start()
    web.run_app(server.app, sock=sock, print=None, access_log=None, handle_signals=True)


def _stop_on_stdin_eof() -> None:
    # os.read on the raw descriptor: sys.stdin's buffered reader would hold a lock that blocks interpreter exit.
    while os.read(sys.stdin.fileno(), 4096):
        pass
    os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    main()
