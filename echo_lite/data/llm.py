"""The LLM teacher and judge over any OpenAI-compatible chat endpoint (DeepSeek-R1, vLLM, llama.cpp).

The paper's data were written by DeepSeek-R1 reading a clip's text simulation (question,
options, answer, and a chain of thought with `<seg>` spans) and re-judged by the same
model (ECHO_METHOD.md section 3). Replies are untrusted input: the content must be one
JSON object (after an optional `<think>` block or code fence), checked against a schema;
nothing is ever evaluated. Requests time out, are retried with exponential backoff, and
every finished item is appended to a JSONL store keyed by item id, so a re-run resumes
and never asks twice for an item it already has.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from echo_lite.data.formats import append_jsonl, repair_tail
from echo_lite.data.questions import QTYPE_DESCRIPTIONS, QTYPES, Draft
from echo_lite.data.teacher import Outcome, Request
from echo_lite.data.world import Scene
from echo_lite.prompts import format_response

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
MAX_QUESTION_CHARS, MAX_THINK_CHARS, MAX_CHOICES = 1000, 8000, 8


class LLMError(RuntimeError):
    """The endpoint could not give a usable reply; `.kind` says why (http, timeout, invalid_json, schema)."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind


# --------------------------------------------------------------------------------------
# The client.
# --------------------------------------------------------------------------------------
class ChatClient:
    """POST `{base_url}/chat/completions`; returns the message content, retrying what can pass.

    Retried: timeouts, connection errors, HTTP 408/409/425/429/5xx and unreadable
    bodies, with delays `backoff_s * 2**attempt` (capped, `Retry-After` honoured).
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 120.0,
                 max_retries: int = 4, backoff_s: float = 1.0, backoff_max_s: float = 30.0,
                 temperature: float = 0.6, max_tokens: int = 4096):
        import httpx

        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"LLM endpoint {base_url!r} must start with http:// or https://")
        self.base_url, self.model = base_url.rstrip("/"), model
        self.max_retries, self.backoff_s, self.backoff_max_s = max_retries, backoff_s, backoff_max_s
        self.temperature, self.max_tokens = temperature, max_tokens
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=httpx.Timeout(timeout_s), headers=headers)

    def close(self) -> None:
        self._http.close()

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay = min(self.backoff_max_s, self.backoff_s * 2 ** attempt)
        if retry_after:
            try:
                delay = min(self.backoff_max_s, max(delay, float(retry_after)))
            except ValueError:
                pass
        return delay

    def _once(self, messages: list[dict]) -> str:
        import httpx

        body = {"model": self.model, "messages": messages, "temperature": self.temperature,
                "max_tokens": self.max_tokens, "stream": False}
        try:
            r = self._http.post(f"{self.base_url}/chat/completions", json=body)
        except httpx.TimeoutException as err:
            raise LLMError("timeout", f"{self.base_url}: no reply in time ({err.__class__.__name__})") from None
        except httpx.TransportError as err:
            raise LLMError("connection", f"{self.base_url}: {err}") from None
        if r.status_code != 200:
            err = LLMError("http", f"{self.base_url}: HTTP {r.status_code}: {r.text[:200]!r}")
            err.status, err.retry_after = r.status_code, r.headers.get("retry-after")
            raise err
        try:
            content = r.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise LLMError("bad_body", f"{self.base_url}: reply is not a chat completion: {r.text[:200]!r}") from None
        if not isinstance(content, str):
            raise LLMError("bad_body", f"{self.base_url}: message content is {type(content).__name__}, not text")
        return content

    def chat(self, messages: list[dict], parse=None):
        """The reply's content (or `parse(content)`); a parse failure is retried like a bad reply."""
        last: LLMError | None = None
        for attempt in range(self.max_retries + 1):
            try:
                content = self._once(messages)
                return parse(content) if parse else content
            except LLMError as err:
                last = err
                status = getattr(err, "status", None)
                if err.kind == "http" and status not in RETRY_STATUS:
                    raise
                if attempt < self.max_retries:
                    wait = self._delay(attempt, getattr(err, "retry_after", None))
                    log.info("LLM call failed (%s); retry %d/%d in %.2f s", err, attempt + 1, self.max_retries, wait)
                    time.sleep(wait)
        raise last


# --------------------------------------------------------------------------------------
# Strict parsing.
# --------------------------------------------------------------------------------------
_THINK_BLOCK = re.compile(r"^\s*<think>.*?</think>", re.DOTALL)
_FENCE = re.compile(r"^\s*```(?:json)?\s*\n(.*?)\n?```\s*$", re.DOTALL)


def parse_json_object(content: str) -> dict:
    """The one JSON object of a reply (an R1 `<think>` block and a code fence are allowed around it)."""
    text = _THINK_BLOCK.sub("", content, count=1).strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        obj = json.loads(text, parse_constant=_no_constant)
    except (json.JSONDecodeError, ValueError) as err:
        raise LLMError("invalid_json", f"reply is not one JSON object ({err}): {text[:120]!r}") from None
    if not isinstance(obj, dict):
        raise LLMError("invalid_json", f"reply is JSON {type(obj).__name__}, not an object")
    return obj


def _no_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def _string(obj: dict, key: str, limit: int, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise LLMError("schema", f"field {key!r} must be a non-empty string, got {value!r:.80}")
    if len(value) > limit:
        raise LLMError("schema", f"field {key!r} is {len(value)} characters (limit {limit})")
    return value.strip()


def _spans(value) -> list[tuple[float, float]]:
    if not isinstance(value, list):
        raise LLMError("schema", f"decisive_spans must be a list of [start, end], got {value!r:.80}")
    out = []
    for span in value:
        if (not isinstance(span, list) or len(span) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in span)
                or not all(math.isfinite(x) for x in span)):
            raise LLMError("schema", f"decisive span {span!r:.60} is not [start, end]")
        out.append((float(span[0]), float(span[1])))
    return out


def parse_teacher_reply(content: str) -> dict:
    """Schema-checked fields of a teacher reply (answer-in-options is left to the filters)."""
    obj = parse_json_object(content)
    question = _string(obj, "question", MAX_QUESTION_CHARS)
    thinking = _string(obj, "thinking", MAX_THINK_CHARS)
    answer = _string(obj, "answer", MAX_QUESTION_CHARS)
    choices = obj.get("choices")
    if not isinstance(choices, list) or not 2 <= len(choices) <= MAX_CHOICES:
        raise LLMError("schema", f"choices must be a list of 2-{MAX_CHOICES} strings, got {choices!r:.80}")
    if not all(isinstance(c, str) and c.strip() and len(c) <= MAX_QUESTION_CHARS for c in choices):
        raise LLMError("schema", "every choice must be a non-empty string")
    qtype = obj.get("qtype")
    spans = _spans(obj["decisive_spans"]) if obj.get("decisive_spans") is not None else []
    return {"question": question, "choices": [c.strip() for c in choices], "answer": answer, "thinking": thinking,
            "qtype": qtype if isinstance(qtype, str) and qtype in QTYPES else None, "decisive_spans": spans}


def parse_judge_reply(content: str) -> dict:
    obj = parse_json_object(content)
    for key in ("qa_valid", "cot_valid"):
        if not isinstance(obj.get(key), bool):
            raise LLMError("schema", f"field {key!r} must be true or false, got {obj.get(key)!r:.40}")
    reason = obj.get("reason")
    return {"qa_valid": obj["qa_valid"], "cot_valid": obj["cot_valid"],
            "reason": reason[:500] if isinstance(reason, str) else ""}


# --------------------------------------------------------------------------------------
# The append-only store.
# --------------------------------------------------------------------------------------
class JsonlStore:
    """Finished records keyed by `id`, appended one line at a time (last record of an id wins)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self.records: dict[str, dict] = {}
        if self.path.exists():
            cut = repair_tail(self.path)
            if cut:
                log.warning("%s: dropped an unfinished last line (%d bytes) left by an interrupted run", self.path, cut)
            for lineno, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{self.path}:{lineno}: not valid JSON ({err.msg})") from None
                if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
                    raise ValueError(f"{self.path}:{lineno}: a record needs a string 'id'")
                self.records[rec["id"]] = rec

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def put(self, record: dict) -> None:
        with self._lock:
            append_jsonl(self.path, [json.dumps(record, sort_keys=True)])
            self.records[record["id"]] = record


# --------------------------------------------------------------------------------------
# The teacher and the judge.
# --------------------------------------------------------------------------------------
TEACHER_SYSTEM = ("You are an expert in audio perception who writes exam questions about audio clips. "
                  "You only see a text simulation of each clip, with exact event times.")

TEACHER_PROMPT = """Below is a text simulation of an audio clip: a general description, the speech, the music, and a timeline of sound events with start and end times in seconds.

{simulation}

Write one multiple-choice question about this clip that can only be answered by fine temporal analysis of the audio. Ask about {qtype_text}. Give {n_choices} options with plausible distractors, exactly one correct.

Then write the chain of thought of a listener who answers it by re-listening to parts of the clip:
- before each segment, say why you listen to it;
- cite the segment as <seg>START, END</seg> in seconds with one decimal, using the event times of the timeline;
- right after </seg>, continue the same sentence with a comma and say what is heard there, naming the event as the timeline names it;
- end with the conclusion. Keep it under {max_words} words.

Reply with only this JSON object:
{{"question": "...", "choices": ["...", "..."], "answer": "<the correct choice, verbatim>", "thinking": "<the chain of thought with <seg> spans>", "decisive_spans": [[START, END]]}}"""

JUDGE_SYSTEM = "You are a strict reviewer of audio exam questions. You only see a text simulation of each clip."

JUDGE_PROMPT = """Clip:
{simulation}

Question: {question}
Options: {choices}
Given answer: {answer}
Chain of thought: {thinking}

1. QA valid: can the question be answered from the clip, with exactly one correct option, and is the given answer that option?
2. CoT valid: does every <seg>START, END</seg> match the timeline event it names, and does the reasoning lead to the answer?

Reply with only this JSON object: {{"qa_valid": true or false, "cot_valid": true or false, "reason": "<one sentence>"}}"""


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


class LLMTeacher:
    """Questions and chains of thought from an LLM; resumable through an append-only store."""

    def __init__(self, client: ChatClient, store: str | Path, workers: int = 4, n_choices: int = 4,
                 max_words: int = 120, retry_failed: bool = True):
        self.client, self.store = client, JsonlStore(store)
        self.workers, self.n_choices, self.max_words = workers, n_choices, max_words
        self.retry_failed = retry_failed
        self.name = f"llm:{client.model}"

    def messages(self, request: Request) -> list[dict]:
        qtype = request.qtypes[0] if request.qtypes else None
        prompt = TEACHER_PROMPT.format(simulation=request.caption.simulation(), n_choices=self.n_choices,
                                       qtype_text=QTYPE_DESCRIPTIONS.get(qtype, "when or in which order things happen"),
                                       max_words=self.max_words)
        return [{"role": "system", "content": TEACHER_SYSTEM}, {"role": "user", "content": prompt}]

    def _draft(self, request: Request, reply: dict) -> Draft:
        qtype = reply["qtype"] or (request.qtypes[0] if request.qtypes else "other")
        spans = tuple((float(a), float(b)) for a, b in reply["decisive_spans"])  # lists when read from the store
        if not spans:  # no decisive spans given: the cited ones stand in
            from echo_lite.segments import parse_segments

            spans = tuple(t.span for t in parse_segments(reply["thinking"]) if t.ok)
        return Draft(qtype, reply["question"], tuple(reply["choices"]), reply["answer"], reply["thinking"], spans,
                     {}, self.name)

    def _run(self, request: Request, messages: list[dict], key: str) -> Outcome:
        try:
            reply = self.client.chat(messages, parse=parse_teacher_reply)
        except LLMError as err:
            self.store.put({"id": request.item_id, "status": "failed", "error": err.kind, "detail": str(err)[:300],
                            "prompt_sha": key})
            return Outcome(request.item_id, None, f"llm_{err.kind}")
        draft = self._draft(request, reply)
        self.store.put({"id": request.item_id, "status": "ok", "prompt_sha": key, "reply": reply,
                        "response": format_response(draft.think, draft.answer)})
        return Outcome(request.item_id, draft)

    def teach(self, requests: Sequence[Request]) -> list[Outcome]:
        results: dict[str, Outcome] = {}
        todo = []
        for req in requests:
            messages = self.messages(req)
            key = _sha(messages)
            rec = self.store.get(req.item_id)
            if rec and rec.get("prompt_sha") == key and (rec["status"] == "ok" or not self.retry_failed):
                results[req.item_id] = (Outcome(req.item_id, self._draft(req, rec["reply"])) if rec["status"] == "ok"
                                        else Outcome(req.item_id, None, f"llm_{rec['error']}"))
            else:
                todo.append((req, messages, key))
        if todo:
            with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
                for outcome in pool.map(lambda job: self._run(*job), todo):
                    results[outcome.item_id] = outcome
        return [results[r.item_id] for r in requests]


class LLMJudge:
    """The paper's re-judging step: {"qa_valid", "cot_valid"} from an LLM, cached by content."""

    def __init__(self, client: ChatClient, store: str | Path, workers: int = 4):
        self.client, self.store, self.workers = client, JsonlStore(store), workers

    def messages(self, simulation: str, draft: Draft) -> list[dict]:
        prompt = JUDGE_PROMPT.format(simulation=simulation, question=draft.question,
                                     choices=json.dumps(list(draft.choices)), answer=draft.answer,
                                     thinking=draft.think)
        return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": prompt}]

    def _judge(self, simulation: str, draft: Draft) -> dict:
        messages = self.messages(simulation, draft)
        key = _sha(messages)
        rec = self.store.get(key)
        if rec is not None:
            return rec["verdict"]
        try:
            verdict = self.client.chat(messages, parse=parse_judge_reply)
        except LLMError as err:
            return {"qa_valid": False, "cot_valid": False, "error": err.kind, "reason": str(err)[:300]}
        self.store.put({"id": key, "verdict": verdict})
        return verdict

    def prefetch(self, jobs: Sequence[tuple[str, Draft]]) -> None:
        """Judge many (simulation, draft) pairs concurrently; later calls read the store. Identical
        contents are asked once: sent together, two workers would both miss the store."""
        unique = {_sha(self.messages(*job)): job for job in jobs}
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            list(pool.map(lambda job: self._judge(*job), unique.values()))

    def __call__(self, scene: Scene, simulation: str, draft: Draft) -> dict:
        return self._judge(simulation, draft)
