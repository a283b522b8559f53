"""The vLLM backend's parts that need no upstream: the piece table, the catalog's remote models, the settings,
a retried row's replay of what was already streamed, and the logprobs check."""

from __future__ import annotations

from typing import Any

import pytest

from voxtral_local.backends.base import Sampling
from voxtral_local.backends.vllm.backend import PIECES, RowState, VllmBackend
from voxtral_local.backends.vllm.exchanges import UpstreamFault
from voxtral_local.backends.vllm.pieces import PieceTable
from voxtral_local.backends.vllm.upstreams import UpstreamPool
from voxtral_local.config import Settings
from voxtral_local.errors import InvalidRequestError
from voxtral_local.models.catalog import VOXTRAL_MINI, ModelCatalog

# ---- pieces ------------------------------------------------------------------------------------------------


def test_piece_table() -> None:
    table = PieceTable()
    euro = "€".encode()
    ids = [table.intern(b"a"), table.intern(euro[:2]), table.intern(euro[2:]), table.intern(b"a")]
    assert ids == [0, 1, 2, 0] and len(table) == 3
    assert table.decode(ids) == "a€a"
    assert table.decode(ids[:2]) == "a\ufffd"  # a UTF-8 sequence cut short
    assert table.pieces([2, 0]) == [euro[2:], b"a"]
    with pytest.raises(KeyError):
        table.decode([3])
    with pytest.raises(KeyError):
        table.pieces([-1])


def test_the_piece_table_forgets_the_least_recently_interned_past_its_limit() -> None:
    table = PieceTable(limit=2)
    a, b = table.intern(b"a"), table.intern(b"b")
    assert table.intern(b"a") == a  # a is now the most recent
    c = table.intern(b"c")  # b goes
    assert len(table) == 2 and table.pieces([a, c]) == [b"a", b"c"]
    with pytest.raises(KeyError):
        table.pieces([b])
    assert table.intern(b"b") not in (a, b, c)  # a new id: an old one never means another piece


# ---- the catalog's remote models ---------------------------------------------------------------------------


def test_add_remote() -> None:
    catalog = ModelCatalog(Settings(_env_file=None, backend="vllm", vllm_urls="http://gpu1:8000", model="served"))
    assert catalog.default.remote and catalog.default.backend == "vllm"
    added = catalog.add_remote([VOXTRAL_MINI, "served", "whisper-1", VOXTRAL_MINI, ""])
    assert [m.id for m in added] == [VOXTRAL_MINI]
    assert added[0].remote and added[0].owned_by == "mistralai" and not added[0].is_local
    assert catalog.resolve("voxtral-mini").id == VOXTRAL_MINI
    assert catalog.add_remote([VOXTRAL_MINI]) == []
    assert list(catalog.models) == ["served", VOXTRAL_MINI]
    assert catalog.resolve("whisper-1").id == "served"  # an alias is never taken over by a remote model


def test_add_remote_keeps_a_configured_voxtral_mini_alias() -> None:
    settings = Settings(
        _env_file=None, backend="vllm", vllm_urls="http://gpu1:8000", model="a", model_aliases="voxtral-mini=a"
    )
    catalog = ModelCatalog(settings)
    catalog.add_remote([VOXTRAL_MINI])
    assert catalog.resolve("voxtral-mini").id == "a"


# ---- settings ----------------------------------------------------------------------------------------------


def test_vllm_settings() -> None:
    with pytest.raises(ValueError, match="VOXTRAL_VLLM_URLS"):
        Settings(_env_file=None, backend="vllm")
    for bad in ("gpu1:8000", "ftp://gpu1:8000", "http://127.0.0.1:99999", "http://h:0", "http://no such host:1"):
        with pytest.raises(ValueError, match="not an http"):
            Settings(_env_file=None, vllm_urls=bad)
    settings = Settings(_env_file=None, vllm_urls="http://a:8000, http://b:8000/v1/,http://a:8000/v1,https://c/v1")
    assert settings.vllm_url_list == ["http://a:8000/v1", "http://b:8000/v1", "https://c/v1"]


def test_a_directory_is_no_remote_model() -> None:
    with pytest.raises(ValueError, match="directory"):
        ModelCatalog(Settings(_env_file=None, backend="vllm", vllm_urls="http://a:8000", model="/models/x"))


# ---- a retried row's replay, and the logprobs check --------------------------------------------------------


def told_after(attempts: list[list[bytes]]) -> list[bytes]:
    """The pieces told to the services over these attempts of one row (each attempt from its start)."""
    state, told = RowState(0), []

    def on_token(index: int, token: int, logprob: float, top: Any) -> None:
        told.append(PIECES.pieces([token])[0])

    for attempt in attempts:
        state.ids, seen = [], b""
        for piece in attempt:
            state.ids.append(PIECES.intern(piece))
            state.logprobs.append(0.0)
            state.top.append(())
            before, seen = seen, seen + piece
            VllmBackend._tell(state, on_token, before, seen)
    return told


def test_a_retry_tells_only_what_the_first_attempt_did_not() -> None:
    # the first attempt told "Hello wo" and broke off; the retry says the same text in other pieces
    told = told_after([[b"Hello", b" wo"], [b"Hel", b"lo world", b"."]])
    assert b"".join(told) == b"Hello world."
    assert told[-2:] == [b"rld", b"."]  # the part of "lo world" past what was told, then the rest


def test_a_retry_that_says_otherwise_fails_the_row() -> None:
    with pytest.raises(UpstreamFault, match="differs"):
        told_after([[b"Hello", b" wo"], [b"Goodbye"]])


def test_logprobs_for_a_model_only_vllm_serves_are_refused_before_any_work() -> None:
    settings = Settings(_env_file=None, backend="vllm", vllm_urls="http://gpu1:8000,http://gpu2:8000", model="m")
    pool = UpstreamPool(settings)
    backend = VllmBackend("m", "m", pool, settings)
    for upstream in pool.upstreams:
        upstream.state, upstream.models, upstream.flavor = "up", frozenset({"m"}), "vllm"
    backend.check_transcription(Sampling())  # no logprobs asked: served
    with pytest.raises(InvalidRequestError, match="no logprobs") as caught:
        backend.check_transcription(Sampling(logprobs=True))
    assert caught.value.param == "include"
    pool.upstreams[1].flavor = "openai"  # this server's kind reports them: it may serve the request
    backend.check_transcription(Sampling(logprobs=True))
