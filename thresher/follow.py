"""Following the model registry: switch the chat model and the judge to whatever is promoted (or rolled back)
without a restart, and build the judge the settings ask for.

Library code: the server, `thresher worker` and the demo use it alike; nothing here needs the web server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from thresher.config import Settings
from thresher.engines import Engine
from thresher.engines import load as load_engine
from thresher.judge import SwitchableJudge
from thresher.judge import make_judge as make_judge_for
from thresher.reward import HeadJudge

log = logging.getLogger("thresher.follow")

# How often the server and the worker look at the registry.
FOLLOW_SECONDS = 5.0


def judge_from_settings(settings: Settings, serving: Engine | None) -> SwitchableJudge | None:
    """The judge `settings.judge` asks for: the serving engine itself, another engine, or none."""
    if settings.judge == "off":
        return None
    return SwitchableJudge(make_judge_for(settings.judge, serving, threshold=settings.judge_threshold,
                                          rationale=settings.judge_rationale, n_ctx=settings.n_ctx,
                                          n_threads=settings.n_threads))


class ModelFollower:
    """Switches the chat model and the judge to the registry's promoted versions without a restart: a request
    already streaming finishes on the engine it started with, the next one gets the new engine.

    `rt` is what serves chat (the server's runtime: its `engine`, its `chat` service's engine and its
    `model_problems`); with none (the stand-alone worker) only the judge follows. A judge set to "serving" judges
    with whatever chat model is promoted, unless a judge version is promoted too; a head judge stays on the model
    it was trained for when the promoted chat model has no head of its own (it keeps that model loaded for
    judging).

    A promoted version that cannot be loaded (its file is missing, say) is warned about once, and what serves goes
    on serving; it is tried again when another version is promoted, or at a restart."""

    def __init__(self, settings: Settings, judge: SwitchableJudge | None, rt: Any = None) -> None:
        from thresher.registry import Registry

        self.settings, self.judge, self.rt = settings, judge, rt
        self.registry = Registry(settings.data_dir / "models")
        self.configured = rt.engine if rt else None
        self.retired: list[Any] = []  # engines switched away from, closed once nothing uses them
        self.judge_configured = judge.current if judge else None
        self.served: dict[str, str | None] = {"chat": None, "judge": None}
        self.failed: dict[str, str | None] = {}  # kind -> the promoted version that could not be loaded
        self.problems: dict[str, str] = rt.model_problems if rt is not None else {}

    def _load(self, spec: str) -> Engine:
        return load_engine(spec, n_ctx=self.settings.n_ctx, n_threads=self.settings.n_threads,
                           n_parallel=self.settings.n_parallel)

    def _make(self, spec: str, serving: Engine | None) -> Any:
        s = self.settings
        return make_judge_for(spec, serving, threshold=s.judge_threshold, rationale=s.judge_rationale,
                              n_ctx=s.n_ctx, n_threads=s.n_threads)

    def _pending(self, kind: str, want: str | None) -> bool:
        """Whether `want` is still to be switched to: not while it serves, nor after it failed to load."""
        if want == self.served[kind]:
            self.failed.pop(kind, None)
            self.problems.pop(kind, None)
            return False
        return kind not in self.failed or self.failed[kind] != want

    def _attempt(self, kind: str, want: str | None, make: Callable[[], Any], serving: str) -> Any:
        """make() the engine or judge for `want`; if it fails, warn once and return None (`serving` stays)."""
        try:
            made = make()
        except Exception as e:  # a missing or broken version must not take the server down, nor flood the log
            self.failed[kind] = want
            self.problems[kind] = (f"{kind} version {want} is promoted but could not be loaded ({e}); still "
                                   f"serving {serving}. It is tried again when another version is promoted (or "
                                   "rolled back to) and at a restart.")
            log.warning("%s", self.problems[kind])
            return None
        self.failed.pop(kind, None)
        self.problems.pop(kind, None)
        return made

    def _judge_for(self, judge_v: Any, follows_chat: bool, chat: Any) -> Any:
        if judge_v is not None:
            return self._make(judge_v.spec, self.rt.engine if self.rt else None)
        if follows_chat:
            new = self._make("serving", self.rt.engine if self.rt is not None else self._load(chat.spec))
            if isinstance(self.judge_configured, HeadJudge) and not isinstance(new, HeadJudge):
                return self.judge_configured  # no head for the new model: the trained head judges on
            return new
        return self.judge_configured

    def check(self) -> list[str]:
        """Load and switch to whatever was promoted (or rolled back) since the last check; returns what changed."""
        changed = []
        chat, judge_v = self.registry.current("chat"), self.registry.current("judge")
        chat_id = chat.id if chat else None
        if self._pending("chat", chat_id):
            if self.rt is None:
                self.served["chat"] = chat_id
            else:
                serving = f"{self.served['chat'] or 'the configured model'} ({self.rt.engine.version})"
                engine = self._attempt("chat", chat_id, lambda: self._load(chat.spec) if chat else self.configured,
                                       serving)
                if engine is not None:
                    old = self.rt.engine
                    self.rt.engine = self.rt.chat.engine = engine
                    self.served["chat"] = chat_id
                    changed.append(f"chat -> {chat_id or 'the configured model'}")
                    self.retired.append(old)
        self._close_retired()
        if self.judge is None:
            return changed
        chat_served = self.served["chat"]  # the judge follows the chat model that really serves
        follows_chat = judge_v is None and self.settings.judge == "serving" and chat_served is not None
        want = judge_v.id if judge_v else f"serving {chat_served}" if follows_chat else None
        if self._pending("judge", want):
            new = self._attempt("judge", want, lambda: self._judge_for(judge_v, follows_chat, chat),
                                self.judge.judge_id)
            if new is not None:
                old_engine = getattr(self.judge.current, "engine", None)
                self.judge.current = new
                self.served["judge"] = want
                changed.append(f"judge -> {judge_v.id if judge_v else new.judge_id}")
                if old_engine is not None:
                    self.retired.append(old_engine)
        self._close_retired()
        return changed

    def _close_retired(self) -> None:
        """Close engines nothing serves or judges with any more, where closing lets their replies in flight finish
        first (`closes_gracefully`); the configured engine is kept, for a rollback."""
        in_use = [self.configured, self.rt.engine if self.rt else None,
                  getattr(self.judge.current, "engine", None) if self.judge else None]
        still: list[Any] = []
        for engine in self.retired:
            if any(engine is e for e in in_use):
                if not any(engine is e for e in still):
                    still.append(engine)  # closed once it is no longer used
            elif getattr(engine, "closes_gracefully", False):
                engine.close()
        self.retired = still
