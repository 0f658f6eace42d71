"""The optional vLLM engine (``hf-sae-steer serve --engine vllm``, extra ``[vllm]``).

vLLM runs in this process behind the project's own HTTP front end: the front end validates and
resolves every request through the concept library exactly as for the transformers engine
(an invalid request never reaches vLLM, where an exception inside a hook would stop the engine
for every later request), and this engine hands vLLM the token ids with the request's steering
as plain JSON in ``SamplingParams.extra_args``. The hooks that apply it live in vLLM's workers
(:mod:`.vllm_worker`, installed on every tensor-parallel rank through ``collective_rpc``).

What the engine forces, and why:

- ``enforce_eager=True``: under vLLM's torch.compile / CUDA graphs the module hooks are not
  called, so steering would be silently dropped; asking for compilation is refused.
- Prefix caching stays on, salted per steering (``cache_salt`` = a hash of the steering's
  canonical key): a steered request never reuses KV blocks computed without its steering (or
  with another), while requests with the same steering still share prefixes.

vLLM's ``AsyncLLM`` lives on an event loop of its own thread, so :meth:`VLLMEngine.submit` can
be called from any thread or loop; each stream forwards its events to the loop that reads it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import threading
from collections.abc import AsyncIterator, Mapping
from typing import Any

from hf_sae_steer.models import eos_token_ids
from hf_sae_steer.serving.concepts import ConceptLibrary
from hf_sae_steer.serving.engine import (
    EngineBusy,
    Finished,
    FinishReason,
    GenerationRequest,
    PromptLogprobs,
    StreamEvent,
    TokenLogprob,
    Tokens,
)
from hf_sae_steer.serving.server import ServeSetup
from hf_sae_steer.serving.vllm_worker import (
    build_library,
    check_sites,
    setup_json,
    steering_args,
)

WORKER_EXTENSION = "hf_sae_steer.serving.vllm_worker.SteeringWorkerExtension"
_FINISH: dict[str | None, FinishReason] = {"stop": "stop", "length": "length", "abort": "cancelled"}


def vllm_available() -> str | None:
    """None when vLLM can be imported, else why not (one line)."""
    try:
        import vllm  # noqa: F401
    except Exception as error:  # ImportError, or a broken install
        return (
            f"vllm is not importable ({type(error).__name__}: {error}); pip install "
            "'hf_sae_steer[vllm]' (on a CPU-only machine: scripts/setup_vllm_env.sh)"
        )
    return None


def vllm_engine(setup: ServeSetup) -> tuple[VLLMEngine, ConceptLibrary]:
    """``hf-sae-steer serve --engine vllm``: :data:`~hf_sae_steer.serving.server.ENGINES`'
    factory. ``--max-batch`` is vLLM's ``max_num_seqs``, ``--max-batch`` + ``--max-waiting``
    the requests admitted at once, ``--max-context`` its ``max_model_len``, ``--dtype`` its
    dtype; ``setup.options`` go to vLLM as engine arguments (``tensor_parallel_size``, ...)."""
    if setup.device not in (None, "cpu", "cuda"):
        raise ValueError(
            f"The vLLM engine places the model itself (CUDA_VISIBLE_DEVICES picks its GPUs); "
            f"drop --device {setup.device}."
        )
    engine = VLLMEngine(
        {"model": setup.model, "saes": setup.saes, "concepts": setup.concepts},
        name=setup.served_name, dtype=setup.dtype or "auto", max_model_len=setup.max_context,
        max_pending=setup.max_batch + setup.max_waiting, max_num_seqs=setup.max_batch,
        **setup.options,
    )  # fmt: skip
    return engine, engine.library


class VLLMEngine:
    """Serve with vLLM. ``setup`` is ``{"model": path, "saes": [spec, ...], "concepts":
    {name: path-or-hub-id}}``: the model vLLM loads and what the front end and every worker
    build the concept library from (:attr:`library`, for the front end).

    ``max_pending`` bounds the requests admitted at once (running or waiting in vLLM): beyond
    it :meth:`submit` raises :class:`EngineBusy`. ``engine_args`` go to vLLM's
    ``AsyncEngineArgs`` (``tensor_parallel_size``, ``max_num_seqs``, ``gpu_memory_utilization``,
    ...); ``enforce_eager`` is always True.
    """

    name = "vllm"

    def __init__(
        self,
        setup: Mapping[str, Any],
        *,
        dtype: str = "auto",
        max_model_len: int | None = None,
        max_pending: int = 256,
        library: ConceptLibrary | None = None,
        name: str | None = None,
        **engine_args: Any,
    ) -> None:
        if engine_args.pop("enforce_eager", True) is not True:
            raise ValueError(
                "The vLLM engine runs eagerly: under torch.compile / CUDA graphs vLLM does not "
                "call the steering hooks. Drop enforce_eager=False."
            )
        if engine_args.get("compilation_config") not in (None, 0):
            raise ValueError("The vLLM engine runs eagerly; drop compilation_config.")
        missing = vllm_available()
        if missing:
            raise ImportError(missing)
        self.setup = setup_json(setup)
        self.name = name or self.setup["model"]
        self.library = library if library is not None else build_library(self.setup)
        check_sites(self.library.sites)  # before vLLM starts: fail fast, in one line
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.tokenizer = AutoTokenizer.from_pretrained(self.setup["model"])
        args = AsyncEngineArgs(
            model=self.setup["model"], dtype=dtype, max_model_len=max_model_len,
            enforce_eager=True, worker_extension_cls=WORKER_EXTENSION, **engine_args,
        )  # fmt: skip
        self.max_pending = max_pending
        self._active = 0
        self._served = 0
        self._lock = threading.Lock()
        self._asking: dict[str, asyncio.Future[dict[str, Any] | None]] = {}
        self._asker: asyncio.Future[None] | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="hf-sae-steer-vllm", daemon=True
        )
        self._thread.start()
        before = _descendants()
        try:
            self._llm = self._call(_make_llm(AsyncLLM, args))
            self._processes = [p for p in _descendants() if p.pid not in {q.pid for q in before}]
            hooked = self._call(
                self._llm.collective_rpc("hf_sae_steer_install", args=(self.setup,))
            )
            self.steered_ranks = len(hooked)  # one entry per worker: every TP/PP rank
        except BaseException:
            self.close()
            raise
        self.context_length = int(self._llm.model_config.max_model_len)
        self.eos_token_ids = frozenset(_eos_token_ids(self.setup["model"], self.tokenizer))

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    # -- the Engine protocol ---------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> _VLLMStream:
        with self._lock:
            if self._active >= self.max_pending:
                raise EngineBusy(
                    f"The server is busy ({self._active} requests in flight); retry shortly."
                )
            self._active += 1
        stream = _VLLMStream(len(request.prompt_ids))
        try:
            stream.future = asyncio.run_coroutine_threadsafe(self._run(request, stream), self._loop)
        except BaseException:
            self._release()
            raise
        return stream

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "engine": "vllm", "active": self._active, "served": self._served,
                "max_pending": self.max_pending, "steered_ranks": self.steered_ranks,
            }  # fmt: skip

    def close(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is not None:
            self._llm = None
            if self._loop.is_running():  # on its loop: its output handler is cancelled first
                self._call(_shutdown(llm))
            else:
                llm.shutdown()
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        _stop_processes(getattr(self, "_processes", []))

    # -- one request, on the engine's loop ---------------------------------------------------
    async def _run(self, request: GenerationRequest, stream: _VLLMStream) -> None:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        steering = request.steering
        sampling = request.sampling
        extra = None
        prompt = TokensPrompt(prompt_token_ids=list(request.prompt_ids))
        if not steering.is_base:
            extra = steering_args(request.request_id, [i.to_dict() for i in steering.items])
            prompt["cache_salt"] = hashlib.sha256(steering.key.encode()).hexdigest()[:32]
        ends = set(sampling.stop_token_ids) | (set() if request.ignore_eos else self.eos_token_ids)
        scoring_only = request.max_tokens == 0  # echo: the prompt scored, no token kept
        params = SamplingParams(
            max_tokens=max(1, request.max_tokens),  # vLLM generates at least one
            temperature=sampling.temperature, top_p=sampling.top_p, seed=sampling.seed,
            top_k=sampling.top_k or -1, min_p=sampling.min_p,
            repetition_penalty=sampling.repetition_penalty,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty, min_tokens=sampling.min_tokens,
            logit_bias=dict(sampling.logit_bias) or None, stop_token_ids=sorted(ends),
            ignore_eos=request.ignore_eos, detokenize=False,
            logprobs=request.logprobs, prompt_logprobs=request.prompt_logprobs,
            output_kind=RequestOutputKind.DELTA, extra_args=extra,
        )  # fmt: skip
        produced, reason, error, status = 0, "cancelled", None, 500
        scored_prompt = request.prompt_logprobs is None
        try:
            async for output in self._llm.generate(prompt, params, request.request_id):
                done = output.outputs[0]
                if not scored_prompt and output.prompt_logprobs is not None:
                    scored_prompt = True  # the first output carries them
                    stream.push(_prompt_scores(request, output.prompt_logprobs))
                if done.token_ids and not scoring_only:
                    produced += len(done.token_ids)
                    stream.push(_tokens(request, done))
                if output.finished:
                    reason = "length" if scoring_only else _FINISH.get(done.finish_reason, "stop")
            if extra is not None:
                failed = await self._failures(request.request_id)
                if failed:
                    reason, error, status = "error", failed["message"], failed["status"]
        except asyncio.CancelledError:
            reason = "cancelled"
        except Exception as exc:  # vLLM refused or failed the request: this request only
            reason, error = "error", f"{type(exc).__name__}: {exc}"
        finally:
            end = Finished(reason, len(request.prompt_ids), produced, error, status)  # type: ignore[arg-type]
            stream.push(end)
            self._release(served=True)

    async def _failures(self, request_id: str) -> dict[str, Any] | None:
        """This request's failure in the workers, if any. Requests that finish together share
        one ``collective_rpc`` (it waits for the engine's next step), not one each."""
        future = asyncio.get_running_loop().create_future()
        self._asking[request_id] = future
        if self._asker is None or self._asker.done():
            self._asker = asyncio.ensure_future(self._ask_workers())
        return await future

    async def _ask_workers(self) -> None:
        while self._asking:
            asking, self._asking = self._asking, {}
            try:
                found = await self._llm.collective_rpc(
                    "hf_sae_steer_failures", args=(list(asking),)
                )
            except Exception as error:  # the engine itself failed: every request in it did
                found = [{i: {"status": 500, "message": str(error)} for i in asking}]
            for request_id, future in asking.items():
                hit = next((w[request_id] for w in found if request_id in w), None)
                if not future.done():
                    future.set_result(hit)

    def _release(self, served: bool = False) -> None:
        with self._lock:
            self._active -= 1
            self._served += served


def _eos_token_ids(model_path: str, tokenizer: Any) -> set[int]:
    """The ids that end a generation, found as the transformers engine finds them."""
    from types import SimpleNamespace

    from transformers import GenerationConfig

    try:
        config = GenerationConfig.from_pretrained(model_path)
    except OSError:  # no generation_config.json: the model config's ids
        from transformers import AutoConfig

        config = GenerationConfig.from_model_config(AutoConfig.from_pretrained(model_path))
    return eos_token_ids(SimpleNamespace(generation_config=config), tokenizer)  # type: ignore[arg-type]


def _descendants() -> list[Any]:
    """This process's children and theirs (psutil comes with vLLM)."""
    try:
        import psutil
    except ImportError:
        return []
    return psutil.Process().children(recursive=True)


def _stop_processes(processes: list[Any], wait: float = 10.0) -> None:
    """End the processes vLLM started (EngineCore, its workers) that its own shutdown left
    running: SIGTERM, then SIGKILL after ``wait`` seconds. Only those: they were listed as
    new children of this process when the engine started."""
    if not processes:
        return
    import psutil

    alive = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
            alive.append(process)
    _, alive = psutil.wait_procs(alive, timeout=wait)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=wait)


def _entry(token: int, logprobs: Mapping[int, Any], k: int) -> TokenLogprob:
    """vLLM's ``{token: Logprob(logprob, rank)}`` of one position: the token and the ``k``
    most likely (rank 1 .. k; the token itself is listed whatever its rank)."""
    top = sorted((v.rank, t, v.logprob) for t, v in logprobs.items() if v.rank is not None)
    return TokenLogprob(token, float(logprobs[token].logprob),
                        tuple((t, float(lp)) for rank, t, lp in top if rank <= k))  # fmt: skip


def _prompt_scores(request: GenerationRequest, scores: list[Any]) -> PromptLogprobs:
    """vLLM's ``prompt_logprobs`` (``None`` first) as the engine protocol's event."""
    k = request.prompt_logprobs or 0
    pairs = zip(request.prompt_ids, scores, strict=True)
    return PromptLogprobs(tuple(None if d is None else _entry(t, d, k) for t, d in pairs))


def _tokens(request: GenerationRequest, done: Any) -> Tokens:
    """New tokens of a vLLM ``CompletionOutput`` (a delta), with their logprobs if asked."""
    ids = tuple(done.token_ids)
    if request.logprobs is None or done.logprobs is None:
        return Tokens(ids)
    pairs = zip(ids, done.logprobs, strict=True)
    return Tokens(ids, tuple(_entry(t, d, request.logprobs) for t, d in pairs))


async def _make_llm(cls: Any, args: Any) -> Any:
    return cls.from_engine_args(args)  # on the engine's loop: its output handler lives there


async def _shutdown(llm: Any) -> None:
    llm.shutdown()


class _VLLMStream:
    """One request's events, produced on the engine's loop and read on the caller's."""

    def __init__(self, prompt_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.future: concurrent.futures.Future[None] | None = None
        self._lock = threading.Lock()
        self._buffer: list[StreamEvent] = []
        self._sink: tuple[asyncio.AbstractEventLoop, asyncio.Queue[StreamEvent]] | None = None
        self._finished = False

    def push(self, event: StreamEvent) -> None:
        with self._lock:
            if self._sink is None:
                self._buffer.append(event)
                return
            loop, queue = self._sink
        loop.call_soon_threadsafe(queue.put_nowait, event)

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[StreamEvent]:
        queue: asyncio.Queue[StreamEvent] = asyncio.Queue()
        with self._lock:
            if self._sink is not None:
                raise RuntimeError("A token stream can be read once.")
            self._sink = (asyncio.get_running_loop(), queue)
            pending, self._buffer = self._buffer, []
        for event in pending:
            queue.put_nowait(event)
        try:
            while True:
                event = await queue.get()
                yield event
                if isinstance(event, Finished):
                    self._finished = True
                    return
        finally:
            if not self._finished:
                await self.cancel()

    async def cancel(self) -> None:
        """Stop generating (vLLM aborts the request when its generator is cancelled)."""
        if self.future is not None and not self.future.done():
            self.future.cancel()
