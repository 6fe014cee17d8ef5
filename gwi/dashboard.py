"""``gwi dashboard``: the state as a local web page, refreshing itself.

A Flask app over the same read-only :class:`~gwi.scheduler.view.View` as ``gwi status``: every
request opens the state afresh (no lock, so a dispatcher or watcher goes on beside it) and nothing
here changes it. The page is a shell whose script swaps in ``/live`` (an HTML fragment rendered by
the same template) every few seconds while the tab is visible; ``/api/...`` serves the same records
as ``gwi status --json``. Curves are each run's ``curves.png``, which training publishes with every
checkpoint. It binds to 127.0.0.1 unless told otherwise: the page shows job names, reasons and
store URLs (never a secret), which is still more than the network should see.

Two guards against other pages in the user's own browser: a request whose ``Host`` is not the
address the dashboard bound (127.0.0.1, localhost, ``--host``) is refused, so a web page cannot read
it through DNS rebinding; bound to any other address it also wants the token printed at start (in
the URL, then kept in a same-site cookie).
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import json
import secrets
import socket
import time
from collections import Counter
from contextlib import closing

from .console import STATE_STYLE, clock, duration
from .errors import GwiError, StoreError
from .runs import EVALUATION, WORST, Run
from .tracking import CURVES

DEFAULT_PORT = 8765
EVENTS_SHOWN = 40

# console colours -> the page's badge colours
_BADGE = {"green": "#1a7f37", "cyan": "#0969da", "yellow": "#9a6700", "red": "#cf222e", "bold red": "#cf222e",
          "magenta": "#8250df", "dim": "#6e7781"}


TOKEN_COOKIE = "gwi_dashboard_token"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def create_app(home=None, refresh_s: float = 5.0, host: str = "127.0.0.1", token: str | None = None):
    """The dashboard's Flask app for the state at ``home`` (default: where ``gwi status`` looks),
    answering requests for ``host`` (and the loopback names) only, and with ``token`` only."""
    from flask import Flask, Response, abort, jsonify, render_template, request

    from .paths import gwi_home, home_origin
    from .scheduler import open_view

    app = Flask(__name__)
    where = f"{home or gwi_home()}" + ("" if home else f" ({home_origin()})")
    _guard(app, host, token)

    def view():
        return open_view(home)

    @app.get("/")
    def page():
        with closing(view()) as v:
            return render_template("dashboard.html", live=False, where=where, refresh_ms=int(refresh_s * 1000),
                                   **_page_data(v))

    @app.get("/live")
    def live():
        with closing(view()) as v:
            return render_template("dashboard.html", live=True, **_page_data(v))

    def job_or_404(name: str) -> dict:
        with closing(view()) as v:
            try:
                return _job_data(v, v.resolve(name))
            except GwiError as e:  # no such job: the message lists the known ones
                abort(404, str(e))

    @app.get("/job/<path:job_id>")
    def job(job_id: str):
        return render_template("job.html", live="fragment" in request.args, where=where,
                               refresh_ms=int(refresh_s * 1000), **job_or_404(job_id))

    @app.get("/<any(curves, worst):image>/<path:job_id>.png")
    def run_image(image: str, job_id: str):
        """A run's training curves (train jobs) or worst samples (evaluate jobs), from the store."""
        with closing(view()) as v:
            row = v.state.job(job_id)
            if row is None:
                abort(404, f"no job {job_id!r}")
            url = v.run_url(row)
        name = CURVES if image == "curves" else WORST
        try:
            png = Run(url, patience=0).store.get_bytes(name)
        except StoreError:
            abort(404, f"no {name} in {url} yet")
        return Response(png, mimetype="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/api/status")
    def api_status():
        with closing(view()) as v:
            return jsonify(v.status_records())

    @app.get("/api/job/<path:job_id>")
    def api_job(job_id: str):
        return Response(json.dumps(job_or_404(job_id), default=str), mimetype="application/json")

    app.jinja_env.filters["duration"] = duration
    app.jinja_env.filters["clock"] = clock
    app.jinja_env.globals["badge"] = lambda state: _BADGE.get(STATE_STYLE.get(state, "dim"), "#6e7781")
    return app


def _guard(app, host: str, token: str | None) -> None:
    """Refuse requests for another Host than ``host`` (or the loopback names), and without ``token``
    when one is set; a request that brings the token in its URL gets it back as a same-site cookie."""
    from flask import abort, request

    # a wildcard address is reached by names it cannot know; the token guards it instead
    hosts = None if host in ("0.0.0.0", "::", "") else {h.lower() for h in (*LOOPBACK_NAMES, host)}

    @app.before_request
    def guard():
        name = _host_name(request.host)
        if hosts is not None and name not in hosts:
            abort(403, f"Host {name[:80]!r} is not this dashboard's address (expected one of: {', '.join(sorted(hosts))})")
        if token is not None:
            given = request.args.get("token") or request.cookies.get(TOKEN_COOKIE) or ""
            if not hmac.compare_digest(given.encode(), token.encode()):
                abort(401, "this dashboard wants the token printed when it started: open the URL it printed")

    @app.after_request
    def keep_token(response):
        if token is not None and request.args.get("token"):  # the page's own requests carry the cookie
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
        return response


def _progress(r: dict) -> tuple[float | None, str]:
    """(fraction done or None, its text) of a status record: epochs, else steps."""
    if r["epochs"]:
        return min(1.0, (r["epoch"] or 0) / r["epochs"]), f"epoch {r['epoch'] or 0}/{r['epochs']}"
    if r["total_steps"]:
        return min(1.0, (r["step"] or 0) / r["total_steps"]), f"step {r['step'] or 0}/{r['total_steps']}"
    return None, "-"


def _page_data(v) -> dict:
    recs = v.status_records()
    plans: dict[str, dict] = {}
    for r in recs:
        r["fraction"], r["progress_text"] = _progress(r)
        p = plans.setdefault(r["spec"], {"name": r["spec"], "jobs": [], "store": v.state.spec_store(r["spec"])})
        p["jobs"].append(r)
    for p in plans.values():
        p["counts"] = sorted(Counter(r["shown_state"] for r in p["jobs"]).items())
        p["curves"] = [r for r in p["jobs"] if r["kind"] in ("train", "sweep") and r["attempt"]]
    last = v.state.last_reconcile()
    events = list(v.state.events(after_id=max(0, v.state.last_event_id() - EVENTS_SHOWN)))[::-1]
    return {"plans": list(plans.values()), "platforms": v.platform_records(), "events": events, "now": time.time(),
            "last_pass_age": None if last is None else time.time() - last, "unfinished": v.state.unfinished()}


def _job_data(v, jid: str) -> dict:
    row = v.state.job(jid)
    rec = next(r for r in v.status_records(row["spec"]) if r["job"] == jid)
    rec["fraction"], rec["progress_text"] = _progress(rec)
    attempts = []
    for a in v.state.attempts(jid):
        attempts.append({"n": a["n"], "platform": a["platform"], "state": a["state"],
                         "reason": a["end_reason"] or a["last_error"],
                         "launched_at": a["launched_at"], "ended_at": a["ended_at"], "hours": v.attempt_hours(a),
                         "resumed_from_step": a["resumed_from_step"],
                         "progress": json.loads(a["progress"]) if a["progress"] else None})
    url = v.run_url(row)
    return {"job": rec, "run": url, "definition": v.job_def(row).to_dict(), "attempts": attempts,
            "events": [dict(e) for e in v.state.events(jid)],
            "evaluation": _evaluation(url) if row["kind"] == "evaluate" else None}


def _evaluation(url: str) -> dict | None:
    """An evaluate job's metrics ({family: {samples, mae, rmse, ssim}}, ``overall`` last), once written."""
    try:
        metrics = json.loads(Run(url, patience=0).store.get_bytes(EVALUATION))["metrics"]
    except (StoreError, ValueError, KeyError):
        return None
    return {f: m for f, m in sorted(metrics.items(), key=lambda kv: kv[0] == "overall")}


def serve(host: str = "127.0.0.1", port: int = DEFAULT_PORT, refresh_s: float = 5.0, log=print) -> int:
    """Serve until Ctrl-C. Port 0 takes a free one; the URL printed says which."""
    import logging

    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # errors only, not a line per request
    # bound here, not by werkzeug, whose own message for a busy port ends the process
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.create_server((host, port), family=family)
    except OSError as e:
        raise GwiError(f"dashboard: cannot listen on {host}:{port}: {e.strerror or e}"
                       + (" (another dashboard? --port 0 takes a free port)" if e.errno == errno.EADDRINUSE else "")
                       ) from None
    port = sock.getsockname()[1]
    token = None if _loopback(host) else secrets.token_urlsafe(18)
    server = make_server(host, port, create_app(refresh_s=refresh_s, host=host, token=token), threaded=True,
                         fd=sock.fileno())
    if token:
        log(f"warning: serving on {host}: anyone who can reach it and has the token below sees your jobs, platforms "
            "and store URLs")
    log(f"gwi dashboard on http://{_url_host(host)}:{port}/" + (f"?token={token}" if token else "")
        + " (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        sock.close()
    return 0


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _host_name(header: str) -> str:
    """The name in a Host header, without its port: ``[::1]:8765`` -> ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
