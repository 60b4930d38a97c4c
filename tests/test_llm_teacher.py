"""The LLM teacher and judge against a real OpenAI-compatible HTTP server on 127.0.0.1.

The server answers from the timeline in the prompt it receives (so its good answers are
right for the clip) and can be told, per prompt and attempt, to misbehave: HTTP 500,
slow replies, garbage, schema violations, wrong answers, misplaced spans.
"""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from echo_lite.config import DataSpec, get_preset
from echo_lite.data.caption import MetadataCaptioner
from echo_lite.data.filters import DROPPED, RL, SFT, judge_item
from echo_lite.data.llm import ChatClient, LLMError, LLMJudge, LLMTeacher, parse_json_object, parse_teacher_reply
from echo_lite.data.teacher import Request
from echo_lite.data.world import sample_scene

SPEC, LIMITS = DataSpec(), get_preset("tiny").segments
_EVENT = re.compile(r"^- (\d+\.\d)-(\d+\.\d): (.+)$", re.MULTILINE)


def make_requests(n, first_seed=0):
    """The same requests in this process and in the subprocess of the kill test."""
    out = []
    for seed in range(first_seed, first_seed + n):
        scene = sample_scene(seed, kinds=["tone", "chirp", "knocks", "noise"], overlap_prob=0.0)
        out.append(Request(f"{scene.scene_id}-q0", scene, MetadataCaptioner()(scene), ("sound_at_time",), seed))
    return out


def good_reply(prompt: str, shift: float = 0.0, answer: str | None = None) -> dict:
    events = [(float(a), float(b), label) for a, b, label in _EVENT.findall(prompt)]
    a, b, label = events[0]
    others = [lab for _, _, lab in events if lab != label]
    fillers = [x for x in ("noise burst", "rising chirp", "C5 tone", "E4 tone", "G4 tone") if x != label and x not in others]
    choices = [label, *dict.fromkeys(others + fillers)][:4]
    t = round((a + b) / 2, 1)
    return {"question": f"What is heard at {t} s?", "choices": choices[::-1], "answer": answer or label,
            "thinking": f"The question is about {t} seconds, so I listen to <seg>{a + shift:.1f}, {b + shift:.1f}</seg>, "
                        f"this is the {label}.", "decisive_spans": [[a, b]]}


class FakeLLM:
    """An OpenAI-compatible chat server; `plan(key, attempt, prompt)` picks each reply's behaviour."""

    def __init__(self, plan=lambda key, attempt, prompt: "ok", delay: float = 0.0):
        self.plan, self.delay = plan, delay
        self.calls: Counter = Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert self.path == "/v1/chat/completions" and body["model"] == "fake-r1"
                prompt = "\n".join(m["content"] for m in body["messages"])
                key = hashlib.sha256(prompt.encode()).hexdigest()[:12]
                with server.lock:
                    attempt = server.calls[key]
                    server.calls[key] += 1
                mode = server.plan(key, attempt, prompt)
                time.sleep(server.delay)
                if mode == "http500":
                    return self._send(500, b'{"error": "overloaded"}')
                if mode == "http400":
                    return self._send(400, b'{"error": "bad request"}')
                if mode == "slow":
                    time.sleep(1.0)
                    mode = "ok"
                if mode == "not_chat":
                    return self._send(200, b"hello, world")
                if "strict reviewer" in prompt and mode in ("ok", "judge_no"):
                    content = json.dumps({"qa_valid": mode != "judge_no", "cot_valid": True, "reason": "fine"})
                elif mode == "garbage":
                    content = "Sure! The answer is probably the second option."
                elif mode == "schema":
                    content = json.dumps({k: v for k, v in good_reply(prompt).items() if k != "answer"})
                elif mode == "wrong_answer":
                    content = json.dumps(good_reply(prompt, answer="a trumpet"))
                elif mode == "bad_seg":
                    content = json.dumps(good_reply(prompt, shift=5.0))
                elif mode == "fenced":  # DeepSeek-R1 style: reasoning, then a fenced JSON block
                    content = "<think>Let me look at the timeline.</think>\n```json\n" + json.dumps(good_reply(prompt)) + "\n```"
                else:
                    content = json.dumps(good_reply(prompt))
                reply = {"id": "x", "object": "chat.completion", "model": "fake-r1",
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                      "finish_reason": "stop"}]}
                return self._send(200, json.dumps(reply).encode())

            def _send(self, status, payload):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                    super().handle_error(request, client_address)  # a client that timed out is expected

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _client(url, **kw):
    return ChatClient(url, "fake-r1", **{"timeout_s": 5.0, "max_retries": 2, "backoff_s": 0.01, **kw})


def test_good_answers_become_sft_items_and_are_not_asked_twice(tmp_path):
    requests = make_requests(6)
    with FakeLLM(lambda k, a, p: "fenced" if a == 0 and int(k, 16) % 2 else "ok") as server:
        teacher = LLMTeacher(_client(server.url), tmp_path / "teacher.jsonl", workers=3)
        outcomes = teacher.teach(requests)
        assert sum(server.calls.values()) == 6
        for req, out in zip(requests, outcomes, strict=True):
            assert out.item_id == req.item_id and out.draft is not None and out.draft.teacher == "llm:fake-r1"
            verdict, cites = judge_item(req.scene, out.draft, SPEC, LIMITS)
            assert verdict.route() == (SFT, None), verdict
            assert cites[0].span == req.scene.events[0].span
        again = LLMTeacher(_client(server.url), tmp_path / "teacher.jsonl").teach(requests)
        assert again == outcomes and sum(server.calls.values()) == 6  # resumed from the store


def test_500s_and_slow_replies_are_retried_with_backoff(tmp_path):
    requests = make_requests(4)
    plan = lambda k, a, p: ("http500" if int(k, 16) % 2 else "slow") if a == 0 else "ok"  # noqa: E731
    with FakeLLM(plan) as server:
        teacher = LLMTeacher(_client(server.url, timeout_s=0.4), tmp_path / "t.jsonl", workers=2)
        outcomes = teacher.teach(requests)
        assert all(o.draft is not None for o in outcomes)
        assert sorted(server.calls.values()) == [2, 2, 2, 2]


def test_garbage_and_schema_errors_fail_then_resume(tmp_path):
    requests = make_requests(3)
    modes = {}
    with FakeLLM(lambda k, a, p: modes.setdefault(k, ["garbage", "schema", "not_chat"][len(modes) % 3])) as server:
        teacher = LLMTeacher(_client(server.url), tmp_path / "t.jsonl", workers=1)
        outcomes = teacher.teach(requests)
        assert sorted(o.error for o in outcomes) == ["llm_bad_body", "llm_invalid_json", "llm_schema"]
        assert sorted(server.calls.values()) == [3, 3, 3]  # first try + 2 retries each
        records = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
        assert [r["status"] for r in records] == ["failed"] * 3
        server.plan = lambda k, a, p: "ok"
        fixed = LLMTeacher(_client(server.url), tmp_path / "t.jsonl").teach(requests)
        assert all(o.draft is not None for o in fixed)
        stuck = LLMTeacher(_client(server.url), tmp_path / "t.jsonl", retry_failed=False).teach(requests)
        assert stuck == fixed  # the last record of each id wins


def test_client_errors_are_not_retried(tmp_path):
    with FakeLLM(lambda k, a, p: "http400") as server:
        with pytest.raises(LLMError, match="HTTP 400"):
            _client(server.url).chat([{"role": "user", "content": "hi"}])
        assert sum(server.calls.values()) == 1


def test_wrong_answers_and_misplaced_spans_are_filtered(tmp_path):
    requests = make_requests(2)
    modes = iter(["wrong_answer", "bad_seg"])
    plan_of = {}
    with FakeLLM(lambda k, a, p: plan_of.setdefault(k, next(modes))) as server:
        outcomes = LLMTeacher(_client(server.url), tmp_path / "t.jsonl", workers=1).teach(requests)
    routes = sorted(judge_item(r.scene, o.draft, SPEC, LIMITS)[0].route() for r, o in zip(requests, outcomes, strict=True))
    assert routes == [(DROPPED, "answer_not_in_choices"), (RL, "cot:seg_misplaced")]


def test_llm_judge_verdicts_are_cached(tmp_path):
    requests = make_requests(2)
    with FakeLLM(lambda k, a, p: "judge_no" if "strict reviewer" in p and int(k, 16) % 2 else "ok") as server:
        outcomes = LLMTeacher(_client(server.url), tmp_path / "t.jsonl").teach(requests)
        judge = LLMJudge(_client(server.url), tmp_path / "j.jsonl")
        jobs = [(r.caption.simulation(), o.draft) for r, o in zip(requests, outcomes, strict=True)]
        judge.prefetch(jobs)
        n = sum(server.calls.values())
        verdicts = [judge(r.scene, sim, d) for r, (sim, d) in zip(requests, jobs, strict=True)]
        assert sum(server.calls.values()) == n  # served from the store
        assert all(v["cot_valid"] for v in verdicts) and all(isinstance(v["qa_valid"], bool) for v in verdicts)
        server.plan = lambda k, a, p: "garbage"
        failed = LLMJudge(_client(server.url, max_retries=0), tmp_path / "j2.jsonl")(None, "other clip", outcomes[0].draft)
        assert failed["error"] == "invalid_json" and failed["qa_valid"] is False


@pytest.mark.parametrize("content,kind", [
    ('{"a": NaN}', "invalid_json"), ("[1, 2]", "invalid_json"), ('{"a": 1} and more text', "invalid_json"),
    ("", "invalid_json"), ('{"question": "q", "choices": ["a"], "answer": "a", "thinking": "t"}', "schema"),
    ('{"question": "q", "choices": ["a", 2], "answer": "a", "thinking": "t"}', "schema"),
    ('{"question": "q", "choices": ["a", "b"], "answer": "a", "thinking": "t", "decisive_spans": [[1, "x"]]}', "schema"),
    ('{"question": "", "choices": ["a", "b"], "answer": "a", "thinking": "t"}', "schema"),
])
def test_replies_are_parsed_strictly(content, kind):
    with pytest.raises(LLMError) as err:
        parse_teacher_reply(content)
    assert err.value.kind == kind


def test_reasoning_and_fences_around_the_object_are_allowed():
    obj = {"question": "q?", "choices": ["a", "b"], "answer": "a", "thinking": "t <seg>1.0, 2.0</seg>, x"}
    assert parse_json_object("<think>hm {not json}</think>\n```json\n" + json.dumps(obj) + "\n```") == obj
    assert parse_teacher_reply(json.dumps(obj))["decisive_spans"] == []


_CHILD = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("t", sys.argv[1]); t = importlib.util.module_from_spec(spec)
spec.loader.exec_module(t)
from echo_lite.data.llm import ChatClient, LLMTeacher
client = ChatClient(sys.argv[2], "fake-r1", timeout_s=5.0, max_retries=2, backoff_s=0.01)
LLMTeacher(client, sys.argv[3], workers=2).teach(t.make_requests(int(sys.argv[4])))
"""


def test_a_run_killed_midway_resumes_without_loss_or_duplicates(tmp_path):
    n, store = 12, tmp_path / "teacher.jsonl"
    requests = make_requests(n)
    with FakeLLM(delay=0.25) as server:
        child = subprocess.Popen([sys.executable, "-c", _CHILD, __file__, server.url, str(store), str(n)],
                                 env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while time.time() < deadline and (not store.exists() or store.read_text().count("\n") < 3):
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        before = store.read_text().splitlines()
        finished = {json.loads(line)["id"]: line for line in before if line.strip()}
        assert 3 <= len(finished) < n, "the kill must land mid-run"
        with store.open("a") as f:
            f.write(json.dumps({"id": "torn", "status": "ok"})[:20])  # as if killed mid-write
        calls_before = Counter(server.calls)
        outcomes = LLMTeacher(_client(server.url), store, workers=2).teach(requests)
    assert all(o.draft is not None for o in outcomes)
    lines = store.read_text().splitlines()
    ids = [json.loads(line)["id"] for line in lines]
    assert sorted(ids) == sorted(r.item_id for r in requests)  # nothing lost, nothing twice, torn line gone
    assert all(line in lines for line in finished.values())  # finished records kept as they were
    new_calls = server.calls - calls_before
    assert sum(new_calls.values()) == n - len(finished)  # only the unfinished items were asked again


def test_synth_stage_with_the_llm_teacher_and_judge(tmp_path):
    from echo_lite.data.formats import MANIFEST, read_manifest
    from echo_lite.data.synth import run

    with FakeLLM(lambda k, a, p: "bad_seg" if int(k, 16) % 5 == 0 and "strict reviewer" not in p else "ok") as server:
        stats = run(tmp_path / "d", "tiny", n=16, seed=2, teacher="llm", llm_url=server.url, llm_model="fake-r1",
                    judge=True, workers=2, progress=False)
        calls = sum(server.calls.values())
        judged = len((tmp_path / "d" / "judge_llm.jsonl").read_text().splitlines())
        assert 0 < judged <= 16
        assert calls == 16 + judged  # a teacher call per item, a judge call per distinct content
        assert run(tmp_path / "d", "tiny", n=16, seed=2, teacher="llm", llm_url=server.url, llm_model="fake-r1",
                   judge=True, workers=2, progress=False) == stats
        assert sum(server.calls.values()) == calls  # the re-run is served from the stores
    assert stats["teacher"] == "llm:fake-r1" and stats["items"]["sft"] > 0
    items = read_manifest(tmp_path / "d" / "sft" / MANIFEST)
    assert all(it.teacher == "llm:fake-r1" and it.query == {} and it.cited_spans for it in items)
    assert stats["rl_reasons"].get("cot:seg_misplaced", 0) + stats["items"]["eval"] > 0
