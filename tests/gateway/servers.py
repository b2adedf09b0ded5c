"""Run an ASGI app under uvicorn in a background thread, on a free port of 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import uvicorn
from django.db import connections


class ThreadServer:
    def __init__(self, app: Any, *, lifespan: str = "on") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, lifespan=lifespan, log_level="warning", access_log=False, loop="asyncio"
        )
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="test-server")
        self.loop.set_default_executor(executor)
        try:
            self.loop.run_until_complete(self.server.serve(sockets=[self.sock]))
        finally:
            # The app's work in worker threads (snapshot rebuilds, demand signals) opened
            # database connections there; close them before the threads end, or each server a
            # test started would keep its connections open until the session ends.
            workers = len(executor._threads)
            if workers:
                barrier = threading.Barrier(workers)

                def close() -> None:
                    connections.close_all()
                    barrier.wait(timeout=10)  # holds each worker, so every one runs close()

                for future in [executor.submit(close) for _ in range(workers)]:
                    future.result(timeout=30)
            executor.shutdown(wait=True)
            self.loop.close()

    def start(self) -> ThreadServer:
        self._thread.start()
        # Wait on uvicorn's own readiness flag rather than sleeping.
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread died while starting")
            self._thread.join(timeout=0.01)
        return self

    def call(self, coro: Any) -> Any:
        """Run a coroutine on the server's event loop and return its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
        self.sock.close()
