"""Remote stores for tests, on loopback only: a static HTTP server, moto's S3 server, and a
proxy in front of either that drops a chosen number of requests (connection closed, no answer)."""

import contextlib
import functools
import http.client
import http.server
import logging
import re
import socket
import threading

S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "eu-west-1"}
"""Credentials moto accepts (it checks none); set them so botocore never looks further."""
CHUNK_KEY = re.compile(r"/c/\d+(/\d+)*$|/\d+(\.\d+)+$")
"""Request paths of chunks (Zarr v3 ``.../c/0/1/0``, Zarr v2 ``.../0.1.0``)."""


class Dropper:
    """Drops the next ``count`` requests whose path matches ``pattern``; counts what it dropped."""

    def __init__(self, count=0, pattern=CHUNK_KEY):
        self._lock = threading.Lock()
        self.remaining = count
        self.dropped = []
        self.requested = []
        """Every request whose path matches ``pattern``, dropped or not."""
        self.pattern = pattern

    def arm(self, count):
        with self._lock:
            self.remaining = count

    def take(self, path):
        """True (and one fewer left) when the request for ``path`` is to be dropped."""
        with self._lock:
            if self.pattern.search(path.split("?")[0]):
                self.requested.append(path)
            if self.remaining > 0 and self.pattern.search(path.split("?")[0]):
                self.remaining -= 1
                self.dropped.append(path)
                return True
            return False


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves ``directory`` (or forwards to ``server.upstream``), dropping what ``server.dropper`` says."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _dropped(self):
        if not self.server.dropper.take(self.path):
            return False
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        return True

    def _forward(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        upstream = http.client.HTTPConnection(*self.server.upstream)
        try:
            upstream.request(self.command, self.path, body=body, headers=dict(self.headers))
            answer = upstream.getresponse()
            content = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status, answer.reason)
        for key, value in answer.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)

    def do_GET(self):
        if not self._dropped():
            self._forward() if self.server.upstream else super().do_GET()

    def do_HEAD(self):
        if not self._dropped():
            self._forward() if self.server.upstream else super().do_HEAD()


@contextlib.contextmanager
def http_server(directory=None, *, upstream=None, dropper=None):
    """A threaded HTTP server on 127.0.0.1 serving ``directory``, or forwarding to ``upstream``
    (``"http://host:port"``); yields its base URL. ``server.dropper`` decides which requests die."""
    handler = functools.partial(_Handler, directory=str(directory) if directory else None)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.dropper = dropper or Dropper()
    server.upstream = tuple(upstream.split("://")[1].rsplit(":", 1)) if upstream else None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextlib.contextmanager
def s3_server():
    """moto's S3 server (the way s3fs tests itself) on 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request on stderr
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def s3_filesystem(endpoint):
    """An s3fs filesystem on ``endpoint`` with the test credentials (not cached: tests change endpoints)."""
    import s3fs

    return s3fs.S3FileSystem(key=S3_KEYS["AWS_ACCESS_KEY_ID"], secret=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
                             client_kwargs={"endpoint_url": endpoint, "region_name": S3_KEYS["AWS_DEFAULT_REGION"]},
                             skip_instance_cache=True)


def upload(endpoint, local, bucket, key, *, public=False):
    """Copy the store ``local`` to ``s3://bucket/key`` (the bucket is made if needed), readable
    without credentials when ``public``; its URL."""
    filesystem = s3_filesystem(endpoint)
    if not filesystem.exists(bucket):
        filesystem.mkdir(bucket)
    filesystem.put(str(local), f"{bucket}/{key}", recursive=True)
    if public:  # the bucket too: without listing, S3 answers 403, not 404, for keys zarr looks for and are absent
        for path in [bucket, *filesystem.find(f"{bucket}/{key}")]:
            filesystem.chmod(path, acl="public-read")
    return f"s3://{bucket}/{key}"


def s3_environment(endpoint):
    """Environment variables that point s3fs (through fsspec's configuration) at ``endpoint``."""
    return {**S3_KEYS, "FSSPEC_S3_ENDPOINT_URL": endpoint}
