"""A private git repository over HTTP for the tests: git's own smart-HTTP server (`git
http-backend`, run as CGI) behind Python's http.server, answering 401 to any request without
HTTP Basic USER:TOKEN.

Usage: git_http.py PORT ROOT USER TOKEN [DELAY]. TOKEN `-` lets every request in; DELAY
seconds (default 0) hold each answer back, as a slow host would. Serves the repositories under ROOT on 127.0.0.1 (on a
port of the system's choosing, PORT being a hint the tests' harness passes to every helper),
prints {"ready": port}, then one JSON line per request: {"path", "authorized"}. A path under
/moved/ is redirected (302) to a second listener, which serves nothing and prints
{"elsewhere": path, "authorization": whether any credential came with it}. Runs until stdin
closes.
"""
import base64
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, root, user, token = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
delay = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
expected = "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.serve()

    def do_POST(self):
        self.serve()

    def serve(self):
        if self.path.startswith("/moved/"):
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{elsewhere.server_port}/{self.path[7:]}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        authorized = token == "-" or self.headers.get("Authorization") == expected
        time.sleep(delay)
        print(json.dumps({"path": self.path, "authorized": authorized}), flush=True)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if not authorized:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        env = dict(
            os.environ,
            GIT_PROJECT_ROOT=root,
            GIT_HTTP_EXPORT_ALL="1",
            PATH_INFO=path,
            QUERY_STRING=query,
            REQUEST_METHOD=self.command,
            CONTENT_TYPE=self.headers.get("Content-Type", ""),
            CONTENT_LENGTH=str(len(body)),
            REMOTE_USER=user,
            REMOTE_ADDR="127.0.0.1",
        )
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        sep = b"\r\n\r\n" if b"\r\n\r\n" in out else b"\n\n"
        head, _, rest = out.partition(sep)
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(rest)))
        self.end_headers()
        self.wfile.write(rest)


class Elsewhere(BaseHTTPRequestHandler):
    """Another host: it only notes what reached it."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        print(json.dumps({"elsewhere": self.path, "authorization": "Authorization" in self.headers}), flush=True)
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_GET


elsewhere = ThreadingHTTPServer(("127.0.0.1", 0), Elsewhere)
threading.Thread(target=elsewhere.serve_forever, daemon=True).start()
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
print(json.dumps({"ready": server.server_port}), flush=True)
sys.stdin.read()
server.shutdown()
