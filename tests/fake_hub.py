"""A local stand-in for the Hugging Face Hub: the routes huggingface_hub calls
(paths-info, tree, HEAD/GET resolve with Range), in a thread. Tests point
HF_ENDPOINT at it. It can drop the connection part-way through a file, say a
repo is gated, and records every request."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class FakeHub:
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)  # repo -> {path: content}
    gated: set[str] = field(default_factory=set)
    drop_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before the link drops (once)
    wrong_sha: set[str] = field(default_factory=set)  # paths whose listed sha256 is wrong
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, Range)

    def info(self, repo: str, path: str) -> dict:
        data = self.files[repo][path]
        sha = hashlib.sha256(data).hexdigest()
        if path in self.wrong_sha:
            sha = "0" * 64
        blob = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
        lfs = path.endswith(".safetensors")
        d = {"type": "file", "path": path, "size": len(data), "oid": blob}
        if lfs:
            d["lfs"] = {"oid": sha, "size": len(data), "pointerSize": 130}
        return d

    def etag(self, repo: str, path: str) -> str:
        d = self.info(repo, path)
        return d["lfs"]["oid"] if "lfs" in d else d["oid"]

    def start(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _json(self, obj, code=200):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _error(self, code, error_code=""):
                body = b'{"error": "nope"}'
                self.send_response(code)
                if error_code:
                    self.send_header("X-Error-Code", error_code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _repo(self, parts):
                repo = "/".join(parts[:2])
                if repo in hub.gated:
                    self._error(403, "GatedRepo")
                    return None
                if repo not in hub.files:
                    self._error(404, "RepoNotFound")
                    return None
                return repo

            def do_POST(self):
                hub.requests.append(("POST", self.path, ""))
                n = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(n).decode())
                parts = urlparse(self.path).path.strip("/").split("/")  # api models o r paths-info rev
                repo = self._repo(parts[2:4])
                if repo:
                    self._json([hub.info(repo, p) for p in form.get("paths", []) if p in hub.files[repo]])

            def do_GET(self):
                self._serve(head=False)

            def do_HEAD(self):
                self._serve(head=True)

            def _serve(self, head):
                url = urlparse(self.path)
                parts = [unquote(p) for p in url.path.strip("/").split("/")]
                rng = self.headers.get("Range", "")
                hub.requests.append((self.command, url.path, rng))
                if parts[:2] == ["api", "models"] and "tree" in parts:
                    repo = self._repo(parts[2:4])
                    if repo:
                        self._json([hub.info(repo, p) for p in sorted(hub.files[repo])])
                    return
                if len(parts) < 5 or parts[2] != "resolve":
                    return self._error(404)
                repo = self._repo(parts[:2])
                if not repo:
                    return
                path = "/".join(parts[4:])
                if path not in hub.files[repo]:
                    return self._error(404, "EntryNotFound")
                data = hub.files[repo][path]
                start = int(rng.split("=")[1].split("-")[0]) if rng.startswith("bytes=") else 0
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hub.etag(repo, path)}"')
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if head:
                    return
                body = data[start:]
                cut = hub.drop_after.pop(path, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
