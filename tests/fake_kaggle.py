"""A fake Kaggle API (kagglesdk's RPC paths) on 127.0.0.1 that really runs the kernels pushed to it.

Competitions: ``competitions`` maps a slug to its data archive (zip bytes), served the way Kaggle
serves it (a redirect to a file that honours ``Range`` and names an ``ETag``), ``bytes_per_s``
slowing it so a test can kill a download halfway; ``rules_accepted`` lists the slugs whose rules
the user accepted (others answer 403). Uploaded submissions are scored against ``truth``
(oid -> (70, 70) map) as the competition does: MAE over the odd columns kept in the CSV.

A pushed script runs as a local subprocess with what a Kaggle kernel has: a ``kaggle_secrets``
module backed by this fake's secret store, and none of the caller's AWS settings in its
environment. Its exit status becomes COMPLETE or ERROR; its output is the kernel log.

``faults`` is a queue of what the next requests get instead of an answer: an HTTP status (429,
500, 503), ``"hang"`` (read, never answered until ``release`` is set or 30 s pass) or ``"reset"``
(the connection closed without a word).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

from .fake_http import JSONHandler

SECRETS_MODULE = '''
import json, os
class UserSecretsClient:
    def get_secret(self, label):
        store = json.load(open(os.environ["FAKE_KAGGLE_SECRETS"]))
        if label not in store:
            raise Exception(f"secret {label} not attached")
        return store[label]
'''


class KaggleState:
    def __init__(self, root: Path, username: str, key: str, secrets: dict):
        self.root, self.username, self.key = root, username, key
        root.mkdir(parents=True, exist_ok=True)
        (root / "mod").mkdir(exist_ok=True)
        (root / "mod" / "kaggle_secrets.py").write_text(SECRETS_MODULE)
        (root / "secrets.json").write_text(json.dumps(secrets))
        self.pushes: list[dict] = []
        self.kernels: dict[str, dict] = {}  # "owner/slug" -> {proc, log, id, cancelled}
        self.lock = threading.Lock()
        self.next_id = 100
        self.faults: list = []  # what the next requests get instead of an answer (see the module's doc)
        self.release = threading.Event()  # ends every hang (set at shutdown)
        self.competitions: dict[str, bytes] = {}
        self.rules_accepted: set[str] = set()
        self.bytes_per_s: float | None = None
        self.ranges: list[str | None] = []  # the Range header of each file request
        self.uploads: dict[str, bytes] = {}
        self.submissions: list[dict] = []
        self.truth: dict[str, object] = {}

    def status(self, ref: str) -> tuple[str, str]:
        k = self.kernels[ref]
        if k["cancelled"]:
            return "CANCEL_ACKNOWLEDGED", ""
        code = k["proc"].poll()
        if code is None:
            return "RUNNING", ""
        return ("COMPLETE", "") if code == 0 else ("ERROR", f"script exited with {code}")

    def stop_all(self) -> None:
        self.release.set()
        for k in self.kernels.values():
            _kill(k["proc"])
            k["proc"].wait()


def _kill(proc) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def make_handler(st: KaggleState):
    class Handler(JSONHandler):
        def _fault(self) -> bool:
            with st.lock:
                fault = st.faults.pop(0) if st.faults else None
            if fault is None:
                return False
            self.close_connection = True
            if fault == "hang":
                st.release.wait(30)
            elif fault != "reset":
                self._send(int(fault), {"code": int(fault), "message": f"scripted fault {fault}"})
            return True

        def do_GET(self):  # noqa: N802 - a competition's data file, as Kaggle's storage serves it
            name = self.path.split("?")[0].rsplit("/", 1)[-1]
            data = st.competitions.get(name.removesuffix(".zip"))
            if not self.path.startswith("/files/") or data is None:
                return self._send(404, {"code": 404, "message": "no such file"})
            st.ranges.append(self.headers.get("Range"))
            start = 0
            if self.headers.get("Range", "").startswith("bytes="):
                start = int(self.headers["Range"][6:].split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(data) - start))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", '"v1"')
            self.send_header("Last-Modified", "Mon, 02 Jun 2025 10:00:00 GMT")
            self.end_headers()
            step = 16 * 1024
            for i in range(start, len(data), step):
                try:
                    self.wfile.write(data[i:i + step])
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return
                if st.bytes_per_s:
                    time.sleep(step / st.bytes_per_s)

        def do_PUT(self):  # noqa: N802 - the upload URL StartSubmissionUpload handed out
            st.uploads[self.path.rsplit("/", 1)[-1]] = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._send(200, {})

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if self._fault():
                return
            want = "Basic " + base64.b64encode(f"{st.username}:{st.key}".encode()).decode()
            if self.headers.get("Authorization") != want:
                return self._send(401, {"code": 401, "message": "Unauthenticated"})
            method = self.path.rsplit("/", 1)[-1]
            if method == "SaveKernel":
                return self._save(body)
            if method in COMPETITION_METHODS:
                return self._competition(method, body)
            if method == "ListKernels":  # the caller's own kernels matching the search, newest first
                mine = [{"id": k["id"], "ref": ref, "title": k["title"], "slug": ref.split("/", 1)[1],
                         "author": ref.split("/", 1)[0]}
                        for ref, k in st.kernels.items()
                        if ref.startswith(st.username + "/") and (body.get("search") or "") in ref]
                return self._send(200, {"kernels": mine[::-1], "nextPageToken": ""})
            ref = f"{body.get('userName')}/{body.get('kernelSlug')}"
            if method in ("GetKernelSessionStatus", "ListKernelSessionOutput") and ref not in st.kernels:
                return self._send(404, {"code": 404, "message": "Notebook not found"})
            if method == "GetKernelSessionStatus":
                status, msg = st.status(ref)
                return self._send(200, {"status": status, "failureMessage": msg or None})
            if method == "ListKernelSessionOutput":
                k = st.kernels[ref]
                log = Path(k["dir"], "stdout").read_text(errors="replace")
                return self._send(200, {"files": [], "log": json.dumps([{"stream_name": "stdout", "time": 0.0,
                                                                         "data": log}]), "nextPageToken": ""})
            if method == "CancelKernelSession":
                for k in st.kernels.values():
                    if k["id"] == body.get("kernelSessionId"):
                        k["cancelled"] = True
                        _kill(k["proc"])
                        return self._send(200, {})
                return self._send(200, {"errorMessage": "no such session"})
            self._send(404, {"code": 404, "message": f"unknown method {method}"})

        def _competition(self, method: str, body: dict) -> None:
            comp = body.get("competitionName")
            if comp not in st.competitions:
                return self._send(404, {"code": 404, "message": f"Competition {comp} not found"})
            if comp not in st.rules_accepted:
                return self._send(403, {"code": 403, "message": "You must accept this competition's rules "
                                                                "before you'll be able to download files"})
            if method == "DownloadDataFiles":
                self.send_response(302)
                self.send_header("Location", f"/files/{comp}.zip?X-Goog-Signature=abc")
                self.send_header("Content-Length", "0")
                return self.end_headers()
            if method == "StartSubmissionUpload":
                token = f"tok{len(st.uploads) + len(st.submissions) + 1}"
                host = self.headers["Host"]
                return self._send(200, {"token": token, "createUrl": f"http://{host}/upload/{token}"})
            if method == "CreateSubmission":
                data = st.uploads[body["blobFileTokens"]]
                ref = 1000 + len(st.submissions)
                st.submissions.insert(0, {"ref": ref, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                          "description": body.get("submissionDescription", ""),
                                          "fileName": f"submission-{ref}.csv", "status": "COMPLETE",
                                          "publicScore": f"{score(data, st.truth):.4f}", "privateScore": ""})
                return self._send(200, {"message": "Successfully submitted to Yale/UNC-CH - Geophysical Waveform "
                                                   "Inversion", "ref": ref})
            if method == "ListSubmissions":
                return self._send(200, {"submissions": st.submissions[:body.get("pageSize") or 20]})

        def _save(self, body: dict) -> None:
            ref = body["slug"]
            with st.lock:
                st.pushes.append(body)
                st.next_id += 1
                kid = st.next_id
            kdir = st.root / "kernels" / ref.replace("/", "__") / str(kid)
            (kdir / "working").mkdir(parents=True)
            (kdir / "gwi_job.py").write_text(body["text"])
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}  # a kernel has none of ours
            env.update(PYTHONPATH=str(st.root / "mod"), FAKE_KAGGLE_SECRETS=str(st.root / "secrets.json"),
                       GWI_WHEELS=str(st.root / "input"))
            # its own process group: stopping a kernel stops what its script started too
            proc = subprocess.Popen([sys.executable, str(kdir / "gwi_job.py")], cwd=kdir / "working", env=env,
                                    stdout=open(kdir / "stdout", "w"), stderr=subprocess.STDOUT, start_new_session=True)
            st.kernels[ref] = {"proc": proc, "dir": str(kdir), "id": kid, "cancelled": False, "started": time.time(),
                               "title": body.get("newTitle") or ""}
            owner, slug = ref.split("/", 1)
            self._send(200, {"ref": f"/code/{ref}", "url": f"https://www.kaggle.com/code/{ref}", "versionNumber": 1,
                             "kernelId": kid})

    return Handler


COMPETITION_METHODS = ("DownloadDataFiles", "StartSubmissionUpload", "CreateSubmission", "ListSubmissions")


def score(csv_bytes: bytes, truth: dict) -> float:
    """The competition's metric: MAE (m/s) over the rows and columns of the submission."""
    import numpy as np

    errs = []
    for line in csv_bytes.decode().splitlines()[1:]:
        cells = line.split(",")
        oid, r = cells[0].rsplit("_y_", 1)
        errs.append(np.abs(np.asarray(cells[1:], float) - truth[oid][int(r), 1::2]))
    return float(np.mean(errs))


def serve(st: KaggleState) -> tuple[ThreadingHTTPServer, str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(st))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"
