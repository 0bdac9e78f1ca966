"""The llama.cpp engine's continuous batching, with the real embedded model: replies decode together, a seeded reply
is the same alone and among others, closing a stream takes it out of the queue or the batch (and frees its cells),
chat goes before background work, judging calls are sliced between chat steps, logprobs line up with the text, and
a conversation's next turn reuses its cached prefix. The sampler is tested without the model."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from thresher.engines import ChatParams, Chunk, EngineError

LONG = [{"role": "user", "content": "Write a very long story about a dragon and a baker who open a shop together."}]
PROMPTS = ["What is the capital of France?", "Write a short poem about autumn leaves.",
           "Explain how a refrigerator keeps food cold.", "List five tips for better sleep.",
           "Why is the sky blue?", "Describe a cat in three sentences.", "What is 12 times 7?",
           "Name three rivers in Europe."]


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def text_of(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


def first_text(stream) -> list[Chunk]:
    """Read a stream until its first piece of text (the request is then in a sequence, decoding)."""
    seen = []
    for chunk in stream:
        seen.append(chunk)
        if chunk.text:
            return seen
    raise AssertionError("the stream ended without text")


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def idle(engine) -> bool:
    s = engine.stats()
    return s["running"] == 0 and s["waiting"] == 0 and s["jobs"] == 0


# ----------------------------------------------------------------------------------------------- the sampler


def test_sampler_respects_min_p_top_p_and_seeds() -> None:
    from thresher.engines.scheduler import sample

    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    rng = np.random.default_rng(0)
    seen = {sample(logits, ChatParams(temperature=1.0, top_p=1.0, min_p=0.2), rng) for _ in range(300)}
    assert seen == {0, 1, 2}  # 0.05 < 0.2 x 0.5: never drawn
    seen = {sample(logits, ChatParams(temperature=1.0, top_p=0.6, min_p=0.0), rng) for _ in range(300)}
    assert seen == {0, 1}  # the smallest set reaching 60%
    assert sample(logits, ChatParams(temperature=0.0), rng) == 0
    draws = [[sample(logits, ChatParams(temperature=1.0, min_p=0.0), np.random.default_rng(7)) for _ in range(5)]
             for _ in range(2)]
    assert draws[0] == draws[1]  # the same seed, the same draws
    counts = np.bincount([sample(logits, ChatParams(temperature=1.0, top_p=1.0, min_p=0.0), rng)
                          for _ in range(4000)], minlength=4) / 4000
    assert np.allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.03)


def test_prompts_are_read_in_pieces_of_two_or_more() -> None:
    from thresher.engines.scheduler import piece_length

    for pending in range(2, 40):
        for budget in (1, 2, 3, 7, 128):
            n = piece_length(pending, budget)
            assert 2 <= n <= pending and pending - n != 1, (pending, budget, n)
    assert piece_length(300, 128) == 128 and piece_length(129, 128) == 127 and piece_length(1, 128) == 1


def test_logprob_entry_reports_the_model_distribution() -> None:
    from thresher.engines.scheduler import logprob_entry

    logits = np.log(np.array([0.1, 0.6, 0.3], dtype=np.float32))
    entry = logprob_entry(logits, 2, 2, lambda t: f"t{t}")
    assert entry.token == "t2" and entry.logprob == pytest.approx(np.log(0.3), abs=1e-6)
    assert [t for t, _ in entry.top] == ["t1", "t2"]
    assert entry.top[0][1] == pytest.approx(np.log(0.6), abs=1e-6)
    assert logprob_entry(logits, 0, 0, str).top == []


# ----------------------------------------------------------------------------------------------- with the model


@pytest.mark.slow
def test_replies_decode_together_and_seeded_ones_do_not_change(embedded_engine) -> None:
    engine = embedded_engine
    wait_for(lambda: idle(engine))
    params = ChatParams(max_tokens=40, temperature=0.8, seed=21)
    long_prompt = ask("Here is a story. " + "The baker met the dragon at dawn, and they talked. " * 25
                      + "Now tell me how the story ends.")
    assert engine.count_tokens(long_prompt) > 2 * 128  # read in several pieces while others decode
    alone = [text_of(list(engine.stream_chat(p, params))) for p in (ask(PROMPTS[0]), long_prompt)]
    steps = engine.stats()["steps"]
    # Submitted together with others ...
    streams = [engine.stream_chat(ask(p), ChatParams(max_tokens=40, temperature=0.8)) for p in PROMPTS[1:]]
    seeded = engine.stream_chat(ask(PROMPTS[0]), params)
    heads = [first_text(s) for s in [*streams, seeded]]
    rest = [list(s) for s in [*streams, seeded]]
    assert text_of(heads[-1] + rest[-1]) == alone[0]  # the same reply, whatever else was decoded with it
    tokens = sum(c.completion_tokens for r in rest for c in r if c.finish_reason)
    assert engine.stats()["steps"] - steps < tokens / 2  # one step served many replies
    # ... and arriving while others are being written: its prompt is read a piece at a time between their steps.
    streams = [engine.stream_chat(LONG, ChatParams(max_tokens=300)) for _ in range(3)]
    for s in streams:
        first_text(s)
    assert text_of(list(engine.stream_chat(long_prompt, params))) == alone[1]
    for s in streams:
        s.close()
    wait_for(lambda: idle(engine))


def test_a_hole_in_the_batch_is_filled_and_changes_no_reply(embedded_engine) -> None:
    """A reply that ends while those in the sequences above it go on leaves a hole, which a stand-in token fills
    (and a prompt read into the hole, a piece at a time, too): the pass stays whole, and seeded replies on
    either side come out as they do alone."""
    engine = embedded_engine
    wait_for(lambda: idle(engine))
    params = ChatParams(max_tokens=40, temperature=0.8, seed=5)
    later = ask("Here is a story. " + "The baker met the dragon at dawn, and they talked. " * 12 + "How does it end?")
    alone = [text_of(list(engine.stream_chat(p, params))) for p in (ask(PROMPTS[2]), later)]
    before = engine.stats()["stand_ins"]
    long = engine.stream_chat(LONG, ChatParams(max_tokens=300))  # sequence 0
    short = engine.stream_chat(ask(PROMPTS[1]), ChatParams(max_tokens=2))  # sequence 1: over at once
    seeded = engine.stream_chat(ask(PROMPTS[2]), params)  # sequence 2
    head = first_text(seeded)
    list(short)
    filler = engine.stream_chat(later, params)  # read into sequence 1 while 0 and 2 go on
    assert text_of(head + list(seeded)) == alone[0]
    assert text_of(list(filler)) == alone[1]
    assert engine.stats()["stand_ins"] > before
    long.close()
    wait_for(lambda: idle(engine))


@pytest.mark.slow
def test_closing_a_stream_frees_its_sequence_and_its_place_in_the_queue(embedded_engine) -> None:
    import llama_cpp

    engine = embedded_engine
    wait_for(lambda: idle(engine))
    running = [engine.stream_chat(LONG, ChatParams(max_tokens=400)) for _ in range(engine.n_parallel)]
    for s in running:
        first_text(s)
    queued = engine.stream_chat(LONG, ChatParams(max_tokens=400))
    told = next(c for c in queued if c.waiting is not None)
    assert told.waiting == 0 and not told.text  # next in line
    assert engine.stats()["waiting"] == 1
    queued.close()
    wait_for(lambda: engine.stats()["waiting"] == 0, 5)
    sched = engine._sched
    slot = next(i for i, r in enumerate(sched.slots) if r is not None)
    assert llama_cpp.llama_memory_seq_pos_max(sched.mem, slot) > 0
    victim = sched.slots[slot]
    stream = next(s for s in running if s._reply is victim)
    stream.close()
    wait_for(lambda: sched.slots[slot] is not victim, 5)  # left the batch at the next step ...
    assert llama_cpp.llama_memory_seq_pos_max(sched.mem, slot) == -1  # ... and its cells are free
    generated = victim.generated
    time.sleep(0.5)
    assert victim.generated == generated  # no further work for it
    for s in running:
        s.close()
    wait_for(lambda: idle(engine), 5)


@pytest.mark.slow
def test_chat_goes_before_background_work(embedded_engine) -> None:
    engine = embedded_engine
    wait_for(lambda: idle(engine))
    running = [engine.stream_chat(LONG, ChatParams(max_tokens=400)) for _ in range(engine.n_parallel)]
    for s in running:
        first_text(s)
    judging = engine.stream_chat(ask("Rate this answer from 1 to 10."), ChatParams(max_tokens=20, background=True))
    chat = engine.stream_chat(ask(PROMPTS[0]), ChatParams(max_tokens=20))
    assert next(c for c in chat if c.waiting is not None).waiting == 0
    assert any(c.waiting == 1 for c in judging)  # the chat, which came later, is ahead of it
    running.pop().close()
    first_text(chat)  # the freed sequence went to the chat
    assert any(r is judging._reply for r in engine._sched.waiting)
    running.pop().close()
    assert text_of(list(judging))  # and the next one to the background reply
    for s in [*running, chat]:
        s.close()
    wait_for(lambda: idle(engine), 5)


@pytest.mark.slow
def test_judging_calls_are_sliced_between_chat_steps(embedded_engine) -> None:
    engine = embedded_engine
    wait_for(lambda: idle(engine))
    long_prompt = ask(" ".join(["The baker kneaded the dough while the dragon watched the oven."] * 90))
    assert engine.count_tokens(long_prompt) > 1000
    done = threading.Event()
    result: dict = {}

    def judge() -> None:
        result["hidden"] = engine.last_hidden([long_prompt])
        result["probs"] = engine.next_token_probs(ask("Rate: 2+2=4"), [str(i) for i in range(1, 11)], "Rating: ")
        done.set()

    stream = engine.stream_chat(LONG, ChatParams(max_tokens=60, temperature=0.0))
    first_text(stream)
    threading.Thread(target=judge, daemon=True).start()
    gaps, last = [], time.monotonic()
    for chunk in stream:
        if chunk.text:
            gaps.append(time.monotonic() - last)
            last = time.monotonic()
    # Reading the whole prompt at once takes seconds; sliced, a chat waits at most for one slice.
    assert max(gaps) < 1.5, gaps
    assert done.wait(120)
    assert result["hidden"].shape == (1, 576) and np.isfinite(result["hidden"]).all()
    assert abs(sum(result["probs"].values()) - 1) < 1e-9


@pytest.mark.slow
def test_the_judges_state_is_the_one_read_whole_in_embedding_mode(embedded_engine) -> None:
    """`last_hidden` reads a prompt with embeddings off and switches them on for its last two tokens only (in
    embedding mode llama.cpp outputs, and so runs the output layer for, every token); the state it gives is the one
    read whole in embedding mode, which heads were trained on, for short and long prompts alike."""
    import llama_cpp

    engine = embedded_engine
    wait_for(lambda: idle(engine))

    def whole(tokens: list[int]):
        ctx, width = engine.llm._ctx.ctx, engine.llm.n_embd()
        yield
        llama_cpp.llama_set_embeddings(ctx, True)
        try:
            engine.llm.reset()
            engine.llm._ctx.kv_cache_clear()
            engine.llm.eval(tokens)
            return np.ctypeslib.as_array(llama_cpp.llama_get_embeddings_ith(ctx, -1), shape=(width,)).copy()
        finally:
            llama_cpp.llama_set_embeddings(ctx, False)
            engine.llm.reset()
            engine.llm._ctx.kv_cache_clear()

    convs = [[ask("Why is the sky blue?")[0], {"role": "assistant", "content": "Because air scatters blue light."}],
             ask("Hi"), ask(" ".join(["The baker kneaded the dough while the dragon watched."] * 60))]
    got = engine.last_hidden(convs)
    for conv, state in zip(convs, got, strict=True):
        np.testing.assert_allclose(state, engine._sched.call(whole(engine._prompt(conv, "")[0])), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_logprobs_line_up_with_the_text(embedded_engine) -> None:
    chunks = list(embedded_engine.stream_chat(ask(PROMPTS[5]), ChatParams(max_tokens=30, temperature=0.0,
                                                                             logprobs=3)))
    text = text_of(chunks)
    entries = [e for c in chunks for e in c.logprobs]
    assert "".join(e.token for e in entries) == text
    assert len(entries) == chunks[-1].completion_tokens
    for c in chunks:
        assert "".join(e.token for e in c.logprobs) == c.text
    for e in entries:  # greedy: the chosen token is the likeliest
        assert len(e.top) == 3 and e.top[0] == (e.token, pytest.approx(e.logprob))
        assert e.top[0][1] >= e.top[1][1] >= e.top[2][1] and e.logprob <= 0
    word = text.split()[2]
    stopped = list(embedded_engine.stream_chat(ask(PROMPTS[5]), ChatParams(max_tokens=30, temperature=0.0,
                                                                              logprobs=0, stop=[word])))
    shown = text_of(stopped)
    assert word not in shown and text.startswith(shown)
    tokens = "".join(e.token for c in stopped for e in c.logprobs)
    assert tokens.startswith(shown) and all(e.top == [] for c in stopped for e in c.logprobs)
    assert not any(c.logprobs for c in embedded_engine.stream_chat(ask(PROMPTS[5]), ChatParams(max_tokens=5)))


@pytest.mark.slow
def test_the_next_turn_reuses_the_cached_conversation(embedded_engine) -> None:
    engine = embedded_engine
    wait_for(lambda: idle(engine))
    first = ask("Tell me about owls.")
    reply = text_of(list(engine.stream_chat(first, ChatParams(max_tokens=30))))
    before = engine.stats()
    turn = [*first, {"role": "assistant", "content": reply}, {"role": "user", "content": "And about bats?"}]
    assert text_of(list(engine.stream_chat(turn, ChatParams(max_tokens=10))))
    after = engine.stats()
    assert after["cached_tokens"] - before["cached_tokens"] >= engine.count_tokens(first)


@pytest.mark.slow
def test_a_failing_job_is_reported_and_the_engine_goes_on(embedded_engine) -> None:
    def broken():
        yield
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        embedded_engine._sched.call(broken())
    with pytest.raises(EngineError, match="context holds"):
        embedded_engine.stream_chat(ask("word " * 3000), ChatParams())
    assert text_of(list(embedded_engine.stream_chat(ask(PROMPTS[0]), ChatParams(max_tokens=5))))


@pytest.mark.slow
def test_a_closed_engine_finishes_its_replies_then_lets_go_of_the_model() -> None:
    """What a server does when it switches models: the old engine is closed with a reply in flight, and then
    dropped. The reply finishes whole; nothing new is taken; the model is freed on the engine's own thread, after
    its last decode (freeing it under a running decode crashed the process)."""
    import gc
    import weakref

    from thresher.engines import embedded_model_path, load

    engine = load(f"llama.cpp:{embedded_model_path()}", n_ctx=512, n_parallel=2)
    stream = engine.stream_chat(LONG, ChatParams(max_tokens=40, temperature=0.0))
    seen = first_text(stream)
    sched, llm = engine._sched, weakref.ref(engine.llm)
    engine.close()
    with pytest.raises(EngineError, match="closed"):
        engine.stream_chat(ask("Hello"), ChatParams(max_tokens=4))
    del engine
    gc.collect()
    assert llm() is not None  # still decoding: the scheduler holds the model
    rest = list(stream)
    assert rest[-1].finish_reason == "length" and rest[-1].completion_tokens == 40
    assert len(text_of(seen + rest).split()) > 5
    wait_for(lambda: sched.owner is None, 10)
    del stream, rest, seen
    # freed once idle (the scheduler thread lets go as it ends: a loaded machine may see that a moment later)
    deadline = time.monotonic() + 10
    while llm() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    assert llm() is None, f"the model is still held by {[type(r).__name__ for r in gc.get_referrers(llm())]}"


def test_weights_that_do_not_batch_are_decoded_from_an_8_bit_copy_made_once(embedded_engine, tmp_path,
                                                                            monkeypatch, caplog) -> None:
    """The embedded model's Q4_1 weights batch poorly on a CPU: with several sequences, chat decodes from an 8-bit
    copy kept in the cache folder (made once, written whole); the judge's calls still read the file itself, so its
    hidden states are exactly those a head was trained on; one sequence decodes from the file. A copy that cannot
    be written is said once, and the file serves."""
    import llama_cpp

    from thresher.engines import embedded_model_path, load
    from thresher.engines.llamacpp import cache_dir

    copy = embedded_engine.batch_file
    assert copy is not None and copy.parent == cache_dir() / "gguf" and copy.is_file()
    assert copy.name.startswith(embedded_engine.version)
    made = copy.stat().st_mtime_ns
    again = load("embedded", n_ctx=512, n_parallel=2)
    assert again.batch_file == copy and copy.stat().st_mtime_ns == made  # not made again
    assert not list(copy.parent.glob(".making-*"))
    model = llama_cpp.llama_model_load_from_file(str(copy).encode(), llama_cpp.llama_model_default_params())
    try:  # the copy is an 8-bit file of the same model
        desc = llama_cpp.ctypes.create_string_buffer(128)
        llama_cpp.llama_model_desc(model, desc, 128)
        assert b"Q8_0" in desc.value
    finally:
        llama_cpp.llama_model_free(model)

    single = load("embedded", n_ctx=512, n_parallel=1)
    assert single.batch_file is None and single.version == embedded_engine.version
    conv = [ask("Why is the sky blue?")[0], {"role": "assistant", "content": "Because air scatters blue light."}]
    assert np.array_equal(embedded_engine.last_hidden([conv]), single.last_hidden([conv]))

    # The same model to within 8-bit rounding: the same first words greedily, the same likeliest tokens.
    params = ChatParams(max_tokens=6, temperature=0.0, logprobs=3)
    a = list(embedded_engine.stream_chat(ask("Name three rivers in Europe."), params))
    b = list(single.stream_chat(ask("Name three rivers in Europe."), params))
    first_a = [lp for c in a for lp in c.logprobs][:3]
    first_b = [lp for c in b for lp in c.logprobs][:3]
    assert [x.token for x in first_a] == [x.token for x in first_b]
    assert all(abs(x.logprob - y.logprob) < 0.1 for x, y in zip(first_a, first_b, strict=True))

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    (tmp_path / "file").write_text("not a folder")
    with caplog.at_level("WARNING", logger="thresher.engines"):
        plain = load(f"llama.cpp:{embedded_model_path()}", n_ctx=512, n_parallel=2)
    assert plain.batch_file is None
    assert "as it is" in caplog.text
    assert text_of(list(plain.stream_chat(ask("Hello"), ChatParams(max_tokens=4, temperature=0.0))))
    for e in (again, single, plain):
        e.close()
