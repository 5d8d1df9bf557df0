"""An OpenAI-compatible HTTP server over the batching engine (FastAPI + uvicorn).

Any OpenAI client can talk to it: point ``base_url`` at ``http://127.0.0.1:8000/v1``.

- ``POST /v1/chat/completions``: messages rendered by the model's own chat template
  (``chat.encode_chat``), replies whole or streamed as server-sent events;
- ``POST /v1/completions``: a raw text prompt continued;
- ``GET /v1/models``, ``GET /health``.

The HTTP side runs on uvicorn's asyncio event loop; the model runs in the engine's thread
(``engine.Engine``). Each request submits one engine request per choice (``n``); the
engine's thread hands each update back with ``loop.call_soon_threadsafe``, into an
``asyncio.Queue`` the handler reads. A streaming client that disconnects cancels its
engine requests, which frees their rows at the next step.

Every error has OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, and
a status that says whose fault it was: 400 for a bad request, 401 without the API key,
404 for an unknown model, 413 for a body over the size limit, 503 (with ``Retry-After``)
while the engine's queue is full. A bad request never stops the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .chat import ConversationTooLongError, encode_chat
from .engine import Engine, EngineBusy, Update
from .engine import Request as EngineRequest
from .sampling import SamplingConfig

log = logging.getLogger("tinyllm.serve")

MAX_BODY_BYTES = 1 << 20
"""Request bodies over this many bytes are refused (413) before they are parsed."""


class APIError(Exception):
    """An error answered in OpenAI's shape with ``status``."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind, self.headers = kind, headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind,
                          "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


# ----------------------------------------------------------------------------- requests


class StreamOptions(BaseModel):
    include_usage: bool = False


class Sampled(BaseModel):
    """The fields both endpoints share: the model, how to sample, when to stop, how many.

    ``top_k``, ``repetition_penalty`` and ``ignore_eos`` are extensions (vLLM's names);
    ``ignore_eos`` decodes on past the end-of-turn token, to exactly ``max_tokens`` (load
    tests use it, for replies of a known length). OpenAI's defaults are temperature 1 and
    top_p 1. Unknown fields are ignored, as OpenAI's own
    optional ones (``user``, ``logprobs``...) may be sent by any client.
    """

    model_config = ConfigDict(extra="ignore")

    model: str
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, ge=0, le=1)
    top_k: int = Field(0, ge=0)
    repetition_penalty: float = Field(1.0, gt=0)
    ignore_eos: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None

    @model_validator(mode="before")
    @classmethod
    def null_is_default(cls, data: Any) -> Any:
        """A field sent as ``null`` takes its default, as OpenAI reads it (many clients send
        every optional field, unset ones as ``null``)."""
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """A message; its content may also come as a list of text parts, which are joined."""

    role: str
    content: str | list[TextPart]

    def as_message(self) -> dict[str, str]:
        content = self.content
        if not isinstance(content, str):
            content = "".join(part.text for part in content)
        return {"role": self.role, "content": content}


class ChatRequest(Sampled):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(Sampled):
    prompt: str


@dataclass
class Settings:
    """What the server was started with: its model's name, key and limits."""

    model_name: str
    api_key: str | None = None
    max_tokens_cap: int | None = None
    max_body_bytes: int = MAX_BODY_BYTES


async def read_json(request: Request, schema: type[BaseModel], limit: int) -> Any:
    """The body parsed and checked against ``schema``; too large is 413, malformed 400."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the request body has {declared} bytes, more than the limit of "
                       f"{limit}", code="request_too_large")
    body = await request.body()
    if len(body) > limit:
        raise APIError(413, f"the request body has {len(body)} bytes, more than the limit "
                       f"of {limit}", code="request_too_large")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise APIError(400, f"the body is not valid JSON: {err}", code="invalid_json") from None
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise APIError(400, f"{param or 'body'}: {first['msg']}", param=param,
                       code="invalid_value") from None


def check_auth(request: Request, settings: Settings) -> None:
    if settings.api_key is None:
        return
    given = request.headers.get("authorization", "")
    if not secrets.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
        raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                       code="invalid_api_key")


def sampling_for(body: Sampled, prompt_len: int, context: int, settings: Settings,
                 choice: int) -> SamplingConfig:
    """The engine's sampling settings for one choice, with the length checks of the
    request: prompt plus reply must fit in the context, the reply under the server's cap.

    With a ``seed`` and ``n > 1``, choice i uses ``seed + i``: the same request again gives
    the same choices, but the choices differ from each other.
    """
    wanted = body.max_completion_tokens or body.max_tokens
    cap = settings.max_tokens_cap
    if wanted is not None and prompt_len + wanted > context:
        raise APIError(400, f"this model's context holds {context} tokens, but {prompt_len} "
                       f"prompt tokens plus max_tokens {wanted} make {prompt_len + wanted}",
                       param="max_tokens", code="context_length_exceeded")
    if wanted is not None and cap is not None and wanted > cap:
        raise APIError(400, f"max_tokens is {wanted}, more than this server's cap of {cap}",
                       param="max_tokens", code="invalid_value")
    if prompt_len >= context:
        raise APIError(400, f"the prompt has {prompt_len} tokens, which leaves no room for a "
                       f"reply in this model's context of {context} tokens",
                       param="messages", code="context_length_exceeded")
    room = context - prompt_len
    max_new = wanted or min(room, cap or room)
    seed = None if body.seed is None else body.seed + choice
    return SamplingConfig(temperature=body.temperature, top_k=body.top_k, top_p=body.top_p,
                          repetition_penalty=body.repetition_penalty,
                          max_new_tokens=max_new, seed=seed)


# ------------------------------------------------------------------------------- choices


class Choices:
    """The ``n`` engine requests of one HTTP request, and the queue of their updates."""

    def __init__(self, engine: Engine, prompt_ids: list[int], samplings: list[SamplingConfig],
                 stop: Sequence[str], ignore_eos: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self.updates: asyncio.Queue[tuple[int, Update]] = asyncio.Queue()

        def emitter(index: int):
            return lambda update: loop.call_soon_threadsafe(
                self.updates.put_nowait, (index, update))

        self.requests = [EngineRequest(prompt_ids, sampling, emitter(i), stop, ignore_eos)
                         for i, sampling in enumerate(samplings)]
        try:
            for request in self.requests:
                engine.submit(request)
        except EngineBusy as err:
            self.cancel()
            raise APIError(503, f"the server is busy ({err}); retry shortly", kind="server_error",
                           code="server_overloaded", headers={"Retry-After": "1"}) from None
        self.prompt_tokens = len(prompt_ids)
        self.completion_tokens = [0] * len(samplings)

    async def stream(self) -> AsyncIterator[tuple[int, Update]]:
        """Each choice's updates as they come, until every choice has finished.

        Updates that queued up while the last was being sent are merged, one per choice,
        so that a loop that falls behind the engine sends fewer, longer events. (In
        ``bench/bench_serve.py --quick`` at 16 clients it made no measurable difference:
        1,355 against 1,363 tokens/s; the events rarely queue up there.)
        """
        running = len(self.requests)
        while running:
            ready = [await self.updates.get()]
            while not self.updates.empty():
                ready.append(self.updates.get_nowait())
            merged: dict[int, Update] = {}
            for index, update in ready:
                if index in merged:  # a choice's earlier update, never a finished one
                    text = merged[index].text + update.text
                    update = Update(text, update.finish_reason, update.completion_tokens)
                merged[index] = update
            for index, update in merged.items():
                if update.finish_reason == "error":
                    raise APIError(500, "the engine failed on this request",
                                   kind="server_error", code="internal_error")
                self.completion_tokens[index] = update.completion_tokens
                running -= update.finish_reason is not None
                yield index, update

    def cancel(self) -> None:
        for request in self.requests:
            request.cancel()

    def usage(self) -> dict[str, int]:
        completion = sum(self.completion_tokens)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}


def sse(obj: Any) -> str:
    """One server-sent event: ``data: <json>`` and a blank line."""
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


# ----------------------------------------------------------------------------------- app


def create_app(engine: Engine, settings: Settings, start_engine: bool = True) -> FastAPI:
    """The FastAPI app over ``engine``; with ``start_engine`` the app starts the engine's
    thread and stops it (otherwise the caller runs ``engine.run``, as ``serve`` does)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if start_engine:
            engine.start()
        try:
            yield
        finally:
            if start_engine:
                engine.stop()

    app = FastAPI(title="TinyLLM", lifespan=lifespan)
    context = engine.context
    tokenizer = engine.tokenizer

    app.add_middleware(LogRequests)

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError) -> JSONResponse:
        return err.response()

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return APIError(500, f"internal error: {type(err).__name__}", kind="server_error",
                        code="internal_error").response()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "running": len(engine.running),
                "waiting": engine.waiting.qsize(), "finished": dict(engine.finished)}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        check_auth(request, settings)
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model",
                                            "created": 0, "owned_by": "tinyllm"}]}

    def start(body: Sampled, prompt_ids: list[int]) -> Choices:
        if body.model != settings.model_name:
            raise APIError(404, f"the model {body.model!r} does not exist; this server has "
                           f"{settings.model_name!r}", param="model", code="model_not_found")
        samplings = [sampling_for(body, len(prompt_ids), context, settings, i)
                     for i in range(body.n)]
        return Choices(engine, prompt_ids, samplings, body.stops, body.ignore_eos)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_auth(request, settings)
        body = await read_json(request, ChatRequest, settings.max_body_bytes)
        messages = [m.as_message() for m in body.messages]
        try:
            prompt_ids = encode_chat(tokenizer, messages, add_generation_prompt=True).input_ids
        except ConversationTooLongError as err:
            raise APIError(400, str(err), param="messages") from None
        except ValueError as err:  # check_messages / split_turns name the message at fault
            raise APIError(400, str(err), param="messages", code="invalid_value") from None
        choices = start(body, prompt_ids)
        reply_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": reply_id, "created": created, "model": settings.model_name}
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            return StreamingResponse(chat_events(choices, head, usage),
                                     media_type="text/event-stream")
        texts, reasons = await gather(choices, body.n, request)
        return {**head, "object": "chat.completion", "choices": [
            {"index": i, "message": {"role": "assistant", "content": texts[i]},
             "logprobs": None, "finish_reason": reasons[i]} for i in range(body.n)],
            "usage": choices.usage()}

    @app.post("/v1/completions")
    async def completions(request: Request):
        check_auth(request, settings)
        body = await read_json(request, CompletionRequest, settings.max_body_bytes)
        prompt_ids = tokenizer.encode(body.prompt)
        if not prompt_ids:
            raise APIError(400, "the prompt is empty", param="prompt", code="invalid_value")
        choices = start(body, prompt_ids)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": settings.model_name}
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            return StreamingResponse(completion_events(choices, head, usage),
                                     media_type="text/event-stream")
        texts, reasons = await gather(choices, body.n, request)
        return {**head, "choices": [
            {"index": i, "text": texts[i], "logprobs": None, "finish_reason": reasons[i]}
            for i in range(body.n)], "usage": choices.usage()}

    return app


class LogRequests:
    """One log line per request, once its response has been sent (a stream's at its end).

    Plain ASGI rather than ``@app.middleware("http")``: that wrapper hands the app its own
    ``receive``, through which ``Request.is_disconnected`` never sees the client leave.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_and_note(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            took = (time.perf_counter() - start) * 1000
            log.info("%s %s %d %.0fms", scope["method"], scope["path"], status, took)


async def gather(choices: Choices, n: int, request: Request) -> tuple[list[str], list[str]]:
    """Every choice's whole text and finish reason (a non-streamed reply); a client that
    disconnects meanwhile cancels its choices, so they do not run on for nobody."""

    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(0.1)
        choices.cancel()

    watcher = asyncio.create_task(watch())
    texts, reasons = [""] * n, [""] * n
    try:
        async for index, update in choices.stream():
            texts[index] += update.text
            reasons[index] = update.finish_reason or reasons[index]
    finally:
        watcher.cancel()
        choices.cancel()  # a no-op once finished
    return texts, reasons


async def chat_events(choices: Choices, head: dict[str, Any], usage: bool) -> AsyncIterator[str]:
    """``chat.completion.chunk`` events: the role first, then text, then each finish."""
    chunk = {**head, "object": "chat.completion.chunk"}
    try:
        for index in range(len(choices.requests)):
            yield sse({**chunk, "choices": [{"index": index, "logprobs": None,
                       "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
        async for index, update in choices.stream():
            delta = {"content": update.text} if update.text else {}
            yield sse({**chunk, "choices": [{"index": index, "delta": delta, "logprobs": None,
                                             "finish_reason": update.finish_reason}]})
        if usage:
            yield sse({**chunk, "choices": [], "usage": choices.usage()})
        yield "data: [DONE]\n\n"
    finally:
        choices.cancel()  # the client went away mid-stream: free the rows


async def completion_events(choices: Choices, head: dict[str, Any],
                            usage: bool) -> AsyncIterator[str]:
    """``text_completion`` events, one per piece of text or finish, as OpenAI streams them."""
    try:
        async for index, update in choices.stream():
            yield sse({**head, "choices": [{"index": index, "text": update.text,
                       "logprobs": None, "finish_reason": update.finish_reason}]})
        if usage:
            yield sse({**head, "choices": [], "usage": choices.usage()})
        yield "data: [DONE]\n\n"
    finally:
        choices.cancel()


def serve(engine: Engine, settings: Settings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the server until interrupted (``tinyllm serve``): HTTP in a thread, the engine's
    loop in this one.

    Why this way round: PyTorch's CPU operators run on OpenMP, which keeps a team of worker
    threads for every thread that has run a parallel operator. The thread that loaded the
    model has one; an engine thread beside it would make a second, the teams would
    outnumber the cores, and every operator would wait for its sleeping workers to wake.
    Measured on 2 cores, a decode step of the shipped base over 16 rows takes 5.4 ms in the
    thread that loaded the model and 10.7 ms in a second thread while the first is alive.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        http = start_in_background(engine, settings, host, port, start_engine=False)
    except OSError as err:
        raise SystemExit(f"cannot listen on {host}:{port}: {err.strerror}") from None
    try:
        engine.run()  # until Ctrl-C
    except KeyboardInterrupt:
        pass
    finally:
        http.stop()


@dataclass
class BackgroundServer:
    """A server running in a thread of this process (``start_in_background``): a notebook
    or a test talks to it at ``url`` with any OpenAI client, then calls ``stop``."""

    url: str
    engine: Engine
    server: uvicorn.Server
    thread: threading.Thread
    sock: socket.socket

    def stop(self) -> None:
        """Let uvicorn finish the requests in flight, then free the port."""
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
        if self.thread.is_alive():
            raise RuntimeError("the server did not stop within 30 s")


def start_in_background(engine: Engine, settings: Settings, host: str = "127.0.0.1",
                        port: int = 0, timeout: float = 30.0,
                        start_engine: bool = True) -> BackgroundServer:
    """Start the app on ``host:port`` (0: a free port the system picks) in a daemon
    thread, and return once it accepts connections. The socket is bound here, before
    uvicorn starts, so the port is known and no other program can take it meanwhile.

    The engine runs in a thread of its own too (unless not ``start_engine``), so this is
    slower than ``tinyllm serve`` when this thread has run the model (``serve`` says why);
    ``start_process`` runs the command instead.
    """
    sock = socket.socket()
    sock.bind((host, port))
    config = uvicorn.Config(create_app(engine, settings, start_engine), log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name="tinyllm-http")
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the server did not start within {timeout:g} s")
        time.sleep(0.02)
    bound_host, bound_port = sock.getsockname()[:2]
    return BackgroundServer(f"http://{bound_host}:{bound_port}/v1", engine, server, thread, sock)


@dataclass
class ServerProcess:
    """A server running as its own process (``start_process``); ``stop`` ends it as Ctrl-C
    would. Also a context manager that stops it on leaving."""

    url: str
    process: subprocess.Popen
    log: IO[str]  # the server's standard error: one line per request

    def log_lines(self) -> list[str]:
        """What the server has logged so far."""
        self.log.seek(0)
        return self.log.read().splitlines()

    def stop(self, timeout: float = 30.0) -> int:
        """Interrupt the server, wait for it to finish the requests in flight; its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_process(arguments: Sequence[str] = (), command: Sequence[str] | None = None,
                  host: str = "127.0.0.1", timeout: float = 120.0) -> ServerProcess:
    """Run ``tinyllm serve ARGUMENTS`` (or ``command`` with ``ARGUMENTS``) as a process on a
    free port of ``host``, and return once ``/health`` answers.

    ``--host`` and ``--port`` are added here. The port is one the system had free a moment
    before; if another program takes it first, the server exits and this says so.
    """
    with socket.socket() as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    command = list(command or [sys.executable, "-m", "tinyllm_lib", "serve"])
    # The log goes to a file, not a pipe: a pipe nobody reads fills up and blocks the server.
    log = tempfile.TemporaryFile(mode="w+", encoding="utf-8")
    process = subprocess.Popen([*command, *arguments, "--host", host, "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=log, text=True)
    server = ServerProcess(f"http://{host}:{port}/v1", process, log)
    root = f"http://{host}:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            tail = "\n".join(server.log_lines()[-20:])
            raise RuntimeError(f"the server exited with code {process.returncode}:\n{tail}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{root}/health", timeout=1) as answer:
                if answer.status == 200:
                    return server
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the server did not answer {root}/health within {timeout:g} s")
        time.sleep(0.2)
