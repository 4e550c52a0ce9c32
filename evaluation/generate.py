"""Batched, greedy, seeded answer generation with the student's chat template."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float  # the batch's wall time divided by its size
    token_ids: list[int] = field(default_factory=list, repr=False)  # the completion, end-of-turn token included

    @property
    def tokens_per_s(self) -> float | None:
        return self.completion_tokens / self.latency_s if self.latency_s > 0 else None


def prompt_messages(messages: list[dict]) -> list[dict]:
    """The conversation up to (not including) the final assistant answer."""
    msgs = [m if isinstance(m, dict) else m.model_dump() for m in messages]
    while msgs and msgs[-1]["role"] == "assistant":
        msgs = msgs[:-1]
    return msgs


def stop_token_ids(model, tokenizer) -> set[int]:
    """The tokens that end an answer: the model's end-of-sequence ids, the tokenizer's, and padding."""
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = set(eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id])
    ids.add(tokenizer.eos_token_id)
    if tokenizer.pad_token_id is not None:
        ids.add(tokenizer.pad_token_id)  # rows stopped early are padded with it
    return ids


def grammar_processor(grammars: list, prefixes: list[list[int]] | None = None):
    """xgrammar's HF logits processor, one grammar per row; each row's matcher first consumes its prefix.

    A prefix is the start of the answer, already written and placed after the prompt, so generation
    continues it under the grammar (``generate_answers(prefixes=...)``).
    """
    import xgrammar as xgr
    from xgrammar.contrib.hf import LogitsProcessor

    processor = LogitsProcessor(list(grammars))
    # The processor builds its matchers on its first call unless they exist; these have read the prefixes.
    processor.batch_size = len(grammars)
    processor.matchers = [xgr.GrammarMatcher(g) for g in grammars]
    for i, (matcher, prefix) in enumerate(zip(processor.matchers, prefixes or [[] for _ in grammars])):
        for token in prefix:
            if not matcher.accept_token(token):
                raise ValueError(f"row {i}: the grammar rejects its own prefix at token {token}")
    processor.token_bitmask = xgr.allocate_token_bitmask(processor.batch_size, processor.full_vocab_size)
    return processor


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
    prefixes: list[list[int]] | None = None,
) -> list[Generation]:
    """Generate one answer per conversation (system + user messages), greedily, in left-padded batches.

    ``grammars`` (one compiled xgrammar grammar per conversation) constrains each row to its grammar;
    a guided row ends when its grammar does (the grammar then allows only the end-of-turn token).
    ``prefixes`` (guided only: token ids each answer starts with, which its grammar accepts) are
    continued rather than written again; ``max_new_tokens`` still bounds the whole answer, and a
    Generation's text, tokens and ids include its prefix while its latency is the continuation's.
    """
    import torch
    from rich.progress import Progress
    from transformers import LogitsProcessorList, StoppingCriteriaList

    if tokenizer.padding_side != "left":
        tokenizer.padding_side = "left"  # decoder-only batching needs the prompts flush right
    if prefixes is not None and grammars is None:
        raise ValueError("prefixes are continued under their grammars: pass grammars too")
    eos_ids = stop_token_ids(model, tokenizer)
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
            heads = [[] for _ in batch] if prefixes is None else prefixes[start : start + batch_size]
            ids = [tokenizer(t, add_special_tokens=False)["input_ids"] + list(h) for t, h in zip(texts, heads)]
            enc = tokenizer.pad({"input_ids": ids}, return_tensors="pt", padding=True).to(device)
            budgets = [max_new_tokens - len(h) for h in heads]
            torch.manual_seed(seed)
            started = time.perf_counter()
            if grammars is None:
                guide = {"stopping_criteria": StoppingCriteriaList(
                    [StopWhenAnswerComplete(tokenizer, enc["input_ids"].shape[1])])}
            else:
                guide = {"logits_processor": LogitsProcessorList(
                    [grammar_processor(grammars[start : start + batch_size], heads)])}
            with torch.inference_mode():
                generated = model.generate(
                    **enc,
                    max_new_tokens=max(budgets),
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    **guide,
                )
            elapsed = time.perf_counter() - started
            new_tokens = generated[:, enc["input_ids"].shape[1] :]
            lengths = _completion_lengths(new_tokens, eos_ids)
            prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
            per_answer = elapsed / len(batch)
            for row, n, p, head, budget in zip(new_tokens, lengths, prompt_lens, heads, budgets):
                ids = list(head) + row[: min(n, budget)].tolist()
                text = tokenizer.decode(ids, skip_special_tokens=True)
                out.append(Generation(text=text, prompt_tokens=int(p) - len(head), completion_tokens=len(ids),
                                      latency_s=per_answer, token_ids=ids))
            progress.advance(task, len(batch))
    log.info("%s: %d answers, %d tokens", label, len(out), sum(g.completion_tokens for g in out))
    return out
