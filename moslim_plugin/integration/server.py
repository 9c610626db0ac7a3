"""`moslim-openrlhf serve-reward`: the MOSLIM reward behind OpenRLHF's remote reward-model HTTP protocol.

Pass `http://HOST:PORT/get_reward` as `--reward.remote_url`. Each vLLM engine actor POSTs one sample at a time,
`{"query": [q], "prompts": [p], "labels": [l]}`, and reads `{"rewards", "scores", "extra_logs"}`, as with OpenRLHF's
own `openrlhf/cli/serve_rm.py`. Unlike that server, concurrent requests are batched into one forward pass
(`RewardEngine`, see remote_reward.py): `/stats` shows how many forward calls served how many requests.

Strict mode (`--moslim.strict`) answers HTTP 500 with the reason when a sample cannot be scored. OpenRLHF's client
retries 5 times, then logs the failure at INFO and leaves the sample without reward, and the trainer stops with
"reward_model_group is required when rewards are not precomputed"; the reason is in this server's log at ERROR.
"""

import argparse
import asyncio
import logging

from moslim_plugin.integration.remote_reward import DEFAULT_TEMPLATE, RewardEngine, StrictRewardError, build_engine

logger = logging.getLogger(__name__)


def create_app(engine: RewardEngine):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI(title="MOSLIM reward server")

    @app.post("/get_reward")
    async def get_reward(request: Request):
        try:
            data = await request.json()
        except ValueError as e:
            return JSONResponse({"error": f"request body is not JSON: {e}"}, status_code=400)
        fields = {key: data.get(key) if isinstance(data, dict) else None for key in ("query", "prompts", "labels")}
        missing = [key for key, value in fields.items() if not isinstance(value, list)]
        if missing:
            return JSONResponse(
                {"error": f"expected lists 'query', 'prompts' and 'labels' (OpenRLHF's format); bad: {missing}"},
                status_code=400,
            )
        try:
            reply = await asyncio.wrap_future(engine.submit(fields["query"], fields["prompts"], fields["labels"]))
        except ValueError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        except StrictRewardError as e:
            logger.error("%s", e)
            return JSONResponse({"error": str(e)}, status_code=500)
        return JSONResponse(reply)

    @app.get("/stats")
    async def stats():
        return dict(engine.stats)

    @app.get("/health")
    async def health():
        return {"status": "ok", "objectives": list(engine.spec.names)}

    return app


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moslim-openrlhf serve-reward", description=__doc__.split("\n")[0])
    p.add_argument("--reward.model_name_or_path", dest="rm_path", required=True, help="MOSLIM RM checkpoint folder")
    p.add_argument("--moslim.mapping", dest="mapping", default="moslim", help="mapping function name")
    p.add_argument("--moslim.mapping_kwargs", dest="mapping_kwargs", default="{}", help="JSON kwargs of the mapping")
    p.add_argument(
        "--moslim.strict",
        "--strict",
        dest="strict",
        action="store_true",
        help="answer HTTP 500 when a sample cannot be scored, instead of the fallback reward",
    )
    p.add_argument(
        "--moslim.fallback_reward",
        dest="fallback_reward",
        type=float,
        default=0.0,
        help="reward of a sample that could not be scored (non-strict mode); counted in moslim/errors",
    )
    p.add_argument(
        "--moslim.template",
        dest="template",
        default=DEFAULT_TEMPLATE,
        help="policy chat template: auto, chatml, llama3 or a JSON object {assistant, user, end}",
    )
    p.add_argument("--data.max_len", dest="max_length", type=int, default=512, help="RM max tokens per sample")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"], help="default: bf16 on cuda, else fp32")
    p.add_argument("--max_batch_size", type=int, default=64, help="most samples in one forward pass")
    p.add_argument("--rm_batch_size", type=int, default=None, help="rows per model call (default: 16 on cpu)")
    p.add_argument("--max_wait_ms", type=float, default=5.0, help="longest wait for more requests to batch")
    p.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 exposes the server to the network)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--log_level", default="info")
    return p


def main(argv=None) -> int:
    import uvicorn

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = build_engine(
        args.rm_path,
        mapping=args.mapping,
        mapping_kwargs=args.mapping_kwargs,
        device=args.device,
        dtype=args.dtype,
        max_length=args.max_length,
        rm_batch_size=args.rm_batch_size,
        template=args.template,
        strict=args.strict,
        fallback_reward=args.fallback_reward,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
    )
    logger.info("MOSLIM reward server on http://%s:%d/get_reward (strict=%s)", args.host, args.port, args.strict)
    # Per-request access logs would dominate the log (and the CPU) at thousands of requests per second.
    uvicorn.run(create_app(engine), host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0
