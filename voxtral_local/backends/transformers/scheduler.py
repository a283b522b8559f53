"""Continuous batching: one worker thread decodes rows from every request together.

A request is a `Job` of rows (its chunks, or one chat). Rows join the running batch at any step (their
prompts are prefilled, audio encoder included, and their KV caches merged in) and leave it the step they
finish, so concurrent requests share decoding steps and nothing waits for the slowest row of a batch.

Fairness: free room goes first to the job with the fewest rows in flight (ties: the oldest), so a short
request arriving during a long one gets a row in at the next step. A job's first admission takes only its
first row: that row's first words stream after one encoder window, not after the whole file's prefill.

A job may be submitted open (`Scheduler.submit(job)` with `open=True`): its first rows decode while the caller
is still producing the rest (decoding the rest of an upload), which it adds with `extend` and ends with `seal`
(or `abort`, when producing them failed).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ...errors import GenerationCancelledError
from ..base import Alternatives, Sampling, TokenCallback
from .decoding import DecodeBatch, RowSampler, choose, suppression
from .generation import RowResult, finish_row
from .inputs import merge_inputs
from .memory import MemoryPlan

logger = logging.getLogger(__name__)

# Most 30 s windows prefilled between two decoding steps: a long file joins in groups, so rows already
# decoding (and the file's own first chunk, streaming) keep moving while the rest is encoded.
MAX_PREFILL_WINDOWS = 8

# Called with a row's index in its job, the token it just chose (end of sequence included), its logprob and
# the step's most likely tokens (when the job's sampling asks for them).


@dataclass(frozen=True)
class Footprint:
    """A row's prompt size: tokens (an upper bound is fine) and 30 s encoder windows."""

    tokens: int
    windows: int


@dataclass(eq=False)
class Job:
    """One request's rows: `build(indices)` makes their model inputs when they are admitted.

    An open job may still get rows (`Scheduler.extend`); it is done once it is sealed and every row has
    finished."""

    build: Callable[[Sequence[int]], dict[str, torch.Tensor]]
    footprints: list[Footprint]
    caps: list[int]
    sampling: Sampling
    on_token: TokenCallback | None = None
    cancel: threading.Event | None = None
    open: bool = False
    results: list[RowResult | None] = field(init=False)
    next_row: int = field(default=0, init=False)
    error: BaseException | None = field(default=None, init=False)
    done: threading.Event = field(default_factory=threading.Event, init=False)

    def __post_init__(self) -> None:
        self.footprints, self.caps = list(self.footprints), list(self.caps)
        self.results = [None] * len(self.caps)
        self.settle()

    def settle(self) -> None:
        """Mark the job done once it is sealed and every row has its result."""
        if not self.open and all(r is not None for r in self.results):
            self.done.set()

    @property
    def pending(self) -> int:
        return len(self.caps) - self.next_row

    def wait(self) -> list[RowResult]:
        """Block until every row has finished; raise the job's error, if any."""
        self.done.wait()
        if self.error is not None:
            raise self.error
        return [r for r in self.results if r is not None]

    def fail(self, error: BaseException) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


@dataclass(eq=False)
class _Row:
    job: Job
    index: int
    sampler: RowSampler
    prompt_tokens: int
    audio_tokens: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[Alternatives] = field(default_factory=list)
    no_speech_prob: float = 0.0

    @property
    def cap(self) -> int:
        return self.job.caps[self.index]


class Scheduler:
    """Owns the model's decoding: jobs are submitted from any thread and decoded on one worker thread."""

    def __init__(
        self,
        model: Any,
        plan: MemoryPlan,
        *,
        eos_token_id: int,
        pad_token_id: int,
        decode: Callable[[list[int]], str],
        decodable: int | None = None,
    ) -> None:
        """`decodable`: the tokenizer's vocabulary size; ids from it up are never chosen (`suppression`)."""
        self.model = model
        self.plan = plan
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.decode = decode
        self.audio_token_id = int(model.config.audio_token_id)
        self.suppress = suppression(model, model.device, decodable)
        self._jobs: list[Job] = []  # in arrival order; a job leaves once all its rows are admitted
        self._rows: list[_Row] = []  # the running batch's rows, in batch order
        self._batch: DecodeBatch | None = None
        self._cond = threading.Condition()
        self._active = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="voxtral-decoder", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """True while any row is waiting or decoding."""
        return self._active.is_set()

    def run(self, job: Job) -> list[RowResult]:
        """Submit a job and wait for its rows (GenerationCancelledError if its cancel event is set)."""
        self.submit(job)
        return job.wait()

    def submit(self, job: Job) -> None:
        """Queue a job's rows for decoding and return at once; `job.wait()` gives its results."""
        if job.done.is_set():
            return
        with self._cond:
            self._jobs.append(job)
            self._active.set()
            self._cond.notify()

    def extend(self, job: Job, footprints: Sequence[Footprint], caps: Sequence[int]) -> None:
        """Add rows to an open job (its `build` must already know them)."""
        if len(footprints) != len(caps):
            raise ValueError("one footprint and one cap per row")
        with self._cond:
            if not job.open:
                raise ValueError("rows can only be added to an open job")
            job.footprints.extend(footprints)
            job.caps.extend(caps)
            job.results.extend([None] * len(caps))
            self._cond.notify()

    def seal(self, job: Job) -> None:
        """No more rows will be added to this job: it is done when the rows it has are."""
        with self._cond:
            job.open = False
            job.settle()
            self._cond.notify()

    def abort(self, job: Job, error: BaseException) -> None:
        """End a job with this error (its rows leave the batch at the next step)."""
        with self._cond:
            job.open = False
            job.fail(error)
            self._cond.notify()

    def close(self) -> None:
        """Stop the decoder thread after its current step; work still queued is abandoned."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the decoder thread to end (after `close`); whether it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._rows and not self._closed and not any(j.pending for j in self._waiting()):
                        if not self._jobs:
                            self._active.clear()
                        self._cond.wait()
                    if self._closed:
                        return
                try:
                    self._drop_ended()
                    self._admit()
                    if self._rows:
                        self._step()
                except Exception as exc:  # a bug here must not leave requests waiting forever
                    logger.exception("decoder loop failed")
                    self._fail(self._all_jobs(), exc)

    def _waiting(self) -> list[Job]:
        """The queued jobs, less those that ended from outside (aborted); call with the lock held."""
        self._jobs = [j for j in self._jobs if not j.done.is_set()]
        return self._jobs

    def _drop_ended(self) -> None:
        """Fail the jobs whose client went away; drop the rows of jobs that ended (cancelled or aborted)."""
        jobs = self._all_jobs()
        for job in jobs:
            if job.cancel is not None and job.cancel.is_set():
                job.fail(GenerationCancelledError("The client went away; generation was stopped."))
        ended = {j for j in jobs if j.done.is_set()}
        if ended:
            self._remove_jobs(ended)

    def _all_jobs(self) -> list[Job]:
        with self._cond:
            waiting = list(self._jobs)
        return list(dict.fromkeys(waiting + self._running_jobs()))

    def _running_jobs(self) -> list[Job]:
        """The jobs with rows in the batch, each once, in batch order."""
        return list(dict.fromkeys(r.job for r in self._rows))

    def _remove_jobs(self, jobs: set[Job]) -> None:
        with self._cond:
            self._jobs = [j for j in self._jobs if j not in jobs]
        keep = [i for i, row in enumerate(self._rows) if row.job not in jobs]
        if len(keep) < len(self._rows):
            self._keep(keep)

    def _keep(self, keep: list[int]) -> None:
        self._rows = [self._rows[i] for i in keep]
        if not self._rows:
            self._batch = None
        elif self._batch is not None:
            self._batch.keep(keep, self._room())

    def _room(self) -> int:
        """Cache columns the running rows can still need: the most tokens any of them may still generate."""
        return max(r.cap - len(r.tokens) for r in self._rows)

    def _admit(self) -> None:
        """Prefill the rows that fit now, chosen fairly, and merge them into the running batch."""
        picked = self._pick()
        if not picked:
            return
        by_job: dict[Job, list[int]] = {}
        for job, index in picked:
            by_job.setdefault(job, []).append(index)
        parts: list[dict[str, torch.Tensor]] = []
        jobs: list[Job] = []
        for job, indices in by_job.items():
            try:
                parts.append(job.build(indices))
                jobs.append(job)
            except Exception as exc:  # a job's own inputs are bad: only that job fails
                self._fail([job], exc)
        if not parts:
            return
        try:
            inputs = merge_inputs(parts, self.pad_token_id)
            batch, logits = DecodeBatch.prefill(self.model, inputs)
        except Exception as exc:
            logger.exception("prefill failed")
            self._fail(jobs, exc)
            return
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        audio_tokens = (inputs["input_ids"] == self.audio_token_id).sum(dim=1).tolist()
        rows = [
            _Row(job, index, RowSampler(job.sampling, index, logits.device), prompt_tokens[i], audio_tokens[i])
            for i, (job, index) in enumerate((job, index) for job in jobs for index in by_job[job])
        ]
        if self._batch is None:
            self._batch, self._rows = batch, rows
            self._batch.reserve(self._room())
        else:
            self._rows.extend(rows)
            self._batch.merge(batch, self._room())
        self._advance(logits, first=len(self._rows) - len(rows))

    def _pick(self) -> list[tuple[Job, int]]:
        """Rows to admit now: fewest in flight first, a new job's first row alone, within the memory plan."""
        picked: list[tuple[Job, int]] = []
        rows, length = len(self._rows), self._batch.length if self._batch is not None else 0
        remaining = max((r.cap - len(r.tokens) for r in self._rows), default=0)
        tokens = windows = 0
        in_flight = Counter(r.job for r in self._rows)
        with self._cond:
            taken: Counter[Job] = Counter()
            while True:
                candidates = [j for j in self._jobs if j.pending > taken[j] and not (j.next_row == 0 and j in taken)]
                if not candidates:
                    break
                job = min(candidates, key=lambda j: in_flight[j] + taken[j])
                index = job.next_row + taken[job]
                foot = job.footprints[index]
                new_length = max(length, foot.tokens)
                new_remaining = max(remaining, job.caps[index])
                fits = self.plan.fits(
                    rows + 1, new_length + new_remaining, tokens + foot.tokens, windows + foot.windows
                )
                if not fits and (picked or self._rows):
                    break  # the oldest least-served job waits for room; nobody overtakes it
                if picked and windows + foot.windows > MAX_PREFILL_WINDOWS:
                    break
                picked.append((job, index))
                taken[job] += 1
                rows, length, remaining = rows + 1, new_length, new_remaining
                tokens, windows = tokens + foot.tokens, windows + foot.windows
            for job, count in taken.items():
                job.next_row += count
            self._jobs = [j for j in self._jobs if j.pending or j.open]
        return picked

    def _step(self) -> None:
        assert self._batch is not None
        try:
            logits = self._batch.step(self.model)
        except Exception as exc:
            logger.exception("decoding step failed")
            self._fail(self._running_jobs(), exc)
            return
        self._advance(logits, first=0)

    def _advance(self, logits: torch.Tensor, first: int) -> None:
        """Choose the next token of rows `first`..; record it, stream it, and let finished rows leave."""
        assert self._batch is not None
        rows = self._rows[first:]
        no_eos = [len(r.tokens) < min(r.job.sampling.min_new_tokens, r.cap) for r in rows]
        choice = choose(logits, [r.sampler for r in rows], no_eos, self.eos_token_id, self.suppress)
        if first:
            self._batch.last = torch.cat([self._batch.last[:first], choice.tensor])
        else:
            self._batch.last = choice.tensor
        finished: set[Job] = set()
        keep = list(range(first))
        for offset, row in enumerate(rows):
            token = choice.tokens[offset]
            if not row.tokens:
                row.no_speech_prob = choice.eos_probs[offset]
            row.tokens.append(token)
            row.logprobs.append(choice.logprobs[offset])
            row.top.append(choice.top[offset])
            if row.job.on_token is not None and not row.job.done.is_set():
                try:
                    row.job.on_token(row.index, token, choice.logprobs[offset], choice.top[offset])
                except Exception as exc:  # a broken listener ends its own job only
                    row.job.fail(exc)
            try:
                done = not row.job.done.is_set() and self._finished(row)
                if done:
                    self._store(row)
            except Exception as exc:  # its text cannot be decoded: that request fails, and no other
                row.job.fail(exc)
                done = False
            if not done:
                keep.append(first + offset)
                continue
            finished.add(row.job)
        if len(keep) < len(self._rows):
            self._keep(keep)
        gone = {j for j in {r.job for r in rows} if j.done.is_set()}
        if gone:
            self._remove_jobs(gone)

    def _finished(self, row: _Row) -> bool:
        if row.tokens[-1] == self.eos_token_id or len(row.tokens) >= row.cap:
            return True
        stop = row.job.sampling.stop
        if not stop:
            return False
        window = 4 * max(len(s) for s in stop) + 8  # a stop string of n characters spans at most ~4n tokens
        tail = self.decode(row.tokens[-window:])
        return any(s in tail for s in stop)

    def _store(self, row: _Row) -> None:
        job = row.job
        result = finish_row(
            row.tokens, row.logprobs, row.top, row.no_speech_prob, row.cap, self.eos_token_id, job.sampling, self.decode
        )
        with self._cond:  # `seal` may be checking the same job from the producer's thread
            job.results[row.index] = replace(result, prompt_tokens=row.prompt_tokens, audio_tokens=row.audio_tokens)
            job.settle()

    def _fail(self, jobs: Sequence[Job], error: BaseException) -> None:
        for job in jobs:
            job.fail(error)
        self._remove_jobs(set(jobs))
