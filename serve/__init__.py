"""The HTTP service (`notagen-trt serve`): FastAPI on uvicorn over one engine per GPU, or the same
app on Ray Serve. Needs the ``serve`` extra (``ray`` for Ray Serve).

- ``settings``: what a service runs (model, backend, rows, GPUs, limits) and loading its engines.
- ``pool``: the engines behind one service; a request goes to the least loaded one.
- ``schemas``: the request and response bodies (their bounds are the API's validation).
- ``jobs``: one request's piece, from the engine's thread to the request's event loop.
- ``guard``: API key, body size limit and the replica header, before any route.
- ``metrics``: Prometheus metrics of requests, rows, queue and latencies.
- ``app``: the routes (``create_app``).
- ``loadgen``: the load generator behind `notagen-trt loadtest`.
- ``ray_app``: the Ray Serve deployment (``serve run notagen_trt.serve.ray_app:app``).
"""
