"""The paper's two-stage question generation against an OpenAI-compatible endpoint.

Stage (a) rephrases the narration into a detailed description of the action; stage (b)
writes the verb and the noun question from verb, noun and description. Both stages must
answer with a JSON object; anything else is retried and finally reported.

The endpoint comes from the environment (`MAMBAVL_LLM_BASE_URL`, `MAMBAVL_LLM_API_KEY`,
`MAMBAVL_LLM_MODEL`, falling back to the `OPENAI_*` names): the config stores only the
variable names, so the key never reaches a config dump, a log or a tracking server.
Answers are cached in SQLite keyed by the model, the prompts and everything of the row a
prompt reads (narration id, narration, verb, noun): a rerun costs nothing, an interrupted
run resumes, and an edited annotation row is asked again instead of reusing stale questions.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sqlite3
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
from tqdm import tqdm

from features.errors import HarnessError

if TYPE_CHECKING:
    from extract.questions import Labels
    from features.annotations import ClassTable

PROMPT_VERSION = "v1"
DESCRIBE_PROMPT = (
    "You describe short egocentric kitchen video clips. Rephrase the narration into one "
    "detailed sentence describing the action (who does what, with which object, how). "
    'Answer only with JSON: {{"description": "..."}}.\nNarration: "{narration}"\n'
    "Verb: {verb}\nNoun: {noun}"
)
QUESTION_PROMPT = (
    "Write two questions about the clip described below. The first question's answer must "
    "be the verb, the second question's answer must be the noun; neither question may "
    'contain its own answer. Answer only with JSON: {{"verb_question": "...", '
    '"noun_question": "..."}}.\nDescription: {description}\nVerb: {verb}\nNoun: {noun}'
)


@dataclass
class LLMConfig:
    """Endpoint and pacing of the `llm` question generator (values come from env vars)."""

    base_url_env: str = "MAMBAVL_LLM_BASE_URL"
    api_key_env: str = "MAMBAVL_LLM_API_KEY"
    model_env: str = "MAMBAVL_LLM_MODEL"
    cache: Path = Path("data/cache/llm_questions.sqlite")
    concurrency: int = 8
    max_retries: int = 6
    timeout_s: float = 60.0
    backoff_s: float = 1.0
    temperature: float = 0.7


class LLMError(HarnessError, RuntimeError):
    """A request that still failed after every retry."""


def _env(name: str, fallback: str) -> str | None:
    return os.environ.get(name) or os.environ.get(fallback)


class ChatClient:
    """Minimal chat-completions client with retries on 429, 5xx, timeouts and bad JSON.

    A 200 whose body is not JSON (a proxy's or gateway's error page) is retried like a 5xx:
    it is the infrastructure failing, not the model answering badly.
    """

    def __init__(self, config: LLMConfig) -> None:
        base_url = _env(config.base_url_env, "OPENAI_BASE_URL")
        self.model = _env(config.model_env, "OPENAI_MODEL")
        if not base_url or not self.model:
            raise SystemExit(
                f"--generator llm needs {config.base_url_env} and {config.model_env} "
                "(an OpenAI-compatible endpoint); set them in the environment"
            )
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._key = _env(config.api_key_env, "OPENAI_API_KEY")
        self.config = config
        self._local = threading.local()

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def ask_json(self, prompt: str, keys: Sequence[str]) -> dict[str, str]:
        """Send one user message; return its JSON answer with `keys` as non-empty strings."""
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": self.config.temperature,
        }
        last = "no attempt"
        for attempt in range(self.config.max_retries + 1):
            delay = self.config.backoff_s * 2**attempt * (0.5 + random.random())
            try:
                response = self._session().post(
                    self.url, json=body, headers=headers, timeout=self.config.timeout_s
                )
            except (requests.Timeout, requests.ConnectionError) as error:
                last = type(error).__name__
            else:
                if response.status_code == 429 or response.status_code >= 500:
                    last = f"HTTP {response.status_code}"
                    retry_after = response.headers.get("Retry-After", "")
                    if retry_after.replace(".", "", 1).isdigit():
                        delay = float(retry_after)
                elif response.status_code != 200:
                    raise LLMError(f"{self.url}: HTTP {response.status_code}: "
                                   f"{_start(response.text)}")
                else:
                    try:
                        payload = response.json()
                    except requests.JSONDecodeError:
                        last = f"HTTP 200 with a body that is not JSON: {_start(response.text)}"
                    else:
                        parsed = _parse_answer(payload, keys)
                        if parsed is not None:
                            return parsed
                        last = "answer was not the expected JSON"
            if attempt < self.config.max_retries:
                time.sleep(delay)
        raise LLMError(f"{self.url}: gave up after {self.config.max_retries + 1} attempts "
                       f"(last: {last})")


def _start(body: str, size: int = 120) -> str:
    """The start of a response body on one line, quoted (enough to recognise an error page)."""
    return repr(" ".join(body.split())[:size])


def _parse_answer(payload: dict[str, Any], keys: Sequence[str]) -> dict[str, str] | None:
    try:
        content = payload["choices"][0]["message"]["content"]
        content = re.sub(r"^```(?:json)?\s*|\s*```$", "", content.strip())
        answer = json.loads(content)
    except (KeyError, IndexError, TypeError, json.JSONDecodeError):
        return None
    if not isinstance(answer, dict):
        return None
    if not all(isinstance(answer.get(k), str) and answer[k].strip() for k in keys):
        return None
    return {k: answer[k].strip() for k in keys}


class AnswerCache:
    """SQLite cache of finished question pairs; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value TEXT)")
        self._lock = threading.Lock()

    def get(self, key: str) -> dict[str, str] | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM answers WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: dict[str, str]) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO answers VALUES (?, ?)", (key, json.dumps(value))
            )


def cache_key(model: str | None, narration_id: str, narration: str, verb: str, noun: str
              ) -> str:
    """Everything an answer depends on: the model, the prompts and the row's fields they read.

    Readable prefix for inspecting the cache; the digest changes when any input does.
    """
    inputs = [model, PROMPT_VERSION, DESCRIBE_PROMPT, QUESTION_PROMPT, narration_id, narration,
              verb, noun]
    digest = hashlib.sha256(json.dumps(inputs).encode()).hexdigest()[:16]
    return f"{model}|{PROMPT_VERSION}|{narration_id}|{digest}"


def generate_llm_questions(
    items: Sequence[tuple[str, Labels]],
    verbs: ClassTable,
    nouns: ClassTable,
    config: LLMConfig,
) -> dict[str, tuple[str, str]]:
    """(verb question, noun question) per narration id, from cache or the endpoint.

    Failures do not stop the others; they are raised together at the end, after every
    success has been cached, so a rerun only retries the failures.
    """
    client = ChatClient(config)
    cache = AnswerCache(config.cache)

    def one(item: tuple[str, Labels]) -> tuple[str, dict[str, str]]:
        narration_id, labels = item
        verb = verbs.keys[labels.verb_class]
        noun = nouns.keys[labels.noun_class]
        key = cache_key(client.model, narration_id, labels.narration, verb, noun)
        cached = cache.get(key)
        if cached is not None:
            return narration_id, cached
        described = client.ask_json(
            DESCRIBE_PROMPT.format(narration=labels.narration, verb=verb, noun=noun),
            ["description"],
        )
        questions = client.ask_json(
            QUESTION_PROMPT.format(description=described["description"], verb=verb, noun=noun),
            ["verb_question", "noun_question"],
        )
        answer = {**described, **questions}
        cache.put(key, answer)
        return narration_id, answer

    results: dict[str, tuple[str, str]] = {}
    failures: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=config.concurrency) as pool:
        futures = {pool.submit(one, item): item[0] for item in items}
        for future in tqdm(futures, desc="llm questions", unit="clip", disable=None):
            try:
                narration_id, answer = future.result()
                results[narration_id] = (answer["verb_question"], answer["noun_question"])
            except LLMError as error:
                failures[futures[future]] = str(error)
    if failures:
        first = ", ".join(f"{k} ({v})" for k, v in list(failures.items())[:3])
        raise LLMError(
            f"{len(failures)} segment(s) got no valid questions, e.g. {first}; "
            "successes are cached: rerun the same command to retry only these"
        )
    return results
