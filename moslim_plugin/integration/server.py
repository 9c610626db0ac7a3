"""`moslim-openrlhf serve-reward`: the MOSLIM reward behind OpenRLHF's remote reward-model HTTP protocol.

Pass `http://HOST:PORT/get_reward` as `--reward.remote_url`. Each vLLM engine actor POSTs one sample at a time,
`{"query": [q], "prompts": [p], "labels": [l]}`, and reads `{"rewards", "scores", "extra_logs"}`, as with OpenRLHF's
own `openrlhf/cli/serve_rm.py`; our replies also carry `reasons` (why each fallback reward was given, else null).
Unlike that server, concurrent requests are batched into one forward pass, fairly (`RewardEngine`, see
reward_engine.py), and every input is bounded: body size, JSON nesting and samples per request (413 or 400 naming
the limit), queued samples (503 when full), a per-request deadline (503). Every answer that is not 200, whatever
sent it (a bad request, an internal error, an unknown path, a missing API key), is counted in `/stats`:
`http_<status>`, `failed_requests` and `rejected` ({"<status> <reason>": count}; reasons are fixed phrases, never
request text).
`/health` reports the reward configuration, which `train_ppo_ray` compares with its own command line before it
starts, without the checkpoint's path unless an API key guards the server.

The server binds 127.0.0.1 by default and warns at start-up when told to bind any other address. With
`--server.api_key_file` (or `--server.api_key`), every request must carry the key, as `Authorization: Bearer <key>`
or, for OpenRLHF's client, which sends no headers, in the URL: `--reward.remote_url
http://HOST:PORT/get_reward?api_key=<key>`; anything else is answered 401.

The reward flags are `train_ppo_ray`'s (`reward_config.add_flags`), validated the same way at start-up. When the
failure policy says stop (`--moslim.strict`, or more than `--moslim.max_error_share` of recent samples failed), the
server answers 503 with the reasons and logs them at ERROR. OpenRLHF's client retries 5 times, then logs at INFO and
leaves the sample without a reward, and the trainer stops ("reward_model_group is required when rewards are not
precomputed"): the reason is in this server's log and replies.
"""

import argparse
import asyncio
import collections
import dataclasses
import hmac
import http
import ipaddress
import json
import logging
import socket
import urllib.parse
from types import SimpleNamespace

from moslim_plugin import (
    Range,
    UserError,
    add_options,
    add_threads_flag,
    check_options,
    option,
    option_values,
    port,
    positive_int,
    set_threads,
)
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
# OpenRLHF's body is {"query": [str], "prompts": [str], "labels": [str | {"moslim": {"targets": {...}}}]}: depth 6.
MAX_JSON_DEPTH = 16
MIN_API_KEY_LENGTH = 16  # shorter keys can be guessed
REASON_HEADER = "x-moslim-reason"  # a refusal's reason, for /stats (and the client)
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """The --server.* flags (`add_options`): each with its help, default and range, checked before the model loads."""

    host: str = option("127.0.0.1", "bind address; any other than loopback exposes the server (a warning says so)")
    port: int = option(5000, "TCP port", port)
    max_batch_size: int = option(64, "most samples in one forward pass", positive_int)
    max_wait_ms: float = option(5.0, "longest wait for more requests to batch", Range(float, 0, 60_000))
    chunk_size: int = option(16, "samples of one request per batch turn", positive_int)
    max_samples: int = option(1024, "most samples a request (else 413)", positive_int)
    max_body_mb: float = option(8.0, "largest request body in MiB (else 413)", Range(float, 0, 1024, low_open=True))
    max_queued_samples: int = option(4096, "queue bound (else 503)", positive_int)
    deadline_s: float = option(
        120.0, "per-request deadline in seconds (else 503)", Range(float, 0, 86_400, low_open=True)
    )
    log_level: str = option("info", "uvicorn's and the plugin's log level", choices=LOG_LEVELS)
    api_key_file: str | None = option(
        None, f"file holding the API key (>= {MIN_API_KEY_LENGTH} characters) every request must carry (else 401)"
    )
    api_key: str | None = option(
        None, "the API key itself (visible to other users in the process list: prefer a file)"
    )

    def __post_init__(self):
        check_options(self, "server")

    def key(self) -> str | None:
        """The API key, read and checked (None: the server is open to whoever can reach it)."""
        if self.api_key is not None and self.api_key_file is not None:
            raise UserError("--server.api_key and --server.api_key_file: pass one of them")
        key, where = self.api_key, "--server.api_key"
        if self.api_key_file is not None:
            where = f"--server.api_key_file {self.api_key_file}"
            try:
                with open(self.api_key_file, encoding="utf-8") as f:
                    key = f.read(4096).strip()
            except (OSError, UnicodeDecodeError) as e:
                raise UserError(f"{where}: cannot be read ({type(e).__name__}: {e})") from None
        if key is not None and (len(key) < MIN_API_KEY_LENGTH or not key.isprintable() or " " in key):
            raise UserError(
                f"{where}: the key must be at least {MIN_API_KEY_LENGTH} printable characters without spaces "
                f"(got {len(key)} characters); e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return key


def create_app(engine: RewardEngine, max_body_bytes: int = 8 * MIB, max_samples: int = 1024, api_key=None):
    """The ASGI app: FastAPI's routes inside a guard that checks the API key first and counts every answer that is
    not 200 with its reason, whoever sent it (our handlers, FastAPI's 404/405, its 500 for an escaped error)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    # No /docs, /redoc or /openapi.json: every endpoint is one of ours, guarded alike.
    app = FastAPI(title="MOSLIM reward server", docs_url=None, redoc_url=None, openapi_url=None)
    rejected = collections.Counter()

    def refuse(status: int, reason: str, error: str | None = None) -> JSONResponse:
        return JSONResponse({"error": error or reason}, status_code=status, headers={REASON_HEADER: reason})

    @app.post("/get_reward")
    async def get_reward(request: Request):
        try:
            return await answer(request)
        except Exception as e:  # a bug of ours (e.g. a mapping returning the wrong shape): counted, not hidden
            logger.exception("MOSLIM reward request failed")
            return refuse(500, f"internal error ({type(e).__name__})", f"internal error: {type(e).__name__}: {e}")

    async def answer(request):
        too_big = (f"request body over the server's limit of {max_body_bytes} bytes (--server.max_body_mb); "
                   "send fewer or shorter samples per request")  # fmt: skip
        if int(request.headers.get("content-length") or 0) > max_body_bytes:
            return refuse(413, "body over --server.max_body_mb", too_big)
        raw, size = [], 0
        async for part in request.stream():  # counted as it arrives: a body without Content-Length is bounded too
            size += len(part)
            if size > max_body_bytes:
                return refuse(413, "body over --server.max_body_mb", too_big)
            raw.append(part)
        try:
            data = json.loads(b"".join(raw))
            too_deep = nesting_depth(data) > MAX_JSON_DEPTH
        except ValueError as e:
            return refuse(400, "body is not JSON", f"request body is not JSON: {e}")
        except RecursionError:  # Python's reader gives up near 1,000 levels
            too_deep = True
        if too_deep:
            error = f"request body nested deeper than {MAX_JSON_DEPTH} levels; OpenRLHF's requests have 6 at most"
            return refuse(400, "body nested too deeply", error)
        fields = {key: data.get(key) if isinstance(data, dict) else None for key in ("query", "prompts", "labels")}
        missing = [key for key, value in fields.items() if not isinstance(value, list)]
        if missing:
            error = f"expected lists 'query', 'prompts' and 'labels' (OpenRLHF's format); bad: {missing}"
            return refuse(400, "not OpenRLHF's request format", error)
        if len(fields["query"]) > max_samples:
            return refuse(413, "samples over --server.max_samples", f"{len(fields['query'])} samples in one "
                          f"request, over the server's limit of {max_samples} (--server.max_samples); split the "
                          "request")  # fmt: skip
        try:
            future = engine.submit(fields["query"], fields["prompts"], fields["labels"])
            return await asyncio.wrap_future(future)
        except ValueError as e:
            return refuse(400, "bad request", str(e))
        except (QueueFull, DeadlineExceeded, RewardFailure) as e:
            logger.error("%s", e)
            reason = {QueueFull: "queue full", DeadlineExceeded: "deadline exceeded"}.get(type(e), "reward failure")
            return refuse(503, reason, str(e))

    @app.get("/stats")
    async def stats():
        return {**engine.stats, "rejected": dict(rejected)}

    @app.get("/health")
    async def health():
        config = engine.config.to_dict()
        if api_key is None:  # an open server does not tell who can reach it where its files are
            del config["rm_path"]
        return {"status": "ok", "objectives": list(engine.spec.names), "reward_config": config}

    async def guarded(scope, receive, send):
        if scope["type"] != "http":  # lifespan events
            return await app(scope, receive, send)

        async def counted(message):
            if message["type"] == "http.response.start" and message["status"] != 200:
                status = message["status"]
                reason = dict(message.get("headers") or []).get(REASON_HEADER.encode(), b"").decode()
                rejected[f"{status} {reason or http.HTTPStatus(status).phrase}"] += 1
                engine.count(f"http_{status}")
                engine.count("failed_requests")
            await send(message)

        if api_key is not None and not authorized(scope, api_key):
            error = "this server needs its API key: Authorization: Bearer <key>, or ?api_key=<key> in the URL"
            return await refuse(401, "missing or wrong API key", error)(scope, receive, counted)
        try:
            await app(scope, receive, counted)
        except Exception:  # FastAPI has answered 500 (counted) and re-raises for the server's log: log it here
            logger.exception("MOSLIM reward server: unhandled error")

    return guarded


def nesting_depth(value) -> int:
    """Levels of lists and objects in a parsed JSON value, counted level by level (no recursion)."""
    depth, level = 0, [value]
    while level:
        depth += 1
        level = [c for v in level if isinstance(v, (list, dict)) for c in (v.values() if isinstance(v, dict) else v)]
    return depth


def authorized(scope, api_key: str) -> bool:
    headers = dict(scope.get("headers") or [])
    given = headers.get(b"authorization", b"").decode("latin-1").removeprefix("Bearer ").strip()
    if not given:
        given = (urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1")).get("api_key") or [""])[0]
    return hmac.compare_digest(given.encode("utf-8", "replace"), api_key.encode("utf-8"))


def exposure_warning(host: str, guarded: bool) -> str | None:
    """The start-up warning for a bind address other machines can reach (None for loopback)."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        addresses = {host}
    if all(_is_loopback(address) for address in addresses):
        return None
    who = ("every request must carry the API key" if guarded else
           "it has no API key, so anyone who can reach it can call /get_reward and read /stats and /health: pass "
           "--server.api_key_file, or bind 127.0.0.1 and reach it through an SSH tunnel")  # fmt: skip
    return f"serve-reward listens on {host}, reachable from other machines; {who}"


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moslim-openrlhf serve-reward", description=__doc__.split("\n")[0])
    p.add_argument(
        "--reward.model_name_or_path", required=True, help="MOSLIM RM checkpoint folder, or a spec file of rules only"
    )
    reward_config.add_flags(p.add_argument_group("MOSLIM reward (the same flags as train_ppo_ray's)"))
    add_options(p.add_argument_group("server"), ServerConfig, "server")
    add_threads_flag(p)
    return p


def main(argv=None) -> int:
    import uvicorn

    args = vars(build_parser().parse_args(argv))
    server = ServerConfig(**option_values(ServerConfig, args, "server"))
    api_key = server.key()
    logging.basicConfig(level=server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    flags = SimpleNamespace(**option_values(RewardConfig, args, "moslim"))
    config = RewardConfig.from_flags(flags, args["reward.model_name_or_path"])
    config = config.validate()  # every flag, before the port and before the model
    set_threads(args["threads"])
    # uvicorn would find a taken port only after the model has loaded, and report it as a log line.
    try:
        with socket.socket(socket.getaddrinfo(server.host, server.port)[0][0]) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((server.host, server.port))
    except OSError as e:
        raise UserError(f"--server.host {server.host} --server.port {server.port}: cannot listen ({e})") from None
    warning = exposure_warning(server.host, api_key is not None)
    if warning:
        logger.warning("%s", warning)
    engine = build_engine(
        config,
        max_batch_size=server.max_batch_size,
        max_wait_ms=server.max_wait_ms,
        max_queued_samples=server.max_queued_samples,
        chunk_size=server.chunk_size,
        deadline_s=server.deadline_s,
    )
    logger.info("MOSLIM reward server on http://%s:%d/get_reward, %s", server.host, server.port, engine.config)
    app = create_app(engine, int(server.max_body_mb * MIB), server.max_samples, api_key)
    # Per-request access logs would dominate the log (and the CPU) at thousands of requests per second.
    uvicorn.run(app, host=server.host, port=server.port, log_level=server.log_level, access_log=False)
    return 0
