"""A local S3-compatible server (moto, on 127.0.0.1) for the table benchmark and the storage tests.

moto comes with neqtune's dev extras (``pip install -e '.[dev]'``). Nothing
leaves the machine: the server listens on loopback, and the credentials in
:data:`S3_ENV` are made up (moto accepts any).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

S3_ENV = {"AWS_ACCESS_KEY_ID": "neqtune", "AWS_SECRET_ACCESS_KEY": "neqtune-test", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def s3_server(bucket: str, attempts: int = 3) -> Iterator[str]:
    """Start moto's server with ``bucket`` in it; yield its endpoint ``127.0.0.1:PORT``; stop it afterwards.

    The credentials of :data:`S3_ENV` are set in this process while it runs
    (child processes that should reach the server need them in their env).
    A URI reaches the server with ``?endpoint_override=ENDPOINT&scheme=http``.

    Raises:
        RuntimeError: the server did not start.
    """
    import pyarrow.fs as pafs

    log = tempfile.TemporaryFile(mode="w+")  # its request log (a pipe nobody reads would fill and stall the server)
    server: subprocess.Popen[str] | None = None
    for _ in range(attempts):
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and server.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        if server.poll() is None:
            break
    if server is None or server.poll() is not None:
        log.seek(0)
        raise RuntimeError(f"moto server did not start: {log.read()[-2000:]}")
    saved = {key: os.environ.get(key) for key in S3_ENV}
    os.environ.update(S3_ENV)
    try:
        endpoint = f"127.0.0.1:{port}"
        pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True).create_dir(bucket)
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
