"""Batched, greedy, seeded answer generation with the student's chat template."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float  # the batch's wall time divided by its size

    @property
    def tokens_per_s(self) -> float | None:
        return self.completion_tokens / self.latency_s if self.latency_s > 0 else None


def prompt_messages(messages: list[dict]) -> list[dict]:
    """The conversation up to (not including) the final assistant answer."""
    msgs = [m if isinstance(m, dict) else m.model_dump() for m in messages]
    while msgs and msgs[-1]["role"] == "assistant":
        msgs = msgs[:-1]
    return msgs


def _completion_lengths(new_tokens, eos_ids: set[int]) -> list[int]:
    """Generated tokens per row, up to and including the first end-of-sequence token.

    Rows that finish early are padded after their eos; rows that hit max_new_tokens count in full.
    """
    lengths = []
    for row in new_tokens.tolist():
        ends = [i for i, tok in enumerate(row) if tok in eos_ids]
        lengths.append(ends[0] + 1 if ends else len(row))
    return lengths


class StopWhenAnswerComplete:
    """Stop each row once it has written one complete JSON object.

    The scorer reads only the first balanced JSON object of an answer
    (``fitsense.plan.extract_json_text``), so tokens after it cannot change a
    metric; a model that keeps talking after its plan (the base student often
    does) would otherwise run to ``max_new_tokens`` and dominate CPU time.
    """

    def __init__(self, tokenizer, prompt_length: int):
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        from fitsense.plan import AnswerParseError, extract_json_text

        done = []
        for row in input_ids[:, self.prompt_length :]:
            text = self.tokenizer.decode(row, skip_special_tokens=True)
            try:
                extract_json_text(text)
                done.append(True)
            except AnswerParseError:
                done.append(False)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def generate_answers(
    model,
    tokenizer,
    conversations: list[list[dict]],
    *,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    label: str = "model",
    grammars: list | None = None,
) -> list[Generation]:
    """Generate one answer per conversation (system + user messages), greedily, in left-padded batches.

    ``grammars`` (one compiled xgrammar grammar per conversation) constrains each row to its grammar;
    a guided row ends when its grammar does (the grammar then allows only the end-of-turn token).
    """
    import torch
    from rich.progress import Progress
    from transformers import LogitsProcessorList, StoppingCriteriaList

    if tokenizer.padding_side != "left":
        tokenizer.padding_side = "left"  # decoder-only batching needs the prompts flush right
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    eos_ids = set(eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id])
    eos_ids.add(tokenizer.eos_token_id)
    if tokenizer.pad_token_id is not None:
        eos_ids.add(tokenizer.pad_token_id)  # rows stopped early are padded with it
    device = next(model.parameters()).device
    out: list[Generation] = []
    with Progress(transient=True) as progress:
        task = progress.add_task(f"generating ({label})", total=len(conversations))
        for start in range(0, len(conversations), batch_size):
            batch = conversations[start : start + batch_size]
            texts = [
                tokenizer.apply_chat_template(prompt_messages(c), add_generation_prompt=True, tokenize=False)
                for c in batch
            ]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            torch.manual_seed(seed)
            started = time.perf_counter()
            if grammars is None:
                guide = {"stopping_criteria": StoppingCriteriaList(
                    [StopWhenAnswerComplete(tokenizer, enc["input_ids"].shape[1])])}
            else:
                from xgrammar.contrib.hf import LogitsProcessor

                guide = {"logits_processor": LogitsProcessorList(
                    [LogitsProcessor(list(grammars[start : start + batch_size]))])}
            with torch.inference_mode():
                generated = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    **guide,
                )
            elapsed = time.perf_counter() - started
            new_tokens = generated[:, enc["input_ids"].shape[1] :]
            lengths = _completion_lengths(new_tokens, eos_ids)
            prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
            per_answer = elapsed / len(batch)
            for row, n, p in zip(new_tokens, lengths, prompt_lens):
                text = tokenizer.decode(row[:n], skip_special_tokens=True)
                out.append(Generation(text=text, prompt_tokens=int(p), completion_tokens=n, latency_s=per_answer))
            progress.advance(task, len(batch))
    log.info("%s: %d answers, %d tokens", label, len(out), sum(g.completion_tokens for g in out))
    return out
