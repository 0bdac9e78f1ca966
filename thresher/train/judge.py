"""Train to train: fit the judge's head on real good conversations, their spoiled copies and reviewers' verdicts.

Rows come from (a) real good conversations (thresher.train.sources: shipped Q/A sets and approved conversations),
each kept as a good row and spoiled in known ways (thresher.train.contrast), and (b) reviewers' verdicts and
corrections. Whole topics are held out: their rows are spoiled with wordings training never used, scored by the
trained head, and give its AUC per failure family, the acceptance threshold (the lowest that lets at most one bad
row in ten through there) and, when an earlier head is given, the same figures for it on the same rows.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from thresher.conversation import Record
from thresher.evaluate import auc
from thresher.judge import BLOCKING, detect_injection
from thresher.reward import Features, Head, fit_head
from thresher.train.contrast import DEGRADATIONS, FAMILY_OF, Source, contrast_rows
from thresher.train.data import JudgeRow

log = logging.getLogger("thresher.train")

# Rows whose hidden states are read: about 0.45 s each on 2 cores, so the defaults stay under 30 minutes.
JUDGE_TRAIN_ROWS = 2400
JUDGE_HELDOUT_ROWS = 900


class JudgeTrainError(RuntimeError):
    """Too little data to train and measure a judge."""


def sources_from_build(path: Path) -> list[Source]:
    """Approved conversations from `thresher dataset build` output, as good conversations to spoil."""
    out = []
    for line in (path / "data.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = Record.from_json(json.loads(line))
            if any(m["role"] == "assistant" for m in rec.messages) and any(m["role"] == "user" for m in rec.messages):
                out.append(Source(rec.id, rec.messages, "approved"))
    return out


def split_topics(sources: Sequence[Source], share: float, seed: int) -> tuple[list[Source], list[Source]]:
    """Training and held-out sources; whole topics go to one side (sources without a topic are split one by one)."""
    topics = sorted({s.topic or f"#{s.id}" for s in sources})
    random.Random(seed).shuffle(topics)
    held: set[str] = set()
    target, count = share * len(sources), 0
    sizes: dict[str, int] = {}
    for s in sources:
        sizes[s.topic or f"#{s.id}"] = sizes.get(s.topic or f"#{s.id}", 0) + 1
    for t in topics:
        if count >= target:
            break
        if count + sizes[t] <= target * 1.5 or not held:
            held.add(t)
            count += sizes[t]
    train = [s for s in sources if (s.topic or f"#{s.id}") not in held]
    test = [s for s in sources if (s.topic or f"#{s.id}") in held]
    return train, test


def per_family(scores: Sequence[float], labels: Sequence[str], kinds: Sequence[str]) -> dict[str, float | None]:
    """AUC of good rows against all bad rows, each spoiling kind and each family (`family:NAME`)."""
    rows = [(s, lab, k) for s, lab, k in zip(scores, labels, kinds, strict=True) if s is not None and s == s]
    good = [s for s, lab, _ in rows if lab == "good"]
    out: dict[str, float | None] = {"all": auc(good, [s for s, lab, _ in rows if lab == "bad"])}
    present = {k for _, lab, k in rows if lab == "bad"}
    for k in [k for k in DEGRADATIONS if k in present] + sorted(present - set(DEGRADATIONS)):
        out[k] = auc(good, [s for s, lab, kind in rows if lab == "bad" and kind == k])
    for fam in sorted({FAMILY_OF[k] for k in present if k in FAMILY_OF}):
        members = {k for k, f in FAMILY_OF.items() if f == fam}
        out[f"family:{fam}"] = auc(good, [s for s, lab, k in rows if lab == "bad" and k in members])
    return out


MAX_BAD_ACCEPTED = 0.1  # the threshold lets at most this share of held-out bad rows through


def choose_threshold(scores: Sequence[float], labels: Sequence[str], max_bad: float = MAX_BAD_ACCEPTED
                     ) -> tuple[float, float, float]:
    """The lowest threshold (on the 1-10 scale) that accepts at most `max_bad` of the bad rows: publishing wants
    few bad conversations more than every good one. Returns it, and the shares of good and bad rows it accepts.
    It sits halfway between neighbouring scores, so no row lies on it."""
    good = sorted(s for s, lab in zip(scores, labels, strict=True) if lab == "good")
    bad = sorted(s for s, lab in zip(scores, labels, strict=True) if lab != "good")
    if not good or not bad:
        return 7.0, 0.0, 0.0
    allowed = int(max_bad * len(bad))  # bad rows that may score at or above the threshold
    k = len(bad) - allowed  # the threshold must sit above the k-th lowest bad score
    threshold = bad[k - 1] + 1e-3 if k == len(bad) else (bad[k - 1] + bad[k]) / 2 if k > 0 else bad[0]
    threshold = max(1.0, min(10.0, threshold))
    accept = lambda xs: sum(x >= threshold for x in xs) / len(xs)  # noqa: E731
    return round(float(threshold), 3), round(accept(good), 4), round(accept(bad), 4)


@dataclass
class JudgeTraining:
    head: Head
    rows_train: int
    rows_heldout: int
    from_verdicts: int
    auc_after: dict[str, float | None]
    auc_before: dict[str, float | None] | None
    threshold: float
    accept_good: float  # shares of held-out good and bad rows the threshold accepts
    accept_bad: float
    seconds: float
    sources: dict[str, int] = field(default_factory=dict)

    def lines(self, out: Path) -> list[str]:
        """`thresher train judge`'s report: AUC overall, by family and kind (beside the earlier judge's), the
        threshold and what it accepts, and where the judge went."""
        def fmt(x: float | None) -> str:
            return "-" if x is None else f"{x:.3f}"

        after, before = self.auc_after, self.auc_before or {}
        return [
            f"held-out rows: {self.rows_heldout} (trained on {self.rows_train}), in {self.seconds:.0f} s",
            f"AUC: {fmt(after['all'])}" + (f" (the shipped judge: {fmt(before.get('all'))})" if before else ""),
            "AUC by failure family: " + ", ".join(f"{k.removeprefix('family:')} {fmt(v)}" for k, v in after.items()
                                                  if k.startswith("family:")),
            "AUC by kind: " + ", ".join(f"{k} {fmt(v)}" for k, v in after.items()
                                        if k != "all" and not k.startswith("family:")),
            f"threshold chosen on held-out rows: {self.threshold:g}: it accepts {self.accept_good:.0%} of the good "
            f"rows and {self.accept_bad:.0%} of the bad ones",
            f"judge: {out / 'judge.json'}; report: {out / 'judge_eval.json'}; plot: {out / 'heldout_scores.png'}",
            f"use it: thresher judge FILE --judge {out}   or   judge = \"{out}\" in thresher.toml",
        ]

    def to_json(self) -> dict[str, Any]:
        return {"head": self.head.id, "rows_train": self.rows_train, "rows_heldout": self.rows_heldout,
                "from_verdicts": self.from_verdicts, "auc_after": self.auc_after, "auc_before": self.auc_before,
                "threshold": self.threshold, "accept_good": self.accept_good, "accept_bad": self.accept_bad,
                "seconds": round(self.seconds, 1), "sources": self.sources}


def _features(engine: Any, rows: Sequence[JudgeRow], encoder: bool, desc: str, cache: Any = None) -> Features:
    from tqdm import tqdm

    from thresher.reward import features

    with tqdm(total=len(rows), desc=desc, unit="conv", mininterval=5) as bar:
        return features([r.messages for r in rows], engine, encoder=encoder, progress=bar.update, cache=cache)


def train_head_judge(engine: Any, engine_spec: str, out: Path, sources: Sequence[Source],
                     verdict_rows: Sequence[JudgeRow] = (), *, heldout: float = 0.2, seed: int = 0,
                     per_good: int = 2, max_train: int | None = JUDGE_TRAIN_ROWS,
                     max_heldout: int | None = JUDGE_HELDOUT_ROWS,
                     encoder: bool = True, hidden: bool = True, before: Head | None = None,
                     before_engine: Any = None, say: Callable[[str], None] = log.info) -> JudgeTraining:
    """Build rows, read their features, fit the head, measure it on held-out topics, and save it in `out`;
    `before`, the judge it would replace, is measured on the same rows, over `before_engine`'s states where it
    reads another model than `engine` (a head stays on the model it was trained for)."""
    t0 = time.perf_counter()
    if len(sources) < 4:
        raise JudgeTrainError(f"too few good conversations to train a judge ({len(sources)}; at least 4)")
    train_src, test_src = split_topics(sources, heldout, seed)
    if len(train_src) < 2 or len(test_src) < 2:
        raise JudgeTrainError(f"too few topics to hold some out ({len(sources)} sources)")
    train_rows = contrast_rows(train_src, seed, per_good=per_good)
    test_rows = contrast_rows(test_src, seed + 1, per_good=per_good, heldout=True)
    rng = random.Random(seed)
    held_ids = {s.id for s in test_src}
    for r in verdict_rows:  # a reviewer's verdict is a real label: a fifth of them measure, the rest teach
        (test_rows if (r.source in held_ids or rng.random() < heldout) else train_rows).append(r)
    if max_train and len(train_rows) > max_train:
        train_rows = rng.sample(train_rows, max_train)
    if max_heldout and len(test_rows) > max_heldout:
        test_rows = rng.sample(test_rows, max_heldout)
    labels = {r.label for r in train_rows}
    if labels != {"good", "bad"} or {r.label for r in test_rows} != {"good", "bad"}:
        raise JudgeTrainError("the rows need good and bad conversations on both sides of the split")
    say(f"judge rows: {len(train_rows)} to train on, {len(test_rows)} held out (topics and wordings never trained "
        f"on); {len(verdict_rows)} from reviewers")
    use = {"encoder": encoder, "hidden": hidden}
    model = engine if hidden else None
    from thresher.reward import HiddenCache

    cache = HiddenCache(out / "hidden_cache.npz") if model is not None else None
    f_train = _features(model, train_rows, encoder, "reading training rows", cache)
    f_test = _features(model, test_rows, encoder, "reading held-out rows", cache)
    labels_train = [r.label for r in train_rows]
    version = getattr(engine, "version", "none")
    head = fit_head(f_train, labels_train, use, version, engine_spec, seed=seed)
    flagged = [bool(BLOCKING.intersection(detect_injection(r.messages))) for r in test_rows]
    # as the judge scores them: text aimed at the evaluator goes to the bottom
    scores = [1.0 if f else Head.score(x) for x, f in zip(head.logits(f_test), flagged, strict=True)]
    labels_test, kinds_test = [r.label for r in test_rows], [r.degradation for r in test_rows]
    after = per_family(scores, labels_test, kinds_test)
    people = [i for i, r in enumerate(test_rows) if r.origin in ("reviewer", "correction")]

    def agreement(sc: Sequence[float]) -> float | None:  # with reviewers' own verdicts, on rows held out
        return auc([sc[i] for i in people if test_rows[i].label == "good"],
                   [sc[i] for i in people if test_rows[i].label == "bad"])

    after["reviewers"] = agreement(scores)
    threshold, accept_good, accept_bad = choose_threshold(scores, [r.label for r in test_rows])
    head.threshold = threshold
    auc_before = None
    if before is not None:
        try:
            if before_engine is None and before.use.get("hidden") and before.engine_version != version:
                from thresher.judge import head_engine  # the states it reads: never another model's

                before_engine = head_engine(before, engine)
            f_before = f_test
            if before_engine is not None and before.use.get("hidden"):  # its own model's states; the rest as read
                from tqdm import tqdm

                from thresher.reward import hidden_states

                with tqdm(total=len(test_rows), desc="reading them for the earlier judge", unit="conv",
                          mininterval=5) as bar:
                    hid, cut = hidden_states([r.messages for r in test_rows], before_engine, progress=bar.update)
                f_before = replace(f_test, hidden=hid, cut=cut)
            if encoder and before.prototypes is not None and before.prototypes != head.prototypes:
                from thresher.reward import encoder_features  # the earlier head reads closeness to its own wordings

                f_before = replace(f_test, encoder=encoder_features([r.messages for r in test_rows],
                                                                    before.prototypes))
            before_scores = [1.0 if f else Head.score(x) for x, f in zip(before.logits(f_before), flagged,
                                                                          strict=True)]
            auc_before = per_family(before_scores, labels_test, kinds_test)
            auc_before["reviewers"] = agreement(before_scores)
        except Exception as e:  # an earlier head over other features: say so, measure nothing false
            say(f"the earlier judge could not be measured on these rows: {e}")
    counts: dict[str, int] = {}
    for s in sources:
        key = s.id.split("-")[0]
        counts[key] = counts.get(key, 0) + 1
    report = JudgeTraining(head, len(train_rows), len(test_rows), len(verdict_rows), after, auc_before, threshold,
                           accept_good, accept_bad, time.perf_counter() - t0, counts)
    head.info = {"trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **report.to_json()}
    head.info.pop("head", None)
    head.info["heldout_topics"] = sorted({s.topic for s in test_src if s.topic})
    out.mkdir(parents=True, exist_ok=True)
    head.save(out)
    (out / "judge_eval.json").write_text(json.dumps(report.to_json(), indent=2))
    _plot(scores, test_rows, threshold, out / "heldout_scores.png")
    return report


def _plot(scores: Sequence[float], rows: Sequence[JudgeRow], threshold: float, path: Path) -> None:
    """Held-out scores, good against each family, with the threshold."""
    from thresher.plots import figure

    fams = sorted({FAMILY_OF.get(r.degradation, r.degradation) for r in rows if r.label == "bad"})
    groups = [("good", [s for s, r in zip(scores, rows, strict=True) if r.label == "good"])] + [
        (f, [s for s, r in zip(scores, rows, strict=True) if r.label == "bad" and
             FAMILY_OF.get(r.degradation, r.degradation) == f]) for f in fams]
    with figure(path, size=(8, 0.45 * len(groups) + 1.2), dpi=90) as ax:
        ax.boxplot([g[1] for g in groups], orientation="horizontal",
                   tick_labels=[f"{g[0]} ({len(g[1])})" for g in groups])
        ax.axvline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:.2f}")
        ax.set_xlim(1, 10)
        ax.set_xlabel("score (1-10)")
        ax.set_title("Held-out rows: scores of good conversations and of each failure family")
        ax.legend(loc="lower right")


def default_layers(spec: str) -> int:
    """The blocks a new head reads: a third of a GGUF model's (measured on SmolLM2-135M, 10 of 30: the same
    held-out AUC as all 30, 0.869 against 0.870, for a third of the forward pass), or all of any other's (0)."""
    from thresher.engines import EngineError
    from thresher.engines.layers import block_count, gguf_file

    try:
        return max(1, round(block_count(gguf_file(spec)) / 3))
    except EngineError:
        return 0


def train_judge(settings: Any, out: Path, *, base: str | None = None, sources: Sequence[str] = (),
                builds: Sequence[Path] = (), verdicts: bool = True, hidden: bool = True, encoder: bool = True,
                layers: int | None = None, seed: int = 0, max_train: int | None = JUDGE_TRAIN_ROWS,
                max_heldout: int | None = JUDGE_HELDOUT_ROWS,
                say: Callable[[str], None] = log.info) -> JudgeTraining:
    """What `thresher train judge` does: the good conversations (shipped `sources`, by name or file, and approved
    ones from dataset `builds`), reviewers' verdicts from the dataset clone, the model whose hidden states the head
    reads (`base`, else the configured model) after its first `layers` blocks (None: a third of a GGUF model's, all
    of any other's; 0: all), and the shipped head for that model to compare with; then
    `train_head_judge`. Raises SourceError (a source that cannot be read), EngineError (a model that cannot be
    loaded) or JudgeTrainError."""
    from thresher.dataset_repo import DatasetRepo
    from thresher.engines import embedded_model_path
    from thresher.engines import load as load_engine
    from thresher.judge import shipped_head
    from thresher.train import sources as shipped
    from thresher.train.data import reviewer_rows

    spec = base or settings.model
    if spec.endswith(".gguf") and not spec.startswith("llama.cpp:"):
        spec = f"llama.cpp:{spec}"
    if spec == f"llama.cpp:{embedded_model_path()}":
        spec = "embedded"  # the name a head for the embedded model is found by
    names = list(sources) or list(shipped.DEFAULT)
    good = shipped.load(names)
    for build in builds:
        good += sources_from_build(Path(build))
    rows = (reviewer_rows(DatasetRepo(settings.dataset_path), min_approvals=settings.quorum_approvals)
            if verdicts else [])
    engine = before = None
    if hidden:
        if layers is None:
            layers = default_layers(spec)
        say(f"loading {spec}" + (f" (read after its first {layers} layers)" if layers else "") + " …")
        model = load_engine(spec, n_ctx=settings.n_ctx, n_threads=settings.n_threads, n_parallel=1)
        if not hasattr(model, "last_hidden"):
            raise JudgeTrainError("this engine gives no hidden states; use a GGUF file, or --no-hidden")
        if layers and not hasattr(model, "first_layers"):
            raise JudgeTrainError(f"only a GGUF model can be read at a middle layer, not {spec}: use --layers 0")
        engine = model.first_layers(layers) if layers else model  # on the model's own thread: one for llama.cpp
        before = shipped_head(model.version)  # to compare with, over the layers it reads (train_head_judge)
    say(f"{len(good)} good conversations from {', '.join(names)}" + (f" and {len(builds)} build(s)" if builds else "")
        + f"; {len(rows)} rows from reviewers' verdicts and corrections")
    return train_head_judge(engine, spec, out, good, rows, seed=seed, max_train=max_train, max_heldout=max_heldout,
                            encoder=encoder, hidden=hidden, before=before, say=say)
