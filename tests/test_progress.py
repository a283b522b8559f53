"""`ChunkProgress`: seconds of audio done as rows finish (at end-of-sequence or their cap), in any order."""

from __future__ import annotations

from voxtral_local.services.progress import ChunkProgress, fan_out

EOS = 2


def test_rows_count_as_done_at_eos_or_their_cap_and_the_total_comes_when_known() -> None:
    reports: list[tuple[float, float | None]] = []
    durations = [30.0, 30.0, 12.5]
    total: list[float | None] = [None]
    progress = ChunkProgress(lambda d, t: reports.append((d, t)),
                             eos_token_id=EOS, duration=lambda i: durations[i], total=lambda: total[0])  # fmt: skip
    progress.add_rows([5, 5])
    progress.on_token(1, 7, -0.1, ())
    progress.on_token(1, EOS, -0.1, ())  # row 1 ends first
    progress.on_token(1, 9, -0.1, ())  # nothing after a row's end counts
    progress.add_rows([3])  # the rest of the upload, decoded meanwhile
    total[0] = 72.5
    for token in (7, 8, 9):  # row 2 reaches its cap of 3
        progress.on_token(2, token, -0.1, ())
    progress.on_token(0, EOS, -0.1, ())
    assert reports == [(30.0, None), (42.5, 72.5), (72.5, 72.5)]
    progress.finish()  # already reported complete: nothing more
    assert len(reports) == 3


def test_finish_reports_the_whole_upload_when_rows_ended_without_a_last_token() -> None:
    reports: list[tuple[float, float | None]] = []
    progress = ChunkProgress(lambda d, t: reports.append((d, t)), eos_token_id=EOS, duration=lambda i: 30.0,
                             total=lambda: 45.0)  # fmt: skip
    progress.add_rows([10, 10])
    progress.on_token(0, EOS, 0.0, ())
    progress.finish()
    assert reports == [(30.0, 45.0), (45.0, 45.0)]


def test_fan_out_calls_each_callback() -> None:
    seen: list[str] = []
    assert fan_out(None, None) is None
    one = fan_out(lambda *a: seen.append("a"), None)
    both = fan_out(lambda *a: seen.append("a"), lambda *a: seen.append("b"))
    assert one is not None and both is not None
    one(0, 1, 0.0, ())
    both(0, 1, 0.0, ())
    assert seen == ["a", "a", "b"]
