"""Serving the registered student: an OpenAI-compatible endpoint (``fitsense serve``) and ``fitsense ask``.

Parts: ``protocol`` (the narrow interface between the HTTP layer and a model:
``Answerer.answer_batch``), ``student`` (a registered model version as an
``Answerer``), ``screen`` (the safety screen run before generation),
``batching`` (micro-batches of concurrent requests), ``service`` (per request:
screen, generate, parse and check, fallback to the teacher; champion reloads),
``inference_log`` (one SQL row per request, and the next round's queries),
``server`` (FastAPI + uvicorn).
"""
