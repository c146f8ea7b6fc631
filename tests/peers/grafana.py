"""A stand-in for Grafana's HTTP API on 127.0.0.1, for ``dcpue dashboards push`` (Grafana cannot be installed here).

It implements the endpoints grafana-client calls for a push, as Grafana documents them
(https://grafana.com/docs/grafana/latest/developers/http_api/): ``GET/POST /api/folders[/:uid]``,
``GET /api/datasources/uid/:uid``, ``POST /api/datasources``, ``PUT /api/datasources/uid/:uid``,
``GET /api/dashboards/uid/:uid``, ``POST /api/dashboards/db`` (with ``overwrite`` and ``folderUid``), with
bearer-token authentication (401 otherwise), 404 for what is not there, 412 for a dashboard that exists
when ``overwrite`` is false, and 400 for a dashboard without ``uid``/``title`` or a folder that does not
exist. State lives in memory; every request is recorded.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class GrafanaState:
    token: str
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    datasources: dict[str, dict[str, Any]] = field(default_factory=dict)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)  # uid -> {"dashboard", "folderUid", "version"}
    requests: list[tuple[str, str]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    state: GrafanaState

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 — keep pytest output clean
        pass

    def _reply(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        self.state.requests.append((self.command, self.path))
        if self.headers.get("Authorization") != f"Bearer {self.state.token}":
            self._reply(401, {"message": "Unauthorized"})
            return False
        return True

    def _body(self) -> Any:
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")

    def do_GET(self) -> None:  # noqa: N802 — http.server's naming
        if not self._authorised():
            return
        parts = self.path.split("?")[0].strip("/").split("/")
        s = self.state
        if parts[:2] == ["api", "folders"] and len(parts) == 3:
            found = s.folders.get(parts[2])
        elif parts[:3] == ["api", "datasources", "uid"] and len(parts) == 4:
            found = s.datasources.get(parts[3])
        elif parts[:3] == ["api", "dashboards", "uid"] and len(parts) == 4:
            entry = s.dashboards.get(parts[3])
            found = None if entry is None else {"dashboard": entry["dashboard"],
                                                "meta": {"folderUid": entry["folderUid"]}}
        else:
            self._reply(404, {"message": "Not found"})
            return
        self._reply(200, found) if found is not None else self._reply(404, {"message": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        if not self._authorised():
            return
        body = self._body()
        s = self.state
        if self.path == "/api/folders":
            if body["uid"] in s.folders:
                self._reply(409, {"message": "a folder with the same uid already exists"})
                return
            s.folders[body["uid"]] = {"uid": body["uid"], "title": body["title"], "id": len(s.folders) + 1}
            self._reply(200, s.folders[body["uid"]])
        elif self.path == "/api/datasources":
            if body["uid"] in s.datasources:
                self._reply(409, {"message": "data source with the same uid already exists"})
                return
            stored = {k: v for k, v in body.items() if k != "secureJsonData"}  # never returned, as Grafana does
            stored["secureJsonFields"] = {k: True for k in body.get("secureJsonData", {})}
            s.datasources[body["uid"]] = {**stored, "id": len(s.datasources) + 1}
            self._reply(200, {"datasource": s.datasources[body["uid"]], "message": "Datasource added"})
        elif self.path == "/api/dashboards/db":
            d = body.get("dashboard", {})
            if not d.get("uid") or not d.get("title"):
                self._reply(400, {"message": "dashboard needs uid and title"})
                return
            if body.get("folderUid") not in s.folders:
                self._reply(400, {"message": "folder not found"})
                return
            old = s.dashboards.get(d["uid"])
            if old is not None and not body.get("overwrite"):
                self._reply(412, {"status": "version-mismatch"})
                return
            version = 1 if old is None else old["version"] + 1
            s.dashboards[d["uid"]] = {"dashboard": {**d, "id": 7, "version": version},
                                      "folderUid": body["folderUid"], "version": version}
            self._reply(200, {"status": "success", "uid": d["uid"], "version": version})
        else:
            self._reply(404, {"message": "Not found"})

    def do_PUT(self) -> None:  # noqa: N802
        if not self._authorised():
            return
        parts = self.path.strip("/").split("/")
        if parts[:3] == ["api", "datasources", "uid"] and parts[3] in self.state.datasources:
            body = self._body()
            stored = {k: v for k, v in body.items() if k != "secureJsonData"}
            stored["secureJsonFields"] = {k: True for k in body.get("secureJsonData", {})}
            self.state.datasources[parts[3]] = {**stored, "id": self.state.datasources[parts[3]]["id"]}
            self._reply(200, {"message": "Datasource updated"})
        else:
            self._reply(404, {"message": "Not found"})


@contextmanager
def grafana_api(token: str = "glsa_test") -> Iterator[tuple[str, GrafanaState]]:
    """(base URL, state) of a running stand-in; stopped on exit."""
    state = GrafanaState(token)
    handler = type("Handler", (_Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
