"""A Hugging Face Hub served from local folders, for testing downloads offline.

``serve_hub({"some-org/tiny": folder})`` starts an HTTP server on 127.0.0.1 that answers the few
endpoints ``huggingface_hub`` uses to download a model (``HEAD``/``GET /<repo>/resolve/<rev>/<file>``,
``/api/models/<repo>[/revision/<rev>]``, ``/api/models/<repo>/tree/<rev>``) with the headers the real
Hub sends (commit, ETag, size, ``X-Error-Code`` on a miss). Point ``HF_ENDPOINT`` at ``hub.url`` and
``from_pretrained("some-org/tiny")`` downloads from it. ``private`` repos answer only requests that
carry ``Authorization: Bearer <token>``, as gated/private repos do on the real Hub.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class LocalHub:
    url: str
    repos: dict[str, str]
    tokens: dict[str, str]
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) in order

    def commit(self, repo_id: str) -> str:
        return hashlib.sha1(repo_id.encode()).hexdigest()

    def downloaded(self, repo_id: str) -> set[str]:
        """Files of ``repo_id`` whose content was sent (GET on ``resolve``)."""
        prefix = f"/{repo_id}/resolve/"
        return {p[len(prefix):].split("/", 1)[-1] for m, p in self.requests if m == "GET" and p.startswith(prefix)}


def _files(folder: str) -> list[str]:
    out = []
    for root, _dirs, names in os.walk(folder):
        out += [os.path.relpath(os.path.join(root, n), folder) for n in names]
    return sorted(out)


def _handler(hub: LocalHub) -> type:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_HEAD(self):  # noqa: N802
            self.answer(body=False)

        def do_GET(self):  # noqa: N802
            self.answer(body=True)

        def send(self, status: int, data: bytes = b"", headers: dict | None = None, body: bool = True):
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def error(self, status: int, code: str, body: bool):
            self.send(status, json.dumps({"error": code}).encode(), {"X-Error-Code": code,
                                                                     "Content-Type": "application/json"}, body)

        def answer(self, body: bool):
            path = urllib.parse.unquote(urllib.parse.urlparse(self.path).path)
            hub.requests.append((self.command, path))
            api = path.startswith("/api/models/")
            parts = path[len("/api/models/"):].split("/") if api else path.lstrip("/").split("/")
            repo_id = "/".join(parts[:2])
            if repo_id not in hub.repos:
                return self.error(404, "RepoNotFound", body)
            token = hub.tokens.get(repo_id)
            if token is not None and self.headers.get("Authorization") != f"Bearer {token}":
                return self.error(401, "RepoNotFound", body)
            folder, commit, rest = hub.repos[repo_id], hub.commit(repo_id), parts[2:]
            files = _files(folder)
            if api:
                revision = rest[1] if len(rest) >= 2 and rest[0] in ("revision", "tree") else "main"
                if revision not in ("main", commit):
                    return self.error(404, "RevisionNotFound", body)
                if rest and rest[0] == "tree":
                    under = "/".join(rest[2:])
                    listing = [{"type": "file", "path": f, "size": os.path.getsize(os.path.join(folder, f)),
                                "oid": hashlib.sha1(f.encode()).hexdigest()}
                               for f in files if not under or f.startswith(under.rstrip("/") + "/")]
                    return self.send(200, json.dumps(listing).encode(), {"Content-Type": "application/json"}, body)
                info = {"id": repo_id, "modelId": repo_id, "sha": commit, "private": token is not None,
                        "gated": False, "disabled": False, "siblings": [{"rfilename": f} for f in files]}
                return self.send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
            if len(rest) < 3 or rest[0] != "resolve":
                return self.error(404, "EntryNotFound", body)
            revision, filename = rest[1], "/".join(rest[2:])
            if revision not in ("main", commit):
                return self.error(404, "RevisionNotFound", body)
            if filename not in files:
                return self.error(404, "EntryNotFound", body)
            with open(os.path.join(folder, filename), "rb") as handle:
                data = handle.read()
            etag = hashlib.sha256(data).hexdigest()
            return self.send(200, data, {"X-Repo-Commit": commit, "ETag": f'"{etag}"',
                                         "Content-Type": "application/octet-stream"}, body)

    return Handler


@contextlib.contextmanager
def serve_hub(repos: dict[str, str], tokens: dict[str, str] | None = None) -> Iterator[LocalHub]:
    """Serve ``{repo id: folder}`` as a Hub at ``hub.url`` for the duration of the block."""
    hub = LocalHub(url="", repos=dict(repos), tokens=dict(tokens or {}))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
