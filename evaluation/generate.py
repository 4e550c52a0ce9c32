"""Batched, greedy, seeded answer generation with the student's chat template."""

from __future__ import annotations

import functools
import logging
import re
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


def answer_complete(tokenizer, ids) -> bool:
    """True once ``ids`` decode to text holding one whole JSON object (all the scorer reads)."""
    from fitsense.plan import AnswerParseError, extract_json_text

    try:
        extract_json_text(tokenizer.decode(ids, skip_special_tokens=True))
        return True
    except AnswerParseError:
        return False


class StopWhenAnswerComplete:
    """Stop each row once it has written one complete JSON object.

    The scorer reads only the first balanced JSON object of an answer
    (``fitsense.plan.extract_json_text``), so tokens after it cannot change a
    metric; a model that keeps talking after its plan (the base student often
    does) would otherwise run to ``max_new_tokens`` and dominate CPU time.
    ``heads``: per row, the answer's tokens already written before this call; ``done``: the last verdicts.
    """

    def __init__(self, tokenizer, prompt_length: int, heads: list[list[int]] | None = None):
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.heads = heads
        self.done: list[bool] = []

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        heads = self.heads or [[] for _ in range(input_ids.shape[0])]
        self.done = [answer_complete(self.tokenizer, list(head) + row.tolist())
                     for head, row in zip(heads, input_ids[:, self.prompt_length :])]
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)


_NOTES_OPEN = re.compile(r'"notes"\s*:\s*"')
_UNESCAPED_QUOTE = re.compile(r'(?<!\\)"')


def open_notes(text: str) -> str | None:
    """The notes written so far when ``text`` ends inside the answer's notes string, else None."""
    opened = None
    for opened in _NOTES_OPEN.finditer(text):
        pass
    if opened is None:
        return None
    notes = text[opened.end():]
    return None if _UNESCAPED_QUOTE.search(notes) else notes


def notes_should_close(notes: str, tokens_left: int, reserve: int) -> bool:
    """Close the notes when the clause being written repeats an earlier one word for word (the student
    has started looping: it would repeat it until the token budget runs out), or when only ``reserve``
    tokens are left to close the answer."""
    if tokens_left <= reserve:
        return True
    *earlier, current = notes.split("; ")
    return bool(current) and current in earlier


@functools.lru_cache(maxsize=4)
def _quote_tokens(tokenizer) -> tuple[bool, ...]:
    """Per token id, whether the token's text begins with a double quote."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return tuple(piece is not None and piece.startswith('"') for piece in pieces)


class CloseRunawayNotes:
    """A logits processor that ends a row's notes string when ``notes_should_close`` says so.

    It keeps only the tokens that begin with a closing quote, and only when one of them is still
    possible (after a grammar's own processor, a guided row closes where its grammar allows). The
    answer then ends as any other: the rest of the JSON, then the end-of-turn token.
    ``heads``: per row, answer tokens written before this call; ``budgets``: per row, tokens it may add.
    """

    def __init__(self, tokenizer, prompt_length: int, heads: list[list[int]], budgets: list[int],
                 stop_ids: set[int], reserve: int = 48):
        self.tokenizer, self.prompt_length, self.heads, self.budgets = tokenizer, prompt_length, heads, budgets
        self.stop_ids, self.reserve = stop_ids, reserve

    def _quote_mask(self, vocab: int, device):
        import torch

        starts = _quote_tokens(self.tokenizer)
        return torch.tensor(list(starts[:vocab]) + [False] * (vocab - len(starts)), device=device)

    def __call__(self, input_ids, scores):
        new = input_ids[:, self.prompt_length :]
        quotes = None
        for row, (head, tokens, budget) in enumerate(zip(self.heads, new.tolist(), self.budgets)):
            if self.stop_ids.intersection(tokens):
                continue  # this row has ended; the rest is padding
            notes = open_notes(self.tokenizer.decode(list(head) + tokens, skip_special_tokens=True))
            if notes is None or not notes_should_close(notes, budget - len(tokens), self.reserve):
                continue
            if quotes is None:
                quotes = self._quote_mask(scores.shape[1], scores.device)
            closing = scores[row].masked_fill(~quotes, float("-inf"))
            if closing.isfinite().any():
                scores[row] = closing
        return scores


class ReleaseStragglers:
    """End the whole call once fewer than ``release_below`` rows are still writing.

    A batch runs for as long as its longest answer; near its end most rows have finished and each
    step computes a few. When other conversations wait for a batch, the few still writing are better
    continued in the next batch, beside new rows, from the tokens they have (``generate_answers``).
    A row stops writing at an end token or at its own budget (``budgets``: tokens it may still add);
    the call always ends once no row writes. ``stop_rows``: also stop each row at its budget; not for
    guided rows, whose grammar rejects the padding a stopped row gets. ``writing``: after a release,
    per row, whether it was still writing (the stragglers).
    """

    def __init__(self, prompt_length: int, budgets: list[int], stop_ids: set[int], release_below: int,
                 stop_rows: bool):
        import torch

        self.prompt_length, self.release_below, self.stop_rows = prompt_length, release_below, stop_rows
        self.budgets = torch.tensor(budgets)
        self.stop_ids = torch.tensor(sorted(stop_ids))
        self.writing: list[bool] = []

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        new = input_ids[:, self.prompt_length :]
        budgets = self.budgets.to(input_ids.device)
        ended = torch.isin(new, self.stop_ids.to(input_ids.device)).any(dim=1) | (new.shape[1] >= budgets)
        if int((~ended).sum()) < max(self.release_below, 1):  # with none writing, a guided row at its budget ends too
            self.writing = (~ended).tolist()
            return torch.ones_like(ended)
        return ended if self.stop_rows else torch.zeros_like(ended)


@dataclass
class _Pending:
    index: int  # the conversation's position
    head: list[int]  # answer tokens written so far (a given prefix, then what earlier batches wrote)
    latency_s: float = 0.0  # this answer's share of the batches it has been in
    cache: list | None = None  # kv_cache.RowCache: keys and values of the prompt and head, all but the last token


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
    release_below: int = 0,
    reuse_cache: bool = True,
) -> list[Generation]:
    """Generate one answer per conversation (system + user messages), greedily, in left-padded batches.

    ``grammars`` (one compiled xgrammar grammar per conversation) constrains each row to its grammar;
    a guided row ends when its grammar does (the grammar then allows only the end-of-turn token).
    ``prefixes`` (guided only: token ids each answer starts with, which its grammar accepts) are
    continued rather than written again; ``max_new_tokens`` still bounds the whole answer, and a
    Generation's text, tokens and ids include its prefix while its latency is the continuation's.
    ``release_below`` (0: off): while conversations wait, a batch ends once fewer than this many rows
    still write, and those rows continue in the next batch from their tokens (``ReleaseStragglers``):
    the same greedy tokens in exact arithmetic; in floating point, re-reading a row's tokens in a prefill
    can flip a near-tie (45 of 48 answers identical in ``bench_generation.py``).
    ``reuse_cache`` (``kv_cache``): the shared prompt start is read once, each prompt without padding,
    and a released row keeps its cache; False: ``generate`` reads each padded batch whole (for comparison).
    """
    import torch
    from rich.progress import Progress
    from transformers import LogitsProcessorList, StoppingCriteriaList

    from fitsense.evaluation.kv_cache import batch_cache, prefill_prefix, prefill_rows, row_caches

    if tokenizer.padding_side != "left":
        tokenizer.padding_side = "left"  # decoder-only batching needs the prompts flush right
    if prefixes is not None and grammars is None:
        raise ValueError("prefixes are continued under their grammars: pass grammars too")
    eos_ids = stop_token_ids(model, tokenizer)
    device = next(model.parameters()).device
    prompts = [tokenizer(tokenizer.apply_chat_template(prompt_messages(c), add_generation_prompt=True,
                                                       tokenize=False), add_special_tokens=False)["input_ids"]
               for c in conversations]
    queue = [_Pending(i, list(prefixes[i]) if prefixes is not None else []) for i in range(len(conversations))]
    out: list[Generation | None] = [None] * len(conversations)
    started = time.perf_counter()
    with torch.inference_mode():
        shared = prefill_prefix(model, prompts) if prompts and reuse_cache else None
    prefix_share = (time.perf_counter() - started) / max(len(prompts), 1)
    with Progress(transient=True) as progress:
        task = progress.add_task(f"generating ({label})", total=len(conversations))
        while queue:
            batch, queue = queue[:batch_size], queue[batch_size:]
            ids = [prompts[p.index] + p.head for p in batch]
            started = time.perf_counter()
            new_rows = [j for j, p in enumerate(batch) if p.cache is None and reuse_cache]
            with torch.inference_mode():
                for j, cache in zip(new_rows, prefill_rows(model, shared, [ids[j] for j in new_rows])):
                    batch[j].cache, batch[j].latency_s = cache, batch[j].latency_s + prefix_share
            enc = tokenizer.pad({"input_ids": ids}, return_tensors="pt", padding=True).to(device)
            width = enc["input_ids"].shape[1]
            past = batch_cache([p.cache for p in batch], width) if reuse_cache else None
            budgets = [max_new_tokens - len(p.head) for p in batch]
            heads = [p.head for p in batch]
            processors, complete = [CloseRunawayNotes(tokenizer, width, heads, budgets, eos_ids)], None
            if grammars is None:
                complete = StopWhenAnswerComplete(tokenizer, width, heads)
            else:  # the grammar's mask comes first: notes close only where the grammar allows
                processors.insert(0, grammar_processor([grammars[p.index] for p in batch], heads))
            # Only a batch with rows to spare releases, so each batch finishes some answers.
            waiting = bool(queue) and len(batch) > release_below
            release = ReleaseStragglers(width, budgets, eos_ids, release_below if waiting else 0,
                                        stop_rows=grammars is None)
            criteria = [c for c in (complete, release) if c is not None]
            torch.manual_seed(seed)
            with torch.inference_mode():
                generated = model.generate(
                    **enc,
                    past_key_values=past,
                    max_new_tokens=max(budgets),
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    stopping_criteria=StoppingCriteriaList(criteria),
                    logits_processor=LogitsProcessorList(processors),
                )
            share = (time.perf_counter() - started) / len(batch)
            new_tokens = generated[:, width:]
            stragglers = []
            lengths = _completion_lengths(new_tokens, eos_ids)
            for j, (p, row, n, budget) in enumerate(zip(batch, new_tokens, lengths, budgets)):
                p.head, p.latency_s = p.head + row[: min(n, budget)].tolist(), p.latency_s + share
                # A raw row may have completed its JSON on the very step the batch was released.
                if release.writing and release.writing[j] and not (complete is not None and complete.done[j]):
                    # Its cache goes along: every token it holds but the last, which the next batch feeds.
                    if past is not None:
                        p.cache = row_caches(past, [j], [width - len(ids[j])], width + new_tokens.shape[1] - 1)[0]
                    stragglers.append(p)
                    continue
                p.cache = None
                out[p.index] = Generation(text=tokenizer.decode(p.head, skip_special_tokens=True),
                                          prompt_tokens=len(prompts[p.index]), completion_tokens=len(p.head),
                                          latency_s=p.latency_s, token_ids=p.head)
                progress.advance(task)
            queue = stragglers + queue  # the stragglers join the next batch's new rows
    log.info("%s: %d answers, %d tokens", label, len(out), sum(g.completion_tokens for g in out))
    return out  # type: ignore[return-value]
