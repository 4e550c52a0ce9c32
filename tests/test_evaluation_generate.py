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


def _eos_after(model, tokenizer, conversations, targets):
    """Make ``model`` end conversation i's answer with eos as its ``targets[i]``-th token.

    A row is told apart by its real length: prompts are spaced further apart than any target.
    """
    from fitsense.evaluation.generate import prompt_messages

    lengths = [len(tokenizer(tokenizer.apply_chat_template(prompt_messages(c), add_generation_prompt=True,
                                                           tokenize=False), add_special_tokens=False)["input_ids"])
               for c in conversations]
    assert all(b - a > max(targets) for a, b in zip(lengths, lengths[1:]))
    eos, forward = tokenizer.eos_token_id, model.forward

    def patched(*args, **kwargs):
        out = forward(*args, **kwargs)
        for row, real in enumerate(kwargs["attention_mask"].sum(dim=1).tolist()):
            if real < lengths[0]:
                continue  # the shared prompt start, read before any row decodes
            i = max(j for j, n in enumerate(lengths) if n <= real)
            if real - lengths[i] >= targets[i] - 1:
                out.logits[row, -1, :] = float("-inf")
                out.logits[row, -1, eos] = 0.0
        return out

    model.forward = patched


def _count_generate_calls(model) -> list[tuple[int, int]]:
    """(rows, decoding steps) of each of ``model``'s generate calls from now on."""
    calls = []
    generate = model.generate

    def counted(**kwargs):
        result = generate(**kwargs)
        calls.append(tuple(result[:, kwargs["input_ids"].shape[1]:].shape))
        return result

    model.generate = counted
    return calls


def test_stragglers_continue_in_the_next_batch_with_the_same_answers(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from fitsense.evaluation.generate import generate_answers

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    conversations = [[{"role": "user", "content": "a " * (40 * i + 1)}] for i in range(7)]
    targets = [4, 4, 24, 4, 4, 4, 4]
    answers, calls = {}, {}
    for release_below in (0, 2):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
        _eos_after(model, tok, conversations, targets)
        calls[release_below] = _count_generate_calls(model)
        answers[release_below] = generate_answers(model, tok, conversations, max_new_tokens=32, batch_size=3,
                                                  seed=0, release_below=release_below)
    assert [g.completion_tokens for g in answers[2]] == targets
    assert [g.token_ids for g in answers[2]] == [g.token_ids for g in answers[0]]
    assert calls[0] == [(3, 24), (3, 4), (1, 4)]  # the first batch waits 20 steps for one row
    assert calls[2] == [(3, 4), (3, 4), (3, 16)]  # the long row moves on beside new rows, twice
    assert sum(r * s for r, s in calls[2]) < sum(r * s for r, s in calls[0])


def test_guided_stragglers_continue_under_their_grammars_with_the_same_answers(tiny_model_dir):
    import json

    import xgrammar as xgr
    from transformers import AutoModelForCausalLM

    from fitsense.evaluation.generate import generate_answers

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    plain_generate = model.generate
    compiler = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tok, vocab_size=model.config.vocab_size))

    def grammar(schema):
        return compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=(",", ":"))

    short, long = grammar({"type": "boolean"}), grammar({"type": "string", "minLength": 60})
    conversations = [[{"role": "user", "content": f"question {i}"}] for i in range(7)]
    grammars = [short, short, long, short, short, short, short]
    calls, answers = {}, {}
    for release_below in (0, 2):
        model.generate = plain_generate
        calls[release_below] = _count_generate_calls(model)
        answers[release_below] = generate_answers(model, tok, conversations, max_new_tokens=40, batch_size=3,
                                                  seed=0, grammars=grammars, release_below=release_below)
    assert [g.token_ids for g in answers[2]] == [g.token_ids for g in answers[0]]
    assert all(xgr.GrammarMatcher(g).accept_string(a.text) for g, a in zip(grammars, answers[2]))
    assert [len(g.token_ids) for g in answers[2]] == [4, 4, 40, 4, 4, 6, 4]
    assert calls[0] == [(3, 40), (3, 6), (1, 4)]
    # The long answer moves on twice, then stops at its 40-token budget although its batch could run 40 steps.
    assert calls[2] == [(3, 4), (3, 4), (3, 32)]


def test_reused_caches_give_the_answers_plain_generation_gives(tiny_model_dir):
    """Shared prompt start read once, unpadded prompts, released rows keeping their cache: same tokens."""
    from transformers import AutoModelForCausalLM

    from fitsense.evaluation.generate import generate_answers

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    conversations = [[{"role": "system", "content": "You are a coach."},
                      {"role": "user", "content": "squat " * (3 * i + 1) + f"question {i}"}] for i in range(7)]
    kwargs = dict(max_new_tokens=24, batch_size=3, seed=0)
    plain = generate_answers(model, tok, conversations, reuse_cache=False, **kwargs)
    reused = generate_answers(model, tok, conversations, reuse_cache=True, **kwargs)
    released = generate_answers(model, tok, conversations, reuse_cache=True, release_below=2, **kwargs)
    one_by_one = generate_answers(model, tok, conversations, reuse_cache=False, **{**kwargs, "batch_size": 1})
    assert [g.token_ids for g in reused] == [g.token_ids for g in plain] == [g.token_ids for g in one_by_one]
    assert [g.token_ids for g in released] == [g.token_ids for g in plain]
    assert all(g.completion_tokens == 24 for g in plain)  # a random model never closes its JSON


def test_growing_cache_layer_keeps_every_token_across_regrowth():
    from fitsense.evaluation.kv_cache import GrowingLayer

    layer = GrowingLayer()
    chunks = [torch.randn(2, 3, n, 4) for n in (5, 60, 1, 1, 100)]
    for chunk in chunks:
        keys, values = layer.update(chunk, -chunk)
    assert layer.get_seq_length() == 167
    assert torch.equal(keys, torch.cat(chunks, dim=2)) and torch.equal(values, -torch.cat(chunks, dim=2))


def test_a_batch_cache_predicts_what_reading_each_prompt_whole_predicts(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from fitsense.evaluation.kv_cache import batch_cache, prefill_prefix, prefill_rows

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompts = [tok(f"<|im_start|>system\nCoach.<|im_end|>\n<|im_start|>user\n{'lunge ' * n}", add_special_tokens=False)
               ["input_ids"] for n in (1, 9, 4)]
    width = max(map(len, prompts))
    with torch.inference_mode():
        shared = prefill_prefix(model, prompts)
        assert 0 < len(shared.tokens) < len(prompts[0])
        cache = batch_cache(prefill_rows(model, shared, prompts), width)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        last = torch.tensor([[p[-1]] for p in prompts])
        positions = torch.tensor([[len(p) - 1] for p in prompts])  # as generate() counts them, pads excluded
        batched = model(input_ids=last, attention_mask=mask, position_ids=positions,
                        past_key_values=cache).logits[:, -1]
        for row, prompt in enumerate(prompts):
            whole = model(input_ids=torch.tensor([prompt])).logits[0, -1]
            torch.testing.assert_close(batched[row], whole, atol=1e-5, rtol=1e-4)


def test_the_row_major_head_computes_what_the_linear_head_does(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from fitsense.training.lm_head import RowMajorHead, use_row_major_head

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    head = model.get_output_embeddings()
    hidden = torch.randn(12, 1, head.in_features)
    with torch.inference_mode():
        expected = head(hidden)
        use_row_major_head(model)
        assert isinstance(model.get_output_embeddings(), RowMajorHead)
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # still tied
        logits = model.get_output_embeddings()(hidden)
        torch.testing.assert_close(logits, expected, atol=1e-6, rtol=1e-5)
        assert logits.is_contiguous()  # a logits processor masks them in place


def test_open_notes_and_when_they_close():
    from fitsense.evaluation.generate import notes_should_close, open_notes

    assert open_notes('{"plan_name": "A", "notes": "Add a rep; Keep') == "Add a rep; Keep"
    assert open_notes('{"plan_name": "A", "notes": "Add a rep", "safety": {') is None
    assert open_notes('{"plan_name": "A", "notes": "say \\"hi') == 'say \\"hi'  # an escaped quote stays inside
    assert open_notes('{"plan_name": "A", "days": [') is None
    assert notes_should_close("Add a rep; Rest more; Add a rep", tokens_left=300, reserve=48)
    assert not notes_should_close("Add a rep; Rest more; Add a", tokens_left=300, reserve=48)
    assert not notes_should_close("Add a rep; Rest more; ", tokens_left=300, reserve=48)
    assert notes_should_close("Add a rep", tokens_left=48, reserve=48)


def _looping(model, tokenizer, start: str, clause: str, close: str):
    """Make ``model`` write ``start``, then ``clause`` over and over, with the token ``close`` as every
    step's runner-up, and end its turn once it has written ``close``."""
    first, cycle = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in (start, clause))
    nxt = dict(zip(first, first[1:] + cycle[:1])) | dict(zip(cycle, cycle[1:] + cycle[:1]))
    [closing] = tokenizer(close, add_special_tokens=False)["input_ids"]
    forward = model.forward

    def patched(*args, **kwargs):
        out = forward(*args, **kwargs)
        for row, last in enumerate(kwargs["input_ids"][:, -1].tolist()):
            out.logits[row, -1, :] = float("-inf")
            out.logits[row, -1, closing] = 1.0
            out.logits[row, -1, nxt.get(last, first[0])] = 2.0
            if last == closing:
                out.logits[row, -1, tokenizer.eos_token_id] = 3.0
        return out

    model.forward = patched


def test_a_looping_student_closes_its_notes_and_its_answer(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from fitsense.evaluation.generate import generate_answers

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    _looping(model, tok, '{"notes": "Add one rep;', " Add one rep;", '"}')
    [answer] = generate_answers(model, tok, [[{"role": "user", "content": "plan"}]], max_new_tokens=120,
                                batch_size=1, seed=0)
    assert answer.text == '{"notes": "Add one rep; Add one rep"}'


def test_notes_close_only_where_an_earlier_mask_allows_a_quote(tiny_model_dir):
    from fitsense.evaluation.generate import CloseRunawayNotes

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok('{"notes": "Add a rep; Add a rep', add_special_tokens=False)["input_ids"]
    close = CloseRunawayNotes(tok, prompt_length=0, heads=[[]], budgets=[300], stop_ids={tok.eos_token_id})
    quotes = torch.tensor([p.startswith('"') for p in tok.convert_ids_to_tokens(list(range(len(tok))))])
    scores = close(torch.tensor([ids]), torch.zeros(1, len(tok)))
    assert scores[0].isfinite().tolist() == quotes.tolist()
    grammar_says_no = torch.zeros(1, len(tok)).masked_fill(quotes, float("-inf"))
    assert torch.equal(close(torch.tensor([ids]), grammar_says_no.clone()), grammar_says_no)
