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
      request_timeout_s: 60   # the upload's wait for an answer
      retry_deadline_s: 120   # retrying throttled/5xx/unanswered uploads stops here

``launch`` renders ``gwi-<attempt>.ipynb`` (nbformat v4) around the kit's bootstrap: a cell that
installs gwi, one that reads the store's credentials from Colab's Secrets (the key icon) by name,
and one that runs the job's ``gwi`` command with them, which heartbeats to the store like on every
platform. The notebook holds no secret. With a Drive token it is uploaded to Drive and the attempt's note is the
``colab.research.google.com/drive/<id>`` link to open; otherwise it is put beside the attempt in the
store and its local path is the note.

The attempt stays *pending* until the notebook's first heartbeat and is lost if none comes within
the start deadline (a person has to open it). Its end is read from its last heartbeat. ``cancel``
leaves a ``cancel`` flag beside the heartbeat, which the running ``gwi`` obeys at its next beat.
The notebook's own code stops the job at the attempt's hour limit, whoever watches.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from . import kit
from .base import Adapter, Finding, LaunchRequest, OptionError, PlatformError, PlatformOptions, State, Status, bounds

# Colab's Secrets (the key icon), as the notebook reads them
SECRET_STORE = kit.SecretStore("from google.colab import userdata; get = userdata.get",
                               "Secrets, the key icon in the left bar, shared with this notebook")


@dataclass(frozen=True)
class ColabOptions(PlatformOptions):
    install: str = "gwi"  # what the notebook pip-installs when its runtime lacks gwi
    secrets: tuple[str, ...] = kit.STORE_SECRETS  # names read from Colab's Secrets (empty: these)
    drive_folder: str | None = None  # Google Drive folder id to upload the notebook into
    drive_token_var: str = "GWI_COLAB_DRIVE_TOKEN"  # the variable holding a Drive OAuth access token
    drive_api: str = "https://www.googleapis.com"
    mode: str = "notebook"
    request_timeout_s: float = bounds(60.0, above=0)  # the upload's wait for an answer
    retry_deadline_s: float = bounds(120.0, minimum=0)  # retrying throttled/5xx/unanswered uploads stops here

    def check(self) -> None:
        if self.mode != "notebook":
            raise OptionError("mode", "only 'notebook' is supported (no Colab launch API is reachable from gwi), "
                                      f"got {self.mode!r}")


class ColabAdapter(Adapter):
    Options = ColabOptions

    def secret_vars(self) -> set[str]:
        return super().secret_vars() | {self.options.drive_token_var}

    def credentials_found(self) -> list[Finding]:
        var = self.options.drive_token_var
        return super().credentials_found() + [
            Finding(True, f"{var} set: notebooks are uploaded to Drive (options.drive_folder)") if os.environ.get(var)
            else Finding(True, f"{var} not set: notebooks are written here for you to upload and open in Colab")]

    def reachable_store(self, store_url: str) -> str | None:
        return kit.unreachable_file_store(f"{self.name}: a Colab runtime", store_url)

    def render(self, req: LaunchRequest):
        import nbformat
        from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

        o = self.options
        secrets = o.secrets or kit.STORE_SECRETS
        nb = new_notebook()
        nb.metadata.update({"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                            "accelerator": "GPU", "colab": {"provenance": [], "gpuType": self.profile.gpu or "T4"},
                            "gwi": {"attempt": req.attempt_id, "job": req.job}})
        cells = kit.bootstrap_cells(req.argv, kit.job_env(req), secrets, SECRET_STORE, requirement=o.install,
                                    hours_limit=req.hours_limit)
        nb.cells = [
            new_markdown_cell(
                f"# gwi: {req.job} (attempt {req.attempt_id})\n\n"
                "1. *Runtime > Change runtime type*: pick a GPU.\n"
                f"2. In *Secrets* (the key icon), add and share with this notebook: {', '.join(secrets)}.\n"
                "3. *Runtime > Run all*. Progress goes to the store; `gwi status` shows it.\n\n"
                f"Command: `{' '.join(req.argv)}`"),
        ] + [new_code_cell(c) for c in cells]
        nbformat.validate(nb)
        return nb

    def launch(self, req: LaunchRequest) -> dict:
        import nbformat

        kit.private_dir(req.workdir)
        done = self.recorded(req.workdir)
        if done:
            return done
        work = Path(req.workdir)
        name = f"gwi-{req.attempt_id}.ipynb"
        local = work / name
        kit.write_private(local, nbformat.writes(self.render(req)).rstrip("\n") + "\n")
        handle = {"workdir": str(work), "notebook": str(local), "heartbeat_url": req.heartbeat_url}
        token = os.environ.get(self.options.drive_token_var)
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
        if self.options.drive_folder:
            meta["parents"] = [self.options.drive_folder]
        body = (f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{json.dumps(meta)}\r\n"
                f"--{boundary}\r\nContent-Type: application/vnd.google.colaboratory\r\n\r\n").encode() + \
            path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        url = f"{self.options.drive_api.rstrip('/')}/upload/drive/v3/files?uploadType=multipart&fields=id"
        headers = {"Authorization": f"Bearer {token}", "Content-Type": f"multipart/related; boundary={boundary}"}

        def once(left: float) -> str:
            r = requests.post(url, data=body, headers=headers, timeout=min(self.options.request_timeout_s, left))
            r.raise_for_status()
            return r.json()["id"]

        # Google asks for exactly this on 429 and 5xx: exponential backoff with jitter; a repeated
        # upload at worst leaves a second copy of the notebook, never a second job
        return kit.with_retries(once, self.translate, deadline_s=self.options.retry_deadline_s)

    def translate(self, exc: Exception) -> PlatformError:
        """Drive's answers and the network's failures -> PlatformError kinds."""
        import requests

        if isinstance(exc, PlatformError):
            return exc
        if isinstance(exc, requests.HTTPError) and exc.response is not None:
            r = exc.response
            try:
                msg = r.json().get("error", {}).get("message", r.text[:200])
            except ValueError:
                msg = r.text[:200]
            return PlatformError(f"{self.name}: Drive upload failed: HTTP {r.status_code}: {msg}",
                                 kit.http_kind(r.status_code, "config"))
        if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
            return PlatformError(f"{self.name}: Google Drive not reachable ({type(exc).__name__})", "retryable")
        if isinstance(exc, (ValueError, KeyError)):
            return PlatformError(f"{self.name}: Drive answered without a file id ({exc})", "retryable")
        return super().translate(exc)

    def query(self, handle: dict) -> Status:
        # nothing to ask: a person runs it; the scheduler follows its heartbeat and its last word
        if kit.was_cancelled(handle["workdir"]):
            return Status(State.CANCELLED, None, "cancelled")
        return Status(State.PENDING)

    def cancel(self, handle: dict) -> None:
        from ..runs import CANCEL
        from ..store import split_url

        kit.mark_cancelled(handle["workdir"])
        store, _ = split_url(handle["heartbeat_url"])
        store.put_bytes(CANCEL, b"cancelled by gwi\n")  # the running gwi stops at its next beat

    def instances(self, workroot: Path | None = None) -> list[dict]:
        """None that gwi can see: a person runs the notebook (its heartbeat and cancel flag follow it)."""
        return []

    def logs(self, handle: dict, tail: int | None = None) -> str:
        return (f"Colab keeps the output in the notebook itself: {handle.get('note', handle['notebook'])}\n"
                "(the job's progress is in `gwi status`)\n")
