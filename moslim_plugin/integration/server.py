"""`moslim-openrlhf serve-reward`: the MOSLIM reward behind OpenRLHF's remote reward-model HTTP protocol.

Pass `http://HOST:PORT/get_reward` as `--reward.remote_url`. Each vLLM engine actor POSTs one sample at a time,
`{"query": [q], "prompts": [p], "labels": [l]}`, and reads `{"rewards", "scores", "extra_logs"}`, as with OpenRLHF's
own `openrlhf/cli/serve_rm.py`; our replies also carry `reasons` (why each fallback reward was given, else null).
Unlike that server, concurrent requests are batched into one forward pass, fairly (`RewardEngine`, see
reward_engine.py), and every input is bounded: body size and samples per request (413 naming the limit), queued
samples (503 when full), a per-request deadline (503). Every answer that is not 200 is counted in `/stats`
(`http_<status>`, `failed_requests`). `/health` reports the reward configuration, which `train_ppo_ray` compares
with its own command line before it starts.

The reward flags are `train_ppo_ray`'s (`reward_config.add_flags`), validated the same way at start-up. When the
failure policy says stop (`--moslim.strict`, or more than `--moslim.max_error_share` of recent samples failed), the
server answers 503 with the reasons and logs them at ERROR. OpenRLHF's client retries 5 times, then logs at INFO and
leaves the sample without a reward, and the trainer stops ("reward_model_group is required when rewards are not
precomputed"): the reason is in this server's log and replies.
"""

import argparse
import asyncio
import json
import logging
import socket
from types import SimpleNamespace

from moslim_plugin import UserError, add_threads_flag, option_values, positive_int, set_threads
from moslim_plugin.integration import reward_config
from moslim_plugin.integration.reward_config import RewardConfig
from moslim_plugin.integration.reward_engine import (
    DeadlineExceeded,
    QueueFull,
    RewardEngine,
    RewardFailure,
    build_engine,
)

logger = logging.getLogger(__name__)
MIB = 1 << 20


def create_app(engine: RewardEngine, max_body_bytes: int = 8 * MIB, max_samples: int = 1024):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI(title="MOSLIM reward server")

    @app.post("/get_reward")
    async def get_reward(request: Request):
        status, body = await answer(request)
        if status != 200:
            engine.count(f"http_{status}")
            engine.count("failed_requests")
        return JSONResponse(body, status_code=status)

    async def answer(request) -> tuple[int, dict]:
        too_big = (413, {"error": f"request body over the server's limit of {max_body_bytes} bytes "
                                  f"(--server.max_body_mb); send fewer or shorter samples per request"})  # fmt: skip
        if int(request.headers.get("content-length") or 0) > max_body_bytes:
            return too_big
        raw, size = [], 0
        async for part in request.stream():  # counted as it arrives: a body without Content-Length is bounded too
            size += len(part)
            if size > max_body_bytes:
                return too_big
            raw.append(part)
        try:
            data = json.loads(b"".join(raw))
        except ValueError as e:
            return 400, {"error": f"request body is not JSON: {e}"}
        fields = {key: data.get(key) if isinstance(data, dict) else None for key in ("query", "prompts", "labels")}
        missing = [key for key, value in fields.items() if not isinstance(value, list)]
        if missing:
            return 400, {
                "error": f"expected lists 'query', 'prompts' and 'labels' (OpenRLHF's format); bad: {missing}"
            }
        if len(fields["query"]) > max_samples:
            return 413, {"error": f"{len(fields['query'])} samples in one request, over the server's limit of "
                                  f"{max_samples} (--server.max_samples); split the request"}  # fmt: skip
        try:
            future = engine.submit(fields["query"], fields["prompts"], fields["labels"])
            return 200, await asyncio.wrap_future(future)
        except ValueError as e:
            return 400, {"error": str(e)}
        except (QueueFull, DeadlineExceeded, RewardFailure) as e:
            logger.error("%s", e)
            return 503, {"error": str(e)}
        except Exception as e:  # a bug of ours (e.g. a mapping returning the wrong shape): counted, not hidden
            logger.exception("MOSLIM reward request failed")
            return 500, {"error": f"internal error: {type(e).__name__}: {e}"}

    @app.get("/stats")
    async def stats():
        return dict(engine.stats)

    @app.get("/health")
    async def health():
        return {"status": "ok", "objectives": list(engine.spec.names), "reward_config": engine.config.to_dict()}

    return app


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moslim-openrlhf serve-reward", description=__doc__.split("\n")[0])
    p.add_argument("--reward.model_name_or_path", required=True, help="MOSLIM RM checkpoint folder")
    reward_config.add_flags(p.add_argument_group("MOSLIM reward (the same flags as train_ppo_ray's)"))
    g = p.add_argument_group("server")
    g.add_argument("--server.host", default="127.0.0.1", help="bind address (0.0.0.0 exposes it to the network)")
    g.add_argument("--server.port", type=int, default=5000)
    g.add_argument("--server.max_batch_size", type=positive_int, default=64, help="most samples in one forward pass")
    g.add_argument("--server.max_wait_ms", type=float, default=5.0, help="longest wait for more requests to batch")
    g.add_argument("--server.chunk_size", type=positive_int, default=16, help="samples of one request per batch turn")
    g.add_argument("--server.max_samples", type=positive_int, default=1024, help="most samples a request (else 413)")
    g.add_argument("--server.max_body_mb", type=float, default=8.0, help="largest request body (else 413)")
    g.add_argument("--server.max_queued_samples", type=positive_int, default=4096, help="queue bound (else 503)")
    g.add_argument("--server.deadline_s", type=float, default=120.0, help="per-request deadline (else 503)")
    g.add_argument("--server.log_level", default="info")
    add_threads_flag(p)
    return p


def main(argv=None) -> int:
    import uvicorn

    args = vars(build_parser().parse_args(argv))
    server = SimpleNamespace(**{k.split(".", 1)[1]: v for k, v in args.items() if k.startswith("server.")})
    logging.basicConfig(level=server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = RewardConfig(rm_path=args["reward.model_name_or_path"], **option_values(RewardConfig, args, "moslim"))
    set_threads(args["threads"])
    # uvicorn would find a taken port only after the model has loaded, and report it as a log line.
    try:
        with socket.socket(socket.getaddrinfo(server.host, server.port)[0][0]) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((server.host, server.port))
    except OSError as e:
        raise UserError(f"--server.host {server.host} --server.port {server.port}: cannot listen ({e})") from None
    engine = build_engine(
        config,
        max_batch_size=server.max_batch_size,
        max_wait_ms=server.max_wait_ms,
        max_queued_samples=server.max_queued_samples,
        chunk_size=server.chunk_size,
        deadline_s=server.deadline_s,
    )
    logger.info("MOSLIM reward server on http://%s:%d/get_reward, %s", server.host, server.port, engine.config)
    app = create_app(engine, max_body_bytes=int(server.max_body_mb * MIB), max_samples=server.max_samples)
    # Per-request access logs would dominate the log (and the CPU) at thousands of requests per second.
    uvicorn.run(app, host=server.host, port=server.port, log_level=server.log_level, access_log=False)
    return 0
