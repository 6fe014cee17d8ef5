"""Colab: free Colab has no launch API and forbids remote control, so gwi writes the notebook and a
person runs it.

Profile options (``platforms/colab.yaml``)::

    options:
      install: gwi            # what the notebook pip-installs when its runtime lacks gwi: a
                              # requirement, a wheel URL, or git+https://... of your fork
      secrets: [AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL]  # read from Colab's Secrets
      drive_folder: null      # Google Drive folder id to upload the notebook into
      drive_token_var: GWI_COLAB_DRIVE_TOKEN   # environment variable holding a Drive OAuth access token
      drive_api: https://www.googleapis.com

``launch`` renders ``gwi-<attempt>.ipynb`` (nbformat v4): a cell that installs gwi, one that copies
the store's credentials from Colab's Secrets (the key icon) into the environment, and one that runs
the job's ``gwi`` command, which heartbeats to the store like on every platform. The notebook holds
no secret. With a Drive token it is uploaded to Drive and the attempt's note is the
``colab.research.google.com/drive/<id>`` link to open; otherwise it is put beside the attempt in the
store and its local path is the note.

The attempt stays *pending* until the notebook's first heartbeat and is lost if none comes within
the start deadline (a person has to open it). Its end is read from its last heartbeat. ``cancel``
leaves a ``cancel`` flag beside the heartbeat, which the running ``gwi`` obeys at its next beat.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from ..errors import GwiError
from .base import Adapter, LaunchRequest, PlatformError, Profile, State, Status

OPTIONS = ("install", "secrets", "drive_folder", "drive_token_var", "drive_api", "mode")
DEFAULT_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                   "AWS_DEFAULT_REGION")

INSTALL = """\
import importlib.util, subprocess, sys
if importlib.util.find_spec("gwi") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", {install!r}])
"""

SECRETS = """\
import os
SECRETS = {secrets!r}
try:
    from google.colab import userdata
except ImportError:
    userdata = None
    print("not in Colab: using this environment's credentials")
for name in SECRETS if userdata else []:
    try:
        os.environ[name] = userdata.get(name)
    except Exception:
        print(f"secret {{name}} is not set (Secrets, the key icon in the left bar) or not shared with this notebook")
"""

RUN = """\
import os, subprocess, sys
ARGV = {argv!r}
ENV = {env!r}
rc = subprocess.call([sys.executable, "-m", "gwi"] + ARGV[1:], env=dict(os.environ, **ENV))
print(f"gwi exited with status {{rc}}")
if rc != 0:
    raise SystemExit(rc)
"""


class ColabAdapter(Adapter):
    def __init__(self, profile: Profile):
        super().__init__(profile)
        o = self.checked_options(OPTIONS)
        if o.get("mode", "notebook") != "notebook":
            raise GwiError(f"{profile.path}: options.mode: only 'notebook' is supported (no Colab launch API is "
                           f"reachable from gwi), got {o.get('mode')!r}")
        self.install = o.get("install", "gwi")
        self.secrets = list(o.get("secrets") or DEFAULT_SECRETS)
        self.drive_folder = o.get("drive_folder")
        self.drive_token_var = o.get("drive_token_var", "GWI_COLAB_DRIVE_TOKEN")
        self.drive_api = o.get("drive_api", "https://www.googleapis.com").rstrip("/")

    def secret_vars(self) -> set[str]:
        return super().secret_vars() | {self.drive_token_var}

    def reachable_store(self, store_url: str) -> str | None:
        if store_url.startswith("file://"):
            return f"{self.name}: a Colab runtime cannot reach a file:// store; use s3://"
        return None

    def render(self, req: LaunchRequest):
        import nbformat
        from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

        nb = new_notebook()
        nb.metadata.update({"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                            "accelerator": "GPU", "colab": {"provenance": [], "gpuType": self.profile.gpu or "T4"},
                            "gwi": {"attempt": req.attempt_id, "job": req.job}})
        nb.cells = [
            new_markdown_cell(
                f"# gwi: {req.job} (attempt {req.attempt_id})\n\n"
                "1. *Runtime > Change runtime type*: pick a GPU.\n"
                f"2. In *Secrets* (the key icon), add and share with this notebook: {', '.join(self.secrets)}.\n"
                "3. *Runtime > Run all*. Progress goes to the store; `gwi status` shows it.\n\n"
                f"Command: `{' '.join(req.argv)}`"),
            new_code_cell(INSTALL.format(install=self.install)),
            new_code_cell(SECRETS.format(secrets=self.secrets)),
            new_code_cell(RUN.format(argv=list(req.argv), env=dict(req.env))),
        ]
        nbformat.validate(nb)
        return nb

    def launch(self, req: LaunchRequest) -> dict:
        import nbformat

        done = self.recorded(req.workdir)
        if done:
            return done
        work = Path(req.workdir)
        nb = self.render(req)
        name = f"gwi-{req.attempt_id}.ipynb"
        local = work / name
        nbformat.write(nb, str(local))
        handle = {"workdir": str(work), "notebook": str(local), "heartbeat_url": req.heartbeat_url}
        token = os.environ.get(self.drive_token_var)
        if token:
            fid = self._upload(local, name, token)
            handle.update(drive_id=fid, note=f"open https://colab.research.google.com/drive/{fid} and run all")
        else:
            from ..store import split_url

            store, _ = split_url(req.heartbeat_url)
            store.put_file(local, name)
            handle.update(note=f"open {local} in Colab (File > Upload notebook) and run all; also at "
                               f"{req.heartbeat_url.rsplit('/', 1)[0]}/{name}")
        return self.record(work, handle)

    def _upload(self, path: Path, name: str, token: str) -> str:
        import requests

        boundary = uuid.uuid4().hex
        meta = {"name": name, "mimeType": "application/vnd.google.colaboratory"}
        if self.drive_folder:
            meta["parents"] = [self.drive_folder]
        body = (f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{json.dumps(meta)}\r\n"
                f"--{boundary}\r\nContent-Type: application/vnd.google.colaboratory\r\n\r\n").encode() + \
            path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        try:
            r = requests.post(f"{self.drive_api}/upload/drive/v3/files?uploadType=multipart&fields=id", data=body,
                              headers={"Authorization": f"Bearer {token}",
                                       "Content-Type": f"multipart/related; boundary={boundary}"}, timeout=60)
        except (requests.ConnectionError, requests.Timeout) as e:
            raise PlatformError(f"{self.name}: Google Drive not reachable ({type(e).__name__})", "retryable") from None
        if r.status_code >= 400:
            try:
                msg = r.json().get("error", {}).get("message", r.text[:200])
            except ValueError:
                msg = r.text[:200]
            kind = "auth" if r.status_code in (401, 403) else "retryable" if r.status_code >= 500 or r.status_code == 429 \
                else "config"
            raise PlatformError(f"{self.name}: Drive upload failed: HTTP {r.status_code}: {msg}", kind)
        return r.json()["id"]

    def query(self, handle: dict) -> Status:
        # nothing to ask: a person runs it; the scheduler follows its heartbeat and its last word
        if Path(handle["workdir"], "cancelled").exists():
            return Status(State.CANCELLED, None, "cancelled")
        return Status(State.PENDING)

    def cancel(self, handle: dict) -> None:
        from ..store import split_url

        Path(handle["workdir"], "cancelled").touch()
        store, _ = split_url(handle["heartbeat_url"])
        store.put_bytes("cancel", b"cancelled by gwi\n")  # the running gwi stops at its next beat

    def logs(self, handle: dict, tail: int | None = None) -> str:
        return (f"Colab keeps the output in the notebook itself: {handle.get('note', handle['notebook'])}\n"
                "(the job's progress is in `gwi status`)\n")
