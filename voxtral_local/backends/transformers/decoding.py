"""One batch of rows decoding together, one step at a time; rows join (prefill + merge) and leave.

All rows share one KV cache of length L. Rows are left-padded to L (masked), and each row carries its own
position ids, so a row joining with a shorter prompt, or rows leaving, never changes what the others see.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..base import Alternatives, Sampling
from .kv_cache import RoomyLayer, handed_over, roomy_cache

# On a CPU the audio encoder runs ~15 % faster per 30 s window two windows at a time than eight (its
# activations stay in cache); an accelerator takes every window of a prefill at once.
CPU_ENCODER_GROUP = 2


@dataclass
class Choice:
    """What one step chose for each row."""

    tensor: torch.Tensor  # the chosen tokens, on the model's device
    tokens: list[int]
    logprobs: list[float]  # of the chosen tokens, under the model's (unwarped) distribution
    eos_probs: list[float]  # P(end of sequence) at this step
    top: list[Alternatives]  # each row's `sampling.top_logprobs` most likely tokens (none if it asked none)


class DecodeBatch:
    """KV cache, attention mask, next position id and the token to feed next, for each row."""

    def __init__(self, cache: Any, mask: torch.Tensor, positions: torch.Tensor) -> None:
        self.cache = cache
        self.mask = mask  # (rows, L), 1 where a row has a real token
        self.positions = positions  # (rows,), position id of each row's next token
        self.last = torch.zeros_like(positions)  # (rows,), the token each row feeds at the next step

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])

    @classmethod
    def prefill(cls, model: Any, inputs: dict[str, torch.Tensor]) -> tuple[DecodeBatch, torch.Tensor]:
        """Run the prompts (audio encoder included); returns the batch and each row's next-token logits."""
        mask = inputs["attention_mask"].long()
        positions = mask.cumsum(-1) - 1
        positions.masked_fill_(mask == 0, 1)  # as transformers' generate() does for left padding
        features = inputs.get("input_features")
        audio: dict[str, torch.Tensor] = {}
        if features is not None and features.device.type == "cpu" and features.shape[0] > CPU_ENCODER_GROUP:
            audio["inputs_embeds"] = _embed_with_audio(model, inputs["input_ids"], features, CPU_ENCODER_GROUP)
        elif features is not None:
            audio["input_features"] = features
        out = model(
            input_ids=inputs["input_ids"],
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **audio,
        )
        return cls(out.past_key_values, mask, positions[:, -1] + 1), out.logits[:, -1].float()

    def step(self, model: Any) -> torch.Tensor:
        """Feed each row its last chosen token; returns next-token logits (rows, vocab) in float32."""
        mask = torch.cat([self.mask, self.mask.new_ones(self.size, 1)], dim=1)
        out = model(
            input_ids=self.last[:, None],
            attention_mask=mask,
            position_ids=self.positions[:, None],
            past_key_values=self.cache,
            use_cache=True,
        )
        self.cache, self.mask = out.past_key_values, mask
        self.positions = self.positions + 1
        return out.logits[:, -1].float()

    def reserve(self, room: int) -> None:
        """Make room for `room` more steps in the cache, so that steps write in place (see `kv_cache`)."""
        layers = self.cache.layers
        if all(isinstance(layer, RoomyLayer) for layer in layers):
            for layer in layers:
                layer.reserve(room)
        else:
            self.cache = roomy_cache((((layer.keys,), (layer.values,)) for layer in handed_over(self.cache)), room)

    def merge(self, other: DecodeBatch, room: int = 0) -> None:
        """Append `other`'s rows (after this batch's), left-padding whichever cache is shorter."""
        length = max(self.length, other.length)
        self.cache = roomy_cache(
            (
                ((mine.keys, theirs.keys), (mine.values, theirs.values))
                for mine, theirs in zip(handed_over(self.cache), handed_over(other.cache), strict=True)
            ),
            room,
        )
        self.mask = torch.cat([_left_pad(self.mask, length), _left_pad(other.mask, length)])
        self.positions = torch.cat([self.positions, other.positions])
        self.last = torch.cat([self.last, other.last])

    def keep(self, rows: Sequence[int], room: int = 0) -> None:
        """Keep only these rows (finished rows leave), and drop padding columns no row needs any more."""
        index = torch.tensor(list(rows), device=self.mask.device, dtype=torch.long)
        mask = self.mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else mask.shape[1]
        self.cache = roomy_cache(
            (((layer.keys[:, :, start:],), (layer.values[:, :, start:],)) for layer in handed_over(self.cache)),
            room,
            rows=index,
        )
        self.mask = mask[:, start:]
        self.positions = self.positions.index_select(0, index)
        self.last = self.last.index_select(0, index)


def _embed_with_audio(model: Any, input_ids: torch.Tensor, features: torch.Tensor, group: int) -> torch.Tensor:
    """Token embeddings with the audio placeholders replaced by the encoder's output, as the model's own
    forward does (with its placeholder mask and count check), but running the encoder `group` windows at a
    time."""
    embeds = model.get_input_embeddings()(input_ids)
    audio = torch.cat(
        [
            model.get_audio_features(features[i : i + group], return_dict=True).pooler_output
            for i in range(0, features.shape[0], group)
        ]
    )
    placeholders = model.model.get_placeholder_mask(input_ids, inputs_embeds=embeds, audio_features=audio)
    return embeds.masked_scatter(placeholders, audio.to(embeds.dtype))


def _left_pad(mask: torch.Tensor, length: int) -> torch.Tensor:
    """Zeros before a (rows, n) mask's columns, up to `length`."""
    return F.pad(mask, [length - mask.shape[1], 0])


class RowSampler:
    """Chooses one row's tokens: greedy, or temperature + top-p from its own random generator.

    With a seed, a row's draws depend only on (seed, row index), not on which rows share its batch.
    """

    def __init__(self, sampling: Sampling, row_index: int, device: torch.device) -> None:
        self.sampling = sampling
        self.generator: torch.Generator | None = None
        if sampling.temperature > 0:
            seed = sampling.seed if sampling.seed is not None else random.SystemRandom().randrange(2**62)
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed((seed * 1_000_003 + row_index) % 2**63)

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """A token id (0-d tensor) drawn from one row's logits (vocab,)."""
        assert self.generator is not None
        scores = logits / self.sampling.temperature
        if self.sampling.top_p < 1.0:  # transformers' TopPLogitsWarper
            ordered, order = torch.sort(scores)
            cumulative = ordered.softmax(-1).cumsum(-1)
            remove = cumulative <= 1 - self.sampling.top_p
            remove[-1] = False
            scores = scores.masked_fill(remove.scatter(0, order, remove), -float("inf"))
        return torch.multinomial(scores.softmax(-1), 1, generator=self.generator)[0]


def suppression(model: Any, device: torch.device, decodable: int | None = None) -> torch.Tensor | None:
    """-inf at the token ids the checkpoint's generation config suppresses (`suppress_tokens`) and at every id
    from `decodable` (the tokenizer's vocabulary size) up to the LM head's size (a checkpoint whose head is
    larger than its tokenizer would otherwise choose ids nothing can decode); None when nothing is masked.
    Added to the logits before the log-softmax, so masked ids never appear in logprobs or alternatives."""
    ids = list(getattr(model.generation_config, "suppress_tokens", None) or ())
    vocab = int(model.config.text_config.vocab_size)
    beyond = decodable is not None and decodable < vocab
    if not ids and not beyond:
        return None
    bias = torch.zeros(vocab, device=device)
    if ids:
        bias[torch.tensor(ids, device=device)] = -float("inf")
    if beyond:
        bias[decodable:] = -float("inf")
    return bias


def choose(
    logits: torch.Tensor,
    samplers: Sequence[RowSampler],
    no_eos: Sequence[bool],
    eos_token_id: int,
    suppress: torch.Tensor | None = None,
) -> Choice:
    """One token per row; rows flagged in `no_eos` may not end yet (forced minimum length)."""
    if suppress is not None:
        logits = logits + suppress
    logprobs = torch.log_softmax(logits, dim=-1)
    if any(no_eos):
        logits = logits.clone()
        logits[torch.tensor(no_eos, device=logits.device), eos_token_id] = -float("inf")
    tokens = logits.argmax(dim=-1)
    for i, sampler in enumerate(samplers):
        if sampler.generator is not None:
            tokens[i] = sampler.sample(logits[i])
    chosen = logprobs.gather(1, tokens[:, None]).squeeze(1)
    eos = logprobs[:, eos_token_id].exp()
    # One copy to the host per step, not three (each waits for the device): token ids are exact in float32.
    ids, chosen_list, eos_list = torch.stack([tokens.float(), chosen.float(), eos.float()]).tolist()
    return Choice(tokens, [int(t) for t in ids], chosen_list, eos_list, _alternatives(logprobs, samplers))


def _alternatives(logprobs: torch.Tensor, samplers: Sequence[RowSampler]) -> list[Alternatives]:
    """The most likely tokens of each row that asks for them (`Sampling.top_logprobs`), best first."""
    wanted = [s.sampling.top_logprobs for s in samplers]
    if not any(wanted):
        return [() for _ in samplers]
    values, ids = logprobs.topk(max(wanted), dim=-1)
    values_list, ids_list = values.tolist(), ids.tolist()
    return [tuple(zip(ids_list[i][:count], values_list[i][:count], strict=True)) for i, count in enumerate(wanted)]
