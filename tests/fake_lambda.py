"""A fake Lambda Cloud API v1 on 127.0.0.1, for the adapter's real HTTP client.

Instances "boot" after a few polls to the address the test names (127.0.0.1, where a real sshd
waits). Tests script capacity, rate limits and failures through the attributes of ``LambdaState``:
``faults`` is a queue of what the next requests get instead of an answer: an HTTP status (429,
500, 503), ``"hang"`` (accepted, read, never answered until ``release`` is set or 30 s pass) or
``"reset"`` (the connection closed without a word).
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import ThreadingHTTPServer

from .fake_http import JSONHandler


class LambdaState:
    def __init__(self, api_key: str, ip: str = "127.0.0.1"):
        self.api_key, self.ip = api_key, ip
        self.lock = threading.Lock()
        # type -> {"gpus": n, "price": cents, "regions": [names with capacity]}
        self.types = {"gpu_1x_a10": {"gpus": 1, "price": 75, "regions": ["us-east-1"]}}
        self.instances: dict[str, dict] = {}
        self.boot_polls = 2  # GETs of an instance while it boots
        self.rate_limit_next = 0  # answer the next N requests with 429
        self.capacity_refusals: set[tuple[str, str]] = set()  # (type, region) whose launch says no capacity
        self.requests: list[tuple[str, str]] = []
        self.launch_times: list[float] = []
        self.faults: list = []  # what the next requests get instead of an answer (see the module's doc)
        self.release = threading.Event()  # ends every hang (set at shutdown)

    def running(self) -> list[dict]:
        return [i for i in self.instances.values() if i["status"] not in ("terminated",)]


def _error(code: str, message: str, suggestion: str | None = None) -> dict:
    e = {"code": code, "message": message}
    if suggestion:
        e["suggestion"] = suggestion
    return {"error": e}


class _Handler(JSONHandler):
    st: "LambdaState"  # set by make_handler

    def _fault(self) -> bool:
        """Play the next scripted fault, if any; True when the request got one instead of an answer."""
        with self.st.lock:
            fault = self.st.faults.pop(0) if self.st.faults else None
        if fault is None:
            return False
        self.close_connection = True  # a request body left unread must not be taken for the next request
        if fault == "hang":
            self.st.release.wait(30)
        elif fault != "reset":
            self._send(int(fault), _error("global/internal-error" if fault >= 500 else "global/too-many-requests",
                                          f"scripted fault {fault}"))
        return True

    def _gate(self) -> bool:
        if self._fault():
            return False
        with self.st.lock:
            self.st.requests.append((self.command, self.path))
            if self.headers.get("Authorization") != f"Bearer {self.st.api_key}":
                self._send(401, _error("global/invalid-api-key", "API key was invalid, expired, or deleted.",
                                       "Check your API key or create a new one, then try again."))
                return False
            if self.st.rate_limit_next > 0:
                self.st.rate_limit_next -= 1
                self._send(429, _error("global/too-many-requests", "Too many requests"))
                return False
        return True

    def do_GET(self):  # noqa: N802
        if not self._gate():
            return
        path = self.path.split("?")[0].rstrip("/")
        if path.endswith("/instance-types"):
            return self._send(200, {"data": _instance_types(self.st)})
        if path.endswith("/instances"):
            with self.st.lock:
                return self._send(200, {"data": [dict(i) for i in self.st.instances.values()]})
        if "/instances/" in path:
            iid = path.rsplit("/", 1)[1]
            with self.st.lock:
                inst = self.st.instances.get(iid)
                if inst is None:
                    return self._send(404, _error("global/object-does-not-exist", f"instance {iid} not found"))
                if inst["status"] == "booting":
                    inst["_polls"] += 1
                    if inst["_polls"] >= self.st.boot_polls:
                        inst["status"], inst["ip"] = "active", self.st.ip
                return self._send(200, {"data": {k: v for k, v in inst.items() if not k.startswith("_")}})
        self._send(404, _error("global/object-does-not-exist", f"no route {path}"))

    def do_POST(self):  # noqa: N802
        if not self._gate():
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        path = self.path.rstrip("/")
        if path.endswith("/instance-operations/launch"):
            return self._launch(body)
        if path.endswith("/instance-operations/terminate"):
            out = []
            with self.st.lock:
                for iid in body.get("instance_ids", []):
                    inst = self.st.instances.get(iid)
                    if inst is None:
                        return self._send(404, _error("global/object-does-not-exist", f"instance {iid} not found"))
                    inst["status"] = "terminated"
                    out.append({k: v for k, v in inst.items() if not k.startswith("_")})
            return self._send(200, {"data": {"terminated_instances": out}})
        self._send(404, _error("global/object-does-not-exist", f"no route {path}"))

    def _launch(self, body: dict) -> None:
        itype, region = body.get("instance_type_name"), body.get("region_name")
        if itype not in self.st.types:
            return self._send(400, _error("global/invalid-parameters", f"unknown instance type {itype}"))
        if (itype, region) in self.st.capacity_refusals or region not in self.st.types[itype]["regions"]:
            return self._send(400, _error("instance-operations/launch/insufficient-capacity",
                                          "Not enough capacity to fulfill launch request.",
                                          "Choose an instance type with more availability, or try again later."))
        import time

        iid = uuid.uuid4().hex
        with self.st.lock:
            self.st.launch_times.append(time.monotonic())
            self.st.instances[iid] = {"id": iid, "name": body.get("name"), "status": "booting", "ip": None,
                                 "region": {"name": region, "description": region},
                                 "instance_type": {"name": itype}, "ssh_key_names": body.get("ssh_key_names"),
                                 "_polls": 0}
        return self._send(200, {"data": {"instance_ids": [iid]}})


def make_handler(st: LambdaState):
    return type("Handler", (_Handler,), {"st": st})


def _instance_types(st: LambdaState) -> dict:
    data = {}
    for name, t in st.types.items():
        specs = {"vcpus": 30, "memory_gib": 200, "storage_gib": 512, "gpus": t["gpus"]}
        data[name] = {"instance_type": {"name": name, "description": name, "price_cents_per_hour": t["price"],
                                        "specs": specs},
                      "regions_with_capacity_available": [{"name": r, "description": r} for r in t["regions"]]}
    return data


def serve(st: LambdaState) -> tuple[ThreadingHTTPServer, str]:
    """The server (``shutdown`` it when done; hangs end when ``st.release`` is set) and its base URL."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(st))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}/api/v1"
