"""The deployed process: a Worker plus its HTTP side (/metrics, /healthz, /readyz, /creators/<id>)."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream.config import WorkerConfig
from stream.engine import model
from stream.engine.creator_view import creator_view
from stream.engine.policy import Policy
from stream.kafka.routing import partition_for
from stream.runtime.task import TaskState
from stream.runtime.worker import Worker

log = logging.getLogger(__name__)


def build_app(worker: Worker) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(worker.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        """Live while the worker can go on (Worker.health): a 503 gets the pod restarted."""
        h = worker.health()
        return web.json_response({"status": "ok" if h.live else "stalled", "reasons": h.reasons},
                                 status=200 if h.live else 503)

    async def readyz(_: web.Request) -> web.Response:
        """Ready while every owned partition is running and making progress; says which are not and why."""
        h = worker.health()
        return web.json_response({"ready": h.ready, "reasons": h.reasons, "partitions": sorted(worker.tasks),
                                  "tasks": {str(p): t for p, t in h.partitions.items()}},
                                 status=200 if h.ready else 503)

    async def creator(request: web.Request) -> web.Response:
        """Balance and open window tallies of a creator, answered by the worker that owns its partition."""
        cid = request.match_info["creator_id"]
        n = worker.gifts_partitions()
        p = partition_for(cid.encode(), n) if n else None
        task = worker.tasks.get(p) if p is not None else None
        if task is None:
            return web.json_response({"error": "not owned here", "creator_id": cid, "partition": p,
                                      "owned_partitions": sorted(worker.tasks)}, status=421)
        if task.state is not TaskState.RUNNING:
            return web.json_response({"error": "partition is restoring", "creator_id": cid, "partition": p},
                                     status=503)
        c, account = task.engine.creator(cid), task.engine.account(cid)
        if c is None and account is None:
            return web.json_response({"error": "unknown creator", "creator_id": cid}, status=404)
        view = creator_view(cid, p, c, task.engine.policy, task.engine.watermark, task.engine.close_cursor, account)
        return web.Response(body=model.encode(view), content_type="application/json")

    app = web.Application()
    app.add_routes([web.get("/metrics", metrics), web.get("/healthz", healthz), web.get("/readyz", readyz),
                    web.get("/creators/{creator_id}", creator)])
    return app


async def serve_worker(cfg: WorkerConfig, policy: Policy, stop: asyncio.Event, worker_id: str = "worker") -> None:
    worker = Worker(cfg, policy, worker_id=worker_id)
    runner = None
    if cfg.http_port:
        runner = web.AppRunner(build_app(worker), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "0.0.0.0", cfg.http_port).start()
        log.info("http listening", extra={"port": cfg.http_port})
    task = asyncio.create_task(worker.run())
    stopper = asyncio.create_task(stop.wait())
    _done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    worker.stop()
    try:
        # Finishes the batch in hand, commits it, leaves the group; a broker that is away cannot hold the
        # process longer than the shutdown timeout: past it the batch in hand is abandoned (its transaction
        # never commits; the next owner's fencing aborts it) and the clients are closed, each bounded.
        done, _ = await asyncio.wait({task}, timeout=cfg.shutdown_timeout_ms / 1000)
        if not done:
            log.warning("shutdown timeout: abandoning the batch in hand",
                        extra={"worker": worker_id, "timeout_ms": cfg.shutdown_timeout_ms})
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        else:
            task.result()
    finally:
        stopper.cancel()
        if runner:
            await runner.cleanup()
