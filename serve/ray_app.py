"""The service on Ray Serve, beyond one machine: one replica per GPU (or per CPU process), each
running the same FastAPI app over its own engine, scaled on ongoing requests; Ray's proxies and
router spread the requests. Two ways to start it:

    notagen-trt serve --ray [--replicas N]              # a local Ray, or the cluster in RAY_ADDRESS
    serve run notagen_trt.serve.ray_app:app             # CPU replicas, the demo model
    serve run notagen_trt.serve.ray_app:build model=DIR gpus=all max_replicas=8

``build`` takes ServeSettings' fields plus min_replicas, max_replicas and api_key_file.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable

from ray import serve

from notagen_trt.errors import NotaGenError

from .settings import CPU_ROWS, GPU_ROWS, ServeSettings, load_pool, read_api_key

_replica: dict = {}  # this replica process's pool and app options, made by its constructor


def _remember(**app_options) -> None:
    # A function of this module, so that the replica class (which Ray pickles by value, with a
    # copy of its globals) fills the one dict that _build_app (pickled by reference) reads.
    _replica.update(app_options)


def _build_app():
    """The ingress app, built on the replica after its constructor loaded the engine."""
    from .app import create_app

    return create_app(**_replica)


@serve.deployment(name="notagen")
@serve.ingress(_build_app)
class NotaGenReplica:
    def __init__(self, settings: ServeSettings) -> None:
        # Ray gives a GPU replica one GPU (CUDA_VISIBLE_DEVICES), so "all" is that one.
        context = serve.get_replica_context()
        _remember(pool=load_pool(settings), api_key=settings.api_key, max_body=settings.max_body,
                  max_patches=settings.max_patches, replica=f"{context.replica_tag}:{os.getpid()}")


def deployment(settings: ServeSettings, gpu: bool, min_replicas: int = 1, max_replicas: int = 1):
    """The bound application: GPU replicas take one GPU each; CPU replicas one ONNX Runtime thread
    (unless ``threads`` says otherwise) and the CPU backend."""
    if not 1 <= min_replicas <= max_replicas:
        raise ValueError(f"replicas must satisfy 1 <= min ({min_replicas}) <= max ({max_replicas})")
    if not gpu:
        settings = dataclasses.replace(settings, gpus="none", threads=settings.threads or 1)
    actor = {"num_gpus": 1} if gpu else {"num_cpus": settings.threads}
    rows = settings.rows or (GPU_ROWS if gpu else CPU_ROWS)
    if min_replicas == max_replicas:
        scaling: dict = {"num_replicas": max_replicas}
    else:  # a replica's rows are its useful concurrency; more ongoing requests than that add one
        scaling = {"autoscaling_config": {"min_replicas": min_replicas, "max_replicas": max_replicas,
                                          "target_ongoing_requests": rows}}
    return NotaGenReplica.options(ray_actor_options=actor, max_ongoing_requests=rows + settings.max_queue,
                                  **scaling).bind(settings)


def build(args: dict):
    """The `serve run notagen_trt.serve.ray_app:build key=value ...` target (CPU replicas unless
    gpus is given; autoscaling between min_replicas (1) and max_replicas (4))."""
    args = dict(args)
    low, high = int(args.pop("min_replicas", 1)), int(args.pop("max_replicas", 4))
    key_file = args.pop("api_key_file", None)
    args.setdefault("gpus", "none")
    settings = ServeSettings.from_dict({**args, "api_key": read_api_key(key_file) if key_file else None})
    return deployment(settings, settings.gpus != "none", low, high)


app = build({})


def run(settings: ServeSettings, host: str, port: int, replicas: int | None, min_replicas: int,
        log: Callable[[str], None]) -> None:
    """`notagen-trt serve --ray`: deploy on Ray (RAY_ADDRESS, or a local one), serve until interrupted."""
    import ray

    ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0)) if settings.gpus != "none" else 0
        high = replicas or gpus or max(1, int(resources.get("CPU", 1)) // 2)
        serve.start(http_options={"host": host, "port": port})
        try:
            serve.run(deployment(settings, gpus > 0, min(min_replicas, high), high), name="notagen", route_prefix="/")
        except Exception as exc:  # Ray raises its own types, with the replica's traceback in the message
            raise NotaGenError(f"Ray Serve could not deploy the service: {str(exc).strip().splitlines()[-1]}") from None
        log(f"serving on http://{host}:{port} with Ray Serve: {min(min_replicas, high)} to {high} "
            f"{'GPU' if gpus else 'CPU'} replicas (Ctrl-C stops)")
        while True:
            time.sleep(1)
    finally:
        serve.shutdown()
        ray.shutdown()
