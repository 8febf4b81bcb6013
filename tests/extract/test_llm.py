"""The `llm` generator against a real chat-completions server on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from extract.llm import LLMConfig, LLMError
from extract.questions import QuestionsConfig, generate, read_questions
from tests.cli import one_error_line

SECRET = "sk-test-secret-123"
REPO = Path(__file__).resolve().parents[2]
ERROR_PAGE = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


class ChatServer(ThreadingHTTPServer):
    """Speaks /v1/chat/completions; fails the first request of each prompt as scripted."""

    def __init__(self, failures: list[str]) -> None:
        super().__init__(("127.0.0.1", 0), ChatHandler)
        self.failures = list(failures)  # "429", "500", "badjson", "html", "forever"
        self.always = ""  # a failure for every request ("html": a proxy's error page)
        self.requests: list[dict] = []
        self.auth: set[str] = set()
        self.lock = threading.Lock()


class ChatHandler(BaseHTTPRequestHandler):
    server: ChatServer

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        assert self.path == "/v1/chat/completions"
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        with self.server.lock:
            self.server.requests.append(body)
            self.server.auth.add(self.headers.get("Authorization", ""))
            failure = self.server.failures.pop(0) if self.server.failures else ""
            failure = self.server.always or failure
        if "Verb: open" in prompt or failure == "forever":
            failure = "500"
        if failure in ("429", "500"):
            self.send_response(int(failure))
            self.send_header("Retry-After", "0")
            self.end_headers()
            return
        if failure == "html":  # a proxy in front of the endpoint answers with its error page
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(ERROR_PAGE.encode())
            return
        if "description" in prompt and "Description:" not in prompt:
            answer = {"description": "A person carefully handles something in a kitchen."}
        else:
            answer = {"verb_question": "What is the person doing with the plate?",
                      "noun_question": "What does the person take?"}
        content = "not json at all" if failure == "badjson" else json.dumps(answer)
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload.encode())


@pytest.fixture
def server(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[ChatServer]:
    chat = ChatServer(getattr(request, "param", []))
    thread = threading.Thread(target=chat.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("MAMBAVL_LLM_BASE_URL", f"http://127.0.0.1:{chat.server_port}/v1")
    monkeypatch.setenv("MAMBAVL_LLM_API_KEY", SECRET)
    monkeypatch.setenv("MAMBAVL_LLM_MODEL", "tiny-chat")
    yield chat
    chat.shutdown()


def _config(ek100: Path, tmp_path: Path, **kw: object) -> QuestionsConfig:
    llm = LLMConfig(cache=tmp_path / "cache.sqlite", concurrency=3, max_retries=3,
                    backoff_s=0.01, timeout_s=5)
    return QuestionsConfig(annotations=ek100 / "EPIC_100_validation.csv", out=tmp_path / "q.jsonl",
                           generator="llm", llm=llm, **kw)


def _drop_open_rows(ek100: Path) -> None:
    csv = ek100 / "EPIC_100_validation.csv"
    csv.write_text("".join(x for x in csv.read_text().splitlines(True) if ",open," not in x))


@pytest.mark.parametrize("server", [["429", "500", "badjson"]], indirect=True)
def test_two_stages_retries_and_cache(server: ChatServer, tiny_ek100: Path, tmp_path: Path) -> None:
    _drop_open_rows(tiny_ek100)
    config = _config(tiny_ek100, tmp_path, mask="paper")
    generate(config)
    questions = read_questions(config.out)
    assert len(questions) == 4 and (questions["generator"] == "llm").all()
    # paper masking hides the noun in the verb question
    plates = questions[questions["noun"] == "plate"]
    assert plates["verb_question"].str.contains("<mask>").all()
    first = len(server.requests)
    assert first == 4 * 2 + 3  # two stages per clip plus the three scripted failures
    assert server.auth == {f"Bearer {SECRET}"}
    generate(config)  # a rerun is answered by the cache
    assert len(server.requests) == first
    assert SECRET not in (tmp_path / "cache.sqlite").read_bytes().decode("latin-1")


def test_failures_are_reported_not_dropped(server: ChatServer, tiny_ek100: Path,
                                           tmp_path: Path) -> None:
    config = _config(tiny_ek100, tmp_path)
    with pytest.raises(LLMError, match=r"2 segment\(s\) got no valid questions.*P01_01_2"):
        generate(config)
    assert not config.out.exists()
    # the successes were cached: a rerun only asks for the two failing clips
    before = len(server.requests)
    with pytest.raises(LLMError):
        generate(config)
    assert len(server.requests) - before == 2 * 4  # 2 clips x (1 + 3 retries), stage (a) only


@pytest.mark.parametrize("server", [["html"]], indirect=True)
def test_html_body_with_200_is_retried(server: ChatServer, tiny_ek100: Path,
                                       tmp_path: Path) -> None:
    """A proxy's error page served as 200 is retried like a 5xx; the next answer is used."""
    _drop_open_rows(tiny_ek100)
    config = _config(tiny_ek100, tmp_path)
    generate(config)
    assert len(read_questions(config.out)) == 4
    assert len(server.requests) == 4 * 2 + 1  # the error page cost one retry


def test_html_body_always_is_one_line_error(server: ChatServer, tiny_ek100: Path,
                                            tmp_path: Path) -> None:
    """Every answer an error page: the CLI exits 2 with one line naming endpoint and body."""
    server.always = "html"
    _drop_open_rows(tiny_ek100)
    out = tmp_path / "q.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "extract.questions", "--annotations",
         str(tiny_ek100 / "EPIC_100_validation.csv"), "--out", str(out), "--generator", "llm",
         "--llm.cache", str(tmp_path / "cache.sqlite"), "--llm.max-retries", "2",
         "--llm.backoff-s", "0.01"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    lines = [one_error_line(result)]
    assert f"127.0.0.1:{server.server_port}/v1/chat/completions" in lines[0]
    assert "not JSON" in lines[0] and "502 Bad Gateway" in lines[0]
    assert len(server.requests) == 4 * 3  # each clip's first stage, 1 + 2 retries
    assert not out.exists()


def _edit_row(ek100: Path, narration_id: str, old: str, new: str) -> None:
    csv = ek100 / "EPIC_100_validation.csv"
    rows = csv.read_text().splitlines(True)
    edited = [r.replace(old, new) if r.startswith(narration_id + ",") else r for r in rows]
    assert edited != rows
    csv.write_text("".join(edited))


def test_cache_follows_the_rows_content(server: ChatServer, tiny_ek100: Path,
                                        tmp_path: Path) -> None:
    """An edited narration or label is asked again; unchanged rows come from the cache."""
    _drop_open_rows(tiny_ek100)
    config = _config(tiny_ek100, tmp_path)
    generate(config)
    first = len(server.requests)
    assert first == 4 * 2

    _edit_row(tiny_ek100, "P01_01_0", ",take plate,", ",take the dinner plate,")
    generate(config)
    assert len(server.requests) == first + 2  # only the edited clip, both stages
    narrations = [json.loads(r["messages"][0]["content"].split("Narration: ")[1].split("\n")[0])
                  for r in server.requests[first:] if "Narration: " in r["messages"][0]["content"]]
    assert narrations == ["take the dinner plate"]

    _edit_row(tiny_ek100, "P02_01_0", ",plate,2,['plate'],[2]", ",knife,1,['knife'],[1]")
    generate(config)
    assert len(server.requests) == first + 4  # a changed noun label is asked again too

    generate(config)  # nothing changed: every answer from the cache
    assert len(server.requests) == first + 4
