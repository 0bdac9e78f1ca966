"""One deployment: what a set of settings opens, made once and shared.

The store (migrated), the dataset clone, engines by spec and the judge are each made on first use, with the
settings' context size, threads and parallelism, and closed together. The CLI's commands, `thresher worker` and a
training round take them from here rather than opening each by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import Any

from thresher.config import Settings
from thresher.dataset_repo import DatasetRepo
from thresher.store import Store


class Deployment:
    """`store` and `engine`, when given (the server's tests hand in their own), are used as they are and left open
    by `close`."""

    def __init__(self, settings: Settings, *, store: Store | None = None, engine: Any = None) -> None:
        self.settings = settings
        self._engines: dict[tuple[str, int | None], Any] = {}
        if engine is not None:
            self._engines[(settings.model, None)] = engine
        self._given_store = store

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @cached_property
    def store(self) -> Store:
        """The conversation store, its schema brought up to date."""
        store = self._given_store or Store(self.settings.db_url)
        store.migrate()
        return store

    def dataset(self, open: bool = True) -> DatasetRepo:
        """The dataset clone (`dataset_path`, pushing to `dataset_remote`); `open`: made and set up if it is not
        yet (a GitError says why it cannot be)."""
        repo = DatasetRepo(self.settings.dataset_path, self.settings.dataset_remote)
        return repo.open(self.settings.licence) if open else repo

    def engine(self, spec: str | None = None, *, n_parallel: int | None = None) -> Any:
        """An engine for `spec` (default: the `model` setting), loaded once per spec and parallelism."""
        from thresher.engines import load

        s = self.settings
        key = (spec or s.model, n_parallel)
        if key not in self._engines:
            self._engines[key] = load(key[0], n_ctx=s.n_ctx, n_threads=s.n_threads,
                                      n_parallel=s.n_parallel if n_parallel is None else n_parallel)
        return self._engines[key]

    def judge(self, serving: Any = None) -> Any:
        """The judge the `judge` setting asks for (None when it is "off"), judging with `serving` where it says
        "serving"; it can be switched while loops hold it (`SwitchableJudge`)."""
        from thresher.follow import judge_from_settings

        return judge_from_settings(self.settings, serving)

    def judge_as(self, spec: str | None = None, *, threshold: float | None = None, rationale: str | None = None
                 ) -> Any:
        """The judge `spec` names (a judge directory, an engine spec, rating:SPEC, or "serving"; by default the
        `judge` setting, or the model when that is "off"), at `threshold` and with `rationale` unless the settings'
        are to be used: what `thresher judge` and `judge-eval` judge with. "serving" reads the model's engine with
        one decoding sequence (it only judges)."""
        from thresher.judge import make_judge

        s = self.settings
        spec = spec or (s.model if s.judge == "off" else s.judge)
        serving = self.engine(n_parallel=1) if spec in ("serving", "rating:serving") else None
        return make_judge(spec, serving, threshold=s.judge_threshold if threshold is None else threshold,
                          rationale=rationale or s.judge_rationale, n_ctx=s.n_ctx, n_threads=s.n_threads)

    def worker(self, judge: Any, *, follow: bool | None = None, rounds: bool = True, serving: Any = None) -> Any:
        """The flywheel's loop over this deployment: `judge` judges, the registry is followed when `follow` (by
        default the `follow_registry` setting), switching `serving`'s chat model too when given (the server's
        runtime), and training rounds are started when `rounds`."""
        import os

        from thresher.flywheel import RoundRunner, Worker
        from thresher.follow import ModelFollower

        s = self.settings
        follower = ModelFollower(s, judge, serving) if (s.follow_registry if follow is None else follow) else None
        runner = RoundRunner(s.data_dir, s.round_min_new_approved, env={**os.environ, **s.as_env()}) if rounds \
            else None
        return Worker(s, self.store, judge, follower=follower, repo=self.dataset(open=False), rounds=runner)

    def run_worker(self, *, once: bool = False, say: Callable[[str], None] = print) -> None:
        """`thresher worker`: the loop without the web server, every stage once or until Ctrl-C. Where the judge is
        "serving" it judges on the model's own engine with one decoding sequence (it only judges)."""
        import threading

        from thresher.follow import FOLLOW_SECONDS

        worker = self.worker(self.judge(self.engine(n_parallel=1) if self.settings.judge == "serving" else None))
        try:
            if once:
                worker.once(say=say)
            else:
                worker.run(threading.Event(), say=say, follow_seconds=FOLLOW_SECONDS)
        except KeyboardInterrupt:
            say("stopped")

    def close(self) -> None:
        if "store" in self.__dict__:
            if self.store is not self._given_store:
                self.store.close()
            del self.__dict__["store"]
