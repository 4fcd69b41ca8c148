"""Background jobs of the daemon (paired acquisition), and their control commands.

:class:`JobManager` runs one job at a time on a worker thread of its own; the control
socket only queues a job and answers with its id at once. A job is ``queued``, then
``running``, then ``done`` (with a ``result``) or ``failed`` (with an ``error``).

:func:`install_pair_commands` adds two commands to a :class:`~livedenoise.transport.control.ControlServer`:

- ``{"cmd": "collect_pairs", "short_ms": S, "long_ms": L, "pairs": N, "output": DIR}``
  (optional ``shorts_per_pair``, ``positions``: ``"current"`` or ``"grid NxM STEP_UM"`` or
  ``"list FILE"``) -> ``{"ok": true, "id": JOB_ID, "state": "queued"}``. The job pauses the
  pipeline's stream, collects on the same core, restores the camera settings and resumes
  the stream.
- ``{"cmd": "job", "id": JOB_ID}`` -> ``{"ok": true, "id", "kind", "state", "progress",
  "result", "error", ...}``.
- ``{"cmd": "cancel", "id": JOB_ID}`` -> ``{"ok": true, "id", "state", ...}``: a queued job
  fails without running, a running collection stops after the frame in flight and keeps
  its complete pairs; the job then ends ``failed`` with an error starting "cancelled".

Paths: ``output`` and a ``positions`` list file resolve inside the daemon's data folder
(``data_dir``, the ``--data-dir`` option of ``serve`` and ``demo``); a relative path is
taken inside it, and paths leading outside it (absolute, ``..``, symbolic links), NUL
bytes and other invalid paths are refused before anything is queued. Without a data
folder, ``collect_pairs`` is refused.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from livedenoise.acquisition.collect import CollectCancelled, collect_pairs, parse_positions, validate_request
from livedenoise.acquisition.pairs import PairsError
from livedenoise.util.paths import PathError, confine

__all__ = ["JobContext", "JobManager", "install_pair_commands"]

log = logging.getLogger("livedenoise")

STATES = ("queued", "running", "done", "failed")


@dataclass
class JobContext:
    """What a running job sees: its id, a progress setter and a cancel flag.

    Attributes
    ----------
    id : str
    cancel : threading.Event
        Set when the daemon stops (or the job is cancelled); the job should end soon.
    cancel_reason : str or None
        Why ``cancel`` was set (``"cancelled by a cancel request"``, ``"the daemon stopped"``).
    """

    id: str
    kind: str
    cancel: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str | None = None
    _progress: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def progress(self, **fields: Any) -> None:
        """Update the progress fields reported by ``job`` (JSON-able values)."""
        with self._lock:
            self._progress.update(fields)


@dataclass
class _Job:
    ctx: JobContext
    fn: Callable[..., Any]
    args: dict[str, Any]
    state: str = "queued"
    result: Any = None
    error: str | None = None
    t_submitted: float = field(default_factory=time.time)
    t_started: float | None = None
    t_finished: float | None = None


class JobManager:
    """A queue of jobs run one at a time on one worker thread.

    Parameters
    ----------
    keep : int
        How many finished jobs are remembered (oldest forgotten first).

    Examples
    --------
    >>> jobs = JobManager()
    >>> jid = jobs.submit("add", lambda ctx, a, b: {"sum": a + b}, a=1, b=2)
    >>> jobs.wait(jid, timeout_s=5)["result"]
    {'sum': 3}
    >>> jobs.close()
    """

    def __init__(self, *, keep: int = 100) -> None:
        self._jobs: dict[str, _Job] = {}
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._ids = itertools.count(1)
        self._keep = keep
        self._worker: threading.Thread | None = None
        self._closed = False

    def submit(self, kind: str, fn: Callable[..., Any], **args: Any) -> str:
        """Queue ``fn(ctx, **args)``; return the job id at once.

        ``fn`` gets a :class:`JobContext` first; what it returns (a JSON-able dict) is the
        job's ``result``; an exception fails the job with its message as ``error``.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("the job manager is closed (the daemon is stopping)")
            job_id = f"job-{next(self._ids)}"
            self._jobs[job_id] = _Job(JobContext(job_id, kind), fn, args)
            self._forget_old()
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="livedenoise-jobs", daemon=True)
                self._worker.start()
        self._queue.put(job_id)
        log.info("job %s (%s) queued", job_id, kind)
        return job_id

    def _forget_old(self) -> None:
        finished = [k for k, j in self._jobs.items() if j.state in ("done", "failed")]
        for k in finished[: max(0, len(finished) - self._keep)]:
            del self._jobs[k]

    def job(self, job_id: str) -> dict[str, Any]:
        """The job's state: ``id``, ``kind``, ``state``, ``progress``, ``result``, ``error``, times.

        Raises ``KeyError`` (with the known ids) for an unknown id.
        """
        with self._lock:
            j = self._jobs.get(job_id)
            if j is None:
                known = ", ".join(self._jobs) or "none"
                raise KeyError(f"no job {job_id!r} (known jobs: {known})")
            with j.ctx._lock:
                progress = dict(j.ctx._progress)
            return {
                "id": job_id,
                "kind": j.ctx.kind,
                "state": j.state,
                "progress": progress,
                "result": j.result,
                "error": j.error,
                "t_submitted": j.t_submitted,
                "t_started": j.t_started,
                "t_finished": j.t_finished,
                "cancelled": j.ctx.cancel.is_set(),
            }

    def jobs(self) -> list[dict[str, Any]]:
        """All remembered jobs, oldest first."""
        with self._lock:
            ids = list(self._jobs)
        return [self.job(i) for i in ids]

    def wait(self, job_id: str, timeout_s: float | None = None) -> dict[str, Any]:
        """Block until the job is ``done`` or ``failed`` (or the timeout); return its state."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._changed:
            while self._jobs[job_id].state not in ("done", "failed"):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._changed.wait(left)
        return self.job(job_id)

    def cancel(self, job_id: str, reason: str = "cancelled by a cancel request") -> dict[str, Any]:
        """Ask a job to stop (a queued one fails without running); return its state.

        Raises ``KeyError`` (with the known ids) for an unknown id. Cancelling a finished
        job changes nothing.
        """
        with self._lock:
            j = self._jobs.get(job_id)
            if j is None:
                known = ", ".join(self._jobs) or "none"
                raise KeyError(f"no job {job_id!r} (known jobs: {known})")
            if j.state in ("queued", "running") and not j.ctx.cancel.is_set():
                j.ctx.cancel_reason = reason
                j.ctx.cancel.set()
                log.info("job %s (%s): %s", job_id, j.ctx.kind, reason)
        return self.job(job_id)

    def close(self, timeout_s: float = 30.0) -> None:
        """Cancel every job (running ones end ``failed``) and stop the worker. Idempotent."""
        with self._lock:
            self._closed = True
            for j in self._jobs.values():
                if not j.ctx.cancel.is_set():
                    j.ctx.cancel_reason = "the daemon stopped"
                j.ctx.cancel.set()
            worker = self._worker
        self._queue.put(None)
        if worker is not None:
            worker.join(timeout_s)
            if worker.is_alive():
                log.warning("job worker did not stop within %.0f s", timeout_s)

    def _set(self, j: _Job, **changes: Any) -> None:
        with self._changed:
            for k, v in changes.items():
                setattr(j, k, v)
            self._changed.notify_all()

    def _run(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:
                break
            with self._lock:
                j = self._jobs.get(job_id)
            if j is None:
                continue
            if j.ctx.cancel.is_set():
                why = j.ctx.cancel_reason or "the daemon stopped"
                self._set(
                    j, state="failed", error=f"cancelled before it started ({why})", t_finished=time.time()
                )
                continue
            self._set(j, state="running", t_started=time.time())
            try:
                result = j.fn(j.ctx, **j.args)
            except BaseException as exc:
                log.error("job %s (%s) failed: %s", job_id, j.ctx.kind, exc)
                self._set(j, state="failed", error=str(exc) or type(exc).__name__, t_finished=time.time())
            else:
                self._set(j, state="done", result=result, t_finished=time.time())
                log.info("job %s (%s) done", job_id, j.ctx.kind)
        # anything still queued when closing fails without running
        with self._changed:
            for j in self._jobs.values():
                if j.state == "queued":
                    j.state, j.error, j.t_finished = (
                        "failed",
                        "the daemon stopped before the job started",
                        time.time(),
                    )
            self._changed.notify_all()


# -- the paired-acquisition commands ------------------------------------------------------

_COLLECT_KEYS = {"cmd", "short_ms", "long_ms", "pairs", "output", "shorts_per_pair", "positions"}
NO_DATA_DIR = (
    "this daemon collects pairs only inside a data folder named when it starts, and it was "
    "started without one: restart it with --data-dir DIR, then give output as a folder name inside DIR"
)


def _wait_idle(core: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while core.isSequenceRunning():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _collect_job(
    ctx: JobContext,
    *,
    request: Any,
    positions: Any,
    pipeline: Any,
    core: Any,
    calibration: Any,
    calibration_file: str | None,
) -> dict[str, Any]:

    def daemon_stopped() -> bool:
        return not getattr(pipeline, "running", True)

    wait_running = getattr(pipeline, "wait_running", None)
    if wait_running is not None and not getattr(pipeline, "running", True):
        # sent right after the start: the control socket answers while the engine is prepared
        ctx.progress(pairs_done=0, pairs_total=request.pairs, stage="waiting for the stream to start")
        while not ctx.cancel.is_set() and not wait_running(0.5) and not getattr(pipeline, "ended", True):
            pass
    if daemon_stopped():
        raise RuntimeError("the daemon is stopping; no pairs were collected")
    was_streaming = getattr(pipeline, "state", "running") == "running"
    ctx.progress(pairs_done=0, pairs_total=request.pairs, stage="pausing the stream")
    if was_streaming:
        pipeline.pause()
    try:
        if not _wait_idle(core, 5.0):
            raise RuntimeError("the camera did not stop streaming within 5 s; pairs not collected")
        ctx.progress(stage="collecting")
        try:
            result = collect_pairs(
                core,
                request.output,
                short_ms=request.short_ms,
                long_ms=request.long_ms,
                pairs=request.pairs,
                shorts_per_pair=request.shorts_per_pair,
                positions=positions,
                calibration=calibration,
                calibration_file=calibration_file,
                progress=lambda done, total: ctx.progress(pairs_done=done, pairs_total=total),
                cancel=ctx.cancel,
                stop_when=daemon_stopped,
            )
        except CollectCancelled as exc:
            if ctx.cancel.is_set() and ctx.cancel_reason and "daemon" not in ctx.cancel_reason:
                why = f"cancelled ({ctx.cancel_reason})"
            else:
                why = "cancelled: the daemon stopped during the collection"
            raise RuntimeError(f"{why}: {exc}") from exc
    finally:
        if was_streaming and not daemon_stopped():
            pipeline.resume()
            ctx.progress(stage="stream resumed")
    ctx.progress(stage="done")
    return result


def install_pair_commands(
    server: Any,
    pipeline: Any,
    core: Any,
    jobs: JobManager,
    *,
    calibration: Any = None,
    calibration_file: str | Path | None = None,
    data_dir: str | Path | None = None,
) -> None:
    """Register ``collect_pairs``, ``job`` and ``cancel`` on ``server`` (a ControlServer).

    Parameters
    ----------
    server : livedenoise.transport.control.ControlServer
    pipeline : livedenoise.live.pipeline.Pipeline
        Anything with ``pause()``, ``resume()``, ``state`` and ``running``.
    core : pymmcore_plus.CMMCorePlus
        The core the pipeline streams from (the collection uses it while paused).
    jobs : JobManager
        Close it when the daemon stops: a running collection then ends ``failed``,
        keeping the complete pairs.
    calibration : Calibration, optional
        Default: ``pipeline.calibration``.
    calibration_file : path-like, optional
        The calibration TIFF to copy into datasets (default: the calibration's ``path``).
    data_dir : path-like, optional
        The folder datasets are written in (``output`` and positions files of requests
        resolve inside it). ``None``: ``collect_pairs`` is refused.
    """

    roots = [] if data_dir is None else [Path(data_dir)]

    def collect_pairs(req: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(req) - _COLLECT_KEYS)
        if unknown:
            return {
                "ok": False,
                "error": f"collect_pairs got unknown argument(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(_COLLECT_KEYS - {'cmd'}))}",
            }
        try:
            output = req.get("output")
            if output is not None:
                if not roots:
                    raise PairsError(NO_DATA_DIR)
                output = confine(output, roots, what="output", option="--data-dir")
            request = validate_request(
                req.get("short_ms"),
                req.get("long_ms"),
                req.get("pairs"),
                output,
                req.get("shorts_per_pair", 1),
            )
            spec = req.get("positions", "current")
            if not isinstance(spec, str):
                raise PairsError(
                    "positions must be a string ('current', 'grid NxM STEP_UM', 'list FILE'), "
                    f"got a {type(spec).__name__}"
                )
            positions = parse_positions(spec, core, root=roots[0])
            parent = request.output if request.output.exists() else request.output.parent
            if not parent.is_dir():
                raise PairsError(
                    f"output folder's parent {parent} does not exist; create it inside the data folder "
                    "or choose another output"
                )
        except (PairsError, PathError) as exc:
            return {"ok": False, "error": str(exc)}
        cal = calibration if calibration is not None else getattr(pipeline, "calibration", None)
        if cal is None:
            return {
                "ok": False,
                "error": "the daemon has no calibration to record with the pairs; start it with --calibration",
            }
        cal_file = calibration_file or cal.meta.get("path")
        if cal_file is not None and not Path(cal_file).is_file():
            cal_file = None
        job_id = jobs.submit(
            "collect_pairs",
            _collect_job,
            request=request,
            positions=positions,
            pipeline=pipeline,
            core=core,
            calibration=cal,
            calibration_file=cal_file,
        )
        return {"id": job_id, "state": "queued"}

    def by_id(cmd: str, act: Callable[[str], dict[str, Any]]) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """A handler of ``{"cmd": cmd, "id": JOB}`` that calls ``act(JOB)``."""

        def handle(req: dict[str, Any]) -> dict[str, Any]:
            job_id = req.get("id")
            if not isinstance(job_id, str):
                known = ", ".join(j["id"] for j in jobs.jobs()) or "none"
                return {
                    "ok": False,
                    "error": f"{cmd} needs an 'id' string (from collect_pairs); known jobs: {known}",
                }
            try:
                return act(job_id)
            except KeyError as exc:
                return {"ok": False, "error": str(exc.args[0])}

        return handle

    job = by_id("job", jobs.job)
    cancel = by_id("cancel", jobs.cancel)

    server.register("collect_pairs", collect_pairs)
    server.register("job", job)
    server.register("cancel", cancel)
