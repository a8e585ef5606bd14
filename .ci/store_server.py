"""Serve a checkout's stored files the way the store downloads them: ``GET /{commit}/{relpath}`` answers
``ROOT/{relpath}`` (any 40-hex commit), so that ``FLOWBOOK_STORE_URL=http://127.0.0.1:PORT`` stands in for
``https://raw.githubusercontent.com/flowbook/flowbook`` (flowbook.store). Standard library only: it runs
before any environment with flowbook exists.

    python3 .ci/store_server.py ROOT PORT_FILE    # binds a free port on 127.0.0.1, writes it to PORT_FILE

Used by .ci/colab_check and tests/test_store.py. Serves until killed.
"""
from __future__ import annotations

import http.server
import re
import sys
from functools import partial
from pathlib import Path

_COMMIT = re.compile(r"^/[0-9a-f]{40}(/data/(results|weights)/(?:[\w.-]+/)*[\w.-]+)$")


class StoreHandler(http.server.SimpleHTTPRequestHandler):
    """Maps ``/{commit}/data/{results,weights}/PATH`` (PATH may hold folders, e.g. ``points/NAME``, but no
    ``..``) to the file under the served root; 404 otherwise."""

    def translate_path(self, path: str) -> str:
        path = path.split("?", 1)[0]
        match = _COMMIT.match(path) if ".." not in path.split("/") else None
        # an unmatched request maps to a name that cannot exist, so the answer is 404, never a listing
        return super().translate_path(match.group(1) if match else "/.no-such-stored-file")

    def log_message(self, format: str, *args) -> None:  # quiet: the check prints its own report
        pass


def main(root: str, port_file: str) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(StoreHandler, directory=root))
    tmp = Path(port_file + ".tmp")
    tmp.write_text(str(server.server_address[1]))
    tmp.replace(port_file)  # the reader sees the whole port number or nothing
    server.serve_forever()


if __name__ == "__main__":
    main(*sys.argv[1:3])
