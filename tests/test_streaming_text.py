"""Ordered text deltas from per-step tokens, decoded with the real Tekken tokenizer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from voxtral_local.services.streaming import OrderedText, TextDelta

EOS = 2


@pytest.fixture(scope="module")
def tekken(tiny_model_dir: Path) -> tuple[Callable[[str], list[int]], Callable[[list[int]], str]]:
    from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    tokenizer = Tekkenizer.from_file(tiny_model_dir / "tekken.json")

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, bos=False, eos=False))

    def decode(ids: list[int]) -> str:
        return str(tokenizer.decode(ids, special_token_policy=SpecialTokenPolicy.IGNORE))

    return encode, decode


def logprob_of(index: int, token: int) -> float:
    """A made-up logprob that tells rows and tokens apart."""
    return -index - (token % 97) / 100


def step(assembler: OrderedText, tokens: list[int]) -> list[TextDelta]:
    """One decoding step of a batch: row i chose tokens[i]; the deltas it gave."""
    return [d for index, token in enumerate(tokens) for d in assembler.push(index, token, logprob_of(index, token))]


def run_steps(assembler: OrderedText, rows: list[list[int]]) -> list[list[TextDelta]]:
    """Feed the rows step by step (EOS after each, pad after that); the deltas after each step."""
    padded = [[*row, EOS] for row in rows]
    steps = max(len(row) for row in padded)
    out = []
    for i in range(steps):
        out.append(step(assembler, [row[i] if i < len(row) else 11 for row in padded]))
    return out


def test_one_row_streams_token_by_token_and_joins_to_the_text(tekken) -> None:
    encode, decode = tekken
    tokens = encode(" Hello world, this is Voxtral speaking. ")
    assembler = OrderedText(decode, eos_token_id=EOS, caps=[100])
    per_step = run_steps(assembler, [tokens])
    deltas = [d for step in per_step for d in step] + assembler.finish([decode(tokens).strip()])
    assert len(deltas) > 5
    assert "".join(deltas) == "Hello world, this is Voxtral speaking."


def test_later_rows_wait_for_earlier_ones_then_follow_in_order(tekken) -> None:
    encode, decode = tekken
    first, second, third = encode("First chunk is long and keeps going on."), encode("Second."), encode("Third one.")
    assembler = OrderedText(decode, eos_token_id=EOS, caps=[100, 100, 100])
    per_step = run_steps(assembler, [first, second, third])
    # while row 0 runs, nothing from rows 1 and 2 appears
    early = "".join(d for step in per_step[: len(second)] for d in step)
    assert early and "First chunk".startswith(early.strip()[:11]) and "Second" not in early
    # the step on which row 0 ends flushes everything rows 1 and 2 already produced
    finished_at = len(first)
    assert "Second. Third one." in "".join(per_step[finished_at])
    assert assembler.text == "First chunk is long and keeps going on. Second. Third one."
    assert assembler.finish(["First chunk is long and keeps going on.", "Second.", "Third one."]) == []


def test_each_token_comes_with_the_first_delta_that_shows_it(tekken) -> None:
    encode, decode = tekken
    rows = [encode("First chunk is long and keeps going on."), encode("Second."), encode("Third one.")]
    assembler = OrderedText(decode, eos_token_id=EOS, caps=[100, 100, 100])
    deltas = [d for step in run_steps(assembler, rows) for d in step]
    deltas += assembler.finish([decode(row).strip() for row in rows])
    assert [t for d in deltas for t in d.token_ids] == rows[0] + rows[1] + rows[2]  # each once, in order
    expected = [logprob_of(i, t) for i, row in enumerate(rows) for t in row]
    assert [lp for d in deltas for lp in d.logprobs] == expected
    live = deltas[: next(i for i, d in enumerate(deltas) if "Second" in d)]
    assert len(live) > 3 and all(decode(list(d.token_ids)).strip() == d.strip() for d in live)


def test_empty_rows_add_no_separator(tekken) -> None:
    encode, decode = tekken
    assembler = OrderedText(decode, eos_token_id=EOS, caps=[100, 100, 100])
    run_steps(assembler, [encode("One."), [], encode("Three.")])
    assert assembler.text == "One. Three."


def test_rows_that_hit_their_cap_are_done_without_eos(tekken) -> None:
    encode, decode = tekken
    tokens = encode("A row that would go on and on and on.")
    assembler = OrderedText(decode, eos_token_id=EOS, caps=[4, 100])
    for i in range(4):
        step(assembler, [tokens[i], encode(" Next")[0] if i == 0 else 11])
    assert assembler.current == 1  # row 0 reached its cap of 4 tokens
    assert assembler.text == decode(tokens[:4]).strip() + " " + decode(encode(" Next")[:1]).strip()


def test_stop_strings_never_leak_into_deltas(tekken) -> None:
    encode, decode = tekken
    tokens = encode("Keep this part. STOP and not this.")
    assembler = OrderedText(decode, eos_token_id=EOS, caps=[100], stop=("STOP",))
    streamed = ""
    for token in tokens:
        streamed += "".join(assembler.push(0, token, -0.5))
        if "STOP" in decode(tokens[: tokens.index(token) + 1]):
            break
    assert "S" not in streamed.replace("Keep this part.", "")
    streamed += "".join(assembler.finish(["Keep this part."]))
    assert streamed == "Keep this part."


def test_incomplete_utf8_is_held_until_the_character_is_whole(tekken) -> None:
    encode, decode = tekken
    tokens = encode("café 🎉 done")
    assembler = OrderedText(decode, eos_token_id=EOS, caps=[100])
    deltas = [d for step in run_steps(assembler, [tokens]) for d in step]
    assert "\ufffd" not in "".join(deltas)
    assert "".join(deltas) == "café 🎉 done"
