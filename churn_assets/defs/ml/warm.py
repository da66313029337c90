"""The warm scorer: for runs started as files land, one process beside the runs that has MLflow
and LightGBM imported and the champion loaded, so a run for new files scores without importing
them.

Why: every run is a fresh process. Importing MLflow and LightGBM and loading the champion is
~3 s of CPU there, and it holds the GIL against the run's own steps: bronze -> gold took
3.5-5 s beside it against 1.1 s without (reference scale, an hourly increment).

What it answers, on a Unix socket in ``$CHURN_HOME/ops`` (mode 0600, this user only):
- ``champion``: the version the champion alias names now, asked afresh by every run, so a
  promotion (or an alias moved by hand) is followed at once;
- ``score``: the probabilities of a frame of model inputs by a named version, with the same
  ``Scorer`` a run would load itself (``registry.load_model``), so the numbers are the same.
Only the model's input columns cross the socket (no key, no personal data), as Arrow IPC;
nothing is unpickled.

Who uses it: a run whose selection scores and does not train (runs for new files, in continuous
mode or the auto cadence's continuous phase, while retraining is not due). A run that trains
has MLflow loaded anyway and scores itself, so a new champion's full rescoring never crosses
the socket.

Lifetime: such a run (``run_tags.is_continuous``) starts it when none answers (``spawn``); it stays in that
run's process group (stopping ``dg dev`` stops it), holds ``scorer.lock`` (at most one per
home), and exits after ``idle_seconds`` without a request, when its socket is removed or
replaced, or when a run's scoring code or MLflow store differs from its own (an upgrade, a
moved store). One that failed to start is not started again for ``RETRY_SECONDS``. A run that
cannot reach it, or loses it mid-way, loads the model itself, as without it. It holds ~330 MB.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: every code-location load imports this module
    import numpy as np
    import polars as pl

    from churn_assets.defs.ml.registry import Store

CHECK_SECONDS = 5.0  # how often an idle scorer checks that its socket is still its own
ASK_SECONDS = 5.0  # a question about the champion waits this long for an answer
SCORE_SECONDS = 600.0  # scoring the changed customers of one run waits this long
RETRY_SECONDS = 300.0  # after a scorer failed to start, none is started again for this long
_LENGTH = struct.Struct(">Q")


class WarmScorerError(RuntimeError):
    """The warm scorer did not answer, or answered with an error."""


@cache
def code_fingerprint() -> str:
    """The scoring code of this process: a scorer started before an upgrade serves no run after it."""
    import hashlib

    from churn_assets.defs.ml import features, model, registry

    digest = hashlib.sha256()
    for module in (features, model, registry, sys.modules[__name__]):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


def identity(store: Store) -> str:
    """What a run and its scorer must share: the scoring code and the MLflow store (its URI
    hashed: it may carry credentials, and this travels on the socket)."""
    import hashlib

    where = json.dumps([store.tracking_uri, store.artifact_root, store.experiment, store.model_name])
    return f"{code_fingerprint()}-{hashlib.sha256(where.encode()).hexdigest()[:16]}"


def _lock_path(sock: Path) -> Path:
    return sock.with_name("scorer.lock")


def _failed_path(sock: Path) -> Path:
    return sock.with_name("scorer.failed")


def _open_lock(sock: Path) -> int:
    return os.open(_lock_path(sock), os.O_RDWR | os.O_CREAT, 0o600)


# --- framing: a length, then the bytes; a message is a JSON header and, for frames, a payload ---


def _send(conn: socket.socket, header: dict, payload: bytes | None = None) -> None:
    body = json.dumps(header).encode()
    parts = [_LENGTH.pack(len(body)), body]
    if payload is not None:
        parts += [_LENGTH.pack(len(payload)), payload]
    conn.sendall(b"".join(parts))


def _read_exact(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return bytes(buf)


def _recv(conn: socket.socket) -> bytes:
    return _read_exact(conn, _LENGTH.unpack(_read_exact(conn, _LENGTH.size))[0])


# --- the client: what a run uses ----------------------------------------------------------------


class RemoteModel:
    """A model version served by the warm scorer; scoring code calls it as a loaded model."""

    def __init__(self, scorer: WarmScorer, version: str):
        self.scorer, self.version = scorer, version

    def predict_polars(self, df: pl.DataFrame) -> np.ndarray:
        return self.scorer.score(self.version, df)


class WarmScorer:
    """One connection to the warm scorer, for one scoring step."""

    def __init__(self, conn: socket.socket, identity: str):
        self.conn, self.identity = conn, identity

    def _ask(self, header: dict, payload: bytes | None = None, timeout: float = ASK_SECONDS):
        try:
            self.conn.settimeout(timeout)
            _send(self.conn, header, payload)
            answer = json.loads(_recv(self.conn))
            data = _recv(self.conn) if answer.get("payload") else None
        except (OSError, EOFError, ValueError) as exc:
            raise WarmScorerError(f"the warm scorer did not answer ({type(exc).__name__}: {exc})") from exc
        if "error" in answer:
            raise WarmScorerError(f"the warm scorer failed: {answer['error']}")
        return answer, data

    def model(self, version: str) -> RemoteModel:
        return RemoteModel(self, version)

    def champion(self) -> tuple[str, dict[str, str]] | None:
        """(version, tags) of the version the champion alias names now, or None."""
        answer, _ = self._ask({"op": "champion", "identity": self.identity})
        return (answer["version"], answer["tags"]) if answer.get("version") else None

    def score(self, version: str, df: pl.DataFrame) -> np.ndarray:
        import io

        import numpy as np

        from churn_assets.defs.ml.features import FEATURES

        buf = io.BytesIO()
        df.select(FEATURES).write_ipc(buf)  # the model's inputs only
        _, data = self._ask({"op": "score", "version": version}, buf.getvalue(), timeout=SCORE_SECONDS)
        proba = np.frombuffer(data or b"", dtype="<f8")
        if len(proba) != len(df):
            raise WarmScorerError(f"the warm scorer returned {len(proba)} probabilities for {len(df)} rows")
        return proba

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()


def connect(sock: Path | None, store: Store) -> WarmScorer | None:
    """A connection to the warm scorer of this home, or None if none answers."""
    if sock is None or not sock.exists():
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(ASK_SECONDS)
    try:
        conn.connect(str(sock))
    except OSError:
        conn.close()
        return None
    return WarmScorer(conn, identity(store))


def running(sock: Path) -> bool:
    """A warm scorer of this home is alive (it holds the lock while it warms up and serves)."""
    try:
        fd = _open_lock(sock)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared: two probes never collide
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the probe's lock
    return False


def spawn(sock: Path, store: Store, http_timeout: int, http_retries: int, idle_seconds: int, log: Path) -> int | None:
    """Start a warm scorer for this home unless one is alive or one failed to start lately;
    the new process's id, or None."""
    failed = _failed_path(sock)
    if failed.exists() and time.time() - failed.stat().st_mtime < RETRY_SECONDS:
        return None
    sock.parent.mkdir(parents=True, exist_ok=True)
    if running(sock):
        return None
    log.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "socket": str(sock),
        "store": [store.tracking_uri, store.artifact_root, store.experiment, store.model_name],
        "http": [http_timeout, http_retries],
        "idle_seconds": idle_seconds,
    }
    with open(log, "ab") as out:
        # The store's URI may carry credentials: on stdin, not the command line (``ps`` shows that).
        proc = subprocess.Popen(
            [sys.executable, "-m", "churn_assets.defs.ml.warm"],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            close_fds=True,
        )
    proc.stdin.write(json.dumps(config).encode())
    proc.stdin.close()
    return proc.pid


# --- the server -------------------------------------------------------------------------------


def _owns(sock: Path, inode: int) -> bool:
    try:
        return sock.stat().st_ino == inode
    except OSError:
        return False


def _take_lock(sock: Path) -> int | None:
    """The home's scorer lock, or None if another scorer holds it. A few tries: a probe
    (``running``) holds it shared for an instant."""
    fd = _open_lock(sock)
    for _ in range(20):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            time.sleep(0.05)
    os.close(fd)
    return None


def serve(sock: Path, store: Store, http_timeout: int, http_retries: int, idle_seconds: float) -> None:
    own = identity(store)  # before the slow imports: an upgrade landing meanwhile is not taken for ours
    print(f"warm scorer {os.getpid()} starting", flush=True)
    lock = _take_lock(sock)  # held for the process's life
    if lock is None:
        print(f"warm scorer {os.getpid()}: another one serves this home", flush=True)
        return
    import io

    import numpy as np
    import polars as pl

    from churn_assets.defs.ml import registry
    from churn_assets.settings import environment_scope

    models: dict[str, object] = {}

    def model(version: str):
        if version not in models:
            models.clear()  # one version at a time: a promotion replaces it
            models[version] = registry.load_model(store.model_name, version)
        return models[version]

    def champion(client, experiment_id):
        found = registry.current_champion(client, store, experiment_id)
        return (str(found.version), dict(found.tags)) if found is not None else None

    # No progress bar per artifact download in its log.
    quiet = environment_scope(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    with quiet, registry.configured(store, http_timeout, http_retries):
        try:
            client, experiment_id = registry.open_store(store)
            found = champion(client, experiment_id)
            if found:
                model(found[0])  # loaded before it answers: not on the first run's clock
        except Exception:
            _failed_path(sock).touch()  # no run starts another one for a while
            raise
        _failed_path(sock).unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        staging = sock.with_name(f".{sock.name}.{os.getpid()}")
        staging.unlink(missing_ok=True)
        mask = os.umask(0o177)
        try:
            server.bind(str(staging))
        finally:
            os.umask(mask)
        server.listen(4)
        print(f"warm scorer {os.getpid()} serving on {sock} (champion {found[0] if found else None})", flush=True)
        os.replace(staging, sock)  # it appears once it can answer
        inode = sock.stat().st_ino
        server.settimeout(CHECK_SECONDS)
        last, stale = time.monotonic(), False
        while not stale and time.monotonic() - last < idle_seconds and _owns(sock, inode):
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(SCORE_SECONDS)
                while True:
                    try:
                        header = json.loads(_recv(conn))
                    except (OSError, EOFError, ValueError):
                        break
                    try:
                        if header["op"] == "champion" and header.get("identity") != own:
                            _send(
                                conn, {"error": "it runs other code, or another MLflow store, than this run: it stops"}
                            )
                            stale = True
                            break
                        if header["op"] == "champion":
                            found = champion(client, experiment_id)
                            _send(conn, {"version": found[0], "tags": found[1]} if found else {"version": None})
                        elif header["op"] == "score":
                            frame = pl.read_ipc(io.BytesIO(_recv(conn)))
                            proba = np.asarray(model(str(header["version"])).predict_polars(frame), dtype="<f8")
                            _send(conn, {"payload": True}, proba.tobytes())
                        else:
                            _send(conn, {"error": f"unknown request {header['op']!r}"})
                    except Exception as exc:  # noqa: BLE001 - reported to the run, which scores itself
                        with contextlib.suppress(OSError):
                            _send(conn, {"error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            last = time.monotonic()
        server.close()
        if _owns(sock, inode):
            sock.unlink()
        print(f"warm scorer {os.getpid()} stopped", flush=True)


def main() -> None:
    from churn_assets.defs.ml.registry import Store

    # A SIGTERM or a Ctrl-C stops it, whatever it inherited: Dagster's processes give SIGTERM
    # SIGINT's disposition, SIGINT is ignored in a process started in the background (`&`), and
    # an ignored signal stays ignored across exec: such a scorer lived on until idle.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    config = json.loads(sys.stdin.read())
    serve(Path(config["socket"]), Store(*config["store"]), *config["http"], config["idle_seconds"])


if __name__ == "__main__":
    main()
