"""Generation stops a row once its JSON answer is complete, and counts only real tokens."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer

from fitsense.evaluation.generate import StopWhenAnswerComplete, _completion_lengths


def test_rows_stop_once_their_json_object_closes(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = tok("<|im_start|>user\nplan please<|im_end|>\n", add_special_tokens=False)["input_ids"]
    rows = ['Here: {"plan_name": "A", "days": []} and more', 'Here: {"plan_name": "A", "days": [',
            'I am sorry, I cannot help {not json']
    # As in generate(): one (left-padded) prompt width, then each row's new tokens,
    # right-padded where a row is shorter.
    answers = [tok(r, add_special_tokens=False)["input_ids"] for r in rows]
    width = max(map(len, answers))
    batch = torch.tensor([prompt + a + [tok.pad_token_id] * (width - len(a)) for a in answers])
    stop = StopWhenAnswerComplete(tok, prompt_length=len(prompt))
    assert stop(batch, None).tolist() == [True, False, False]


def test_completion_length_ends_at_first_eos_or_pad():
    new_tokens = torch.tensor([[5, 6, 2, 2, 2], [5, 6, 7, 8, 9], [5, 0, 0, 0, 0]])
    assert _completion_lengths(new_tokens, {2, 0}) == [3, 5, 2]
