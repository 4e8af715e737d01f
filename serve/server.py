"""Running the app on uvicorn for `serve` and `ui`: the listening line once the socket is bound,
probe and scrape requests kept out of the access log, and a shutdown (SIGTERM, Ctrl-C) that lets
running pieces finish for a grace period, then ends the rest so that every client gets an answer
(a JSON 503, or a stream's ``error`` event) instead of a cut connection and a traceback."""

from __future__ import annotations

import asyncio
import logging

import uvicorn

from notagen_trt.errors import NotaGenError

from .pool import EnginePool

FLUSH = 5.0  # seconds after the grace for the answers of the pieces it ended to go out
QUIET_PATHS = ("/healthz", "/readyz", "/metrics")  # polled every few seconds: logged only when they fail


class _QuietProbes(logging.Filter):
    """Drops uvicorn's access lines for successful probes and scrapes (args: client, method, path,
    HTTP version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (len(args) >= 5 and str(args[2]).split("?")[0] in QUIET_PATHS and int(args[4]) < 400)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, pool: EnginePool, grace: float, ready: str, log) -> None:
        super().__init__(config)
        self.pool, self.grace, self.ready, self.log = pool, grace, ready, log

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:  # bound: only now is the address true
            self.log(self.ready)

    async def shutdown(self, sockets=None) -> None:
        async def end_pieces_after_grace() -> None:
            await asyncio.sleep(self.grace)
            busy = self.pool.active + self.pool.waiting()
            if busy:
                self.log(f"the {self.grace:g} s grace is over: ending {busy} piece{'s' * (busy != 1)} "
                         "(their clients are told the service is shutting down)")
            await asyncio.to_thread(self.pool.close)

        if self.pool.active or self.pool.waiting():
            self.log(f"shutting down: {self.pool.active} running and {self.pool.waiting()} waiting pieces get "
                     f"{self.grace:g} s to finish (--grace)")
        timer = asyncio.create_task(end_pieces_after_grace())
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()


def run(app, pool: EnginePool, host: str, port: int, log_level: str, grace: float, ready: str, log) -> None:
    """Serve ``app`` until SIGTERM or Ctrl-C; ``ready`` is logged once the address is bound."""
    logging.getLogger("uvicorn.access").addFilter(_QuietProbes())
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=grace + FLUSH)
    server = _Server(config, pool, grace, ready, log)
    try:
        server.run()
    except SystemExit:
        if server.started:
            raise
        # uvicorn exits 3 when the bind fails (another process took the port after our check)
        raise NotaGenError(f"cannot listen on {host}:{port}; pick another --port") from None
