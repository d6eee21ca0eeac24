"""HTTP retrieval server with Search-R1's batched `/retrieve` API, so many rollout workers share one index.

    fanout serve-retriever --corpus world/corpus.jsonl --port 8000      # binds 127.0.0.1 by default
    curl -sH content-type:application/json -d '{"queries": ["Quenbridge"], "topk": 3}' localhost:8000/retrieve

Request: `{"queries": [str, ...], "topk": int, "return_scores": bool}`. Response:
`{"result": [[{"document": {"id", "contents"}, "score": float}, ...] per query]}` with scores, and
without scores each item is the document itself `{"id", "contents"}` (what Search-R1's client reads).
Requests are validated (pydantic): a non-empty batch of at most 512 non-empty strings of at most 2000
characters, 1 <= topk <= 100; anything else (or malformed JSON) gets a 422 with the reason (field and
message, without echoing the rejected value), a body declared larger than 16 MiB a 413, and a
retriever failure a 500 — the server keeps serving. `GET /health` reports the corpus size.

What it simplifies on purpose: one process, BM25 only, no authentication (bind to localhost or a
private network).
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from data.retriever import BM25Retriever, Retriever, default_index_dir

logger = logging.getLogger(__name__)

MAX_BATCH_SIZE = 512
MAX_QUERY_CHARS = 2000
MAX_TOPK = 100
# Larger than the largest valid request (512 queries of 2000 characters, each JSON-escaped to 12 bytes).
MAX_REQUEST_BYTES = 16 * 1024**2

Query = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=MAX_QUERY_CHARS)]


class RetrieveRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    queries: list[Query] = Field(min_length=1, max_length=MAX_BATCH_SIZE)
    topk: int = Field(default=3, ge=1, le=MAX_TOPK, strict=True)
    return_scores: bool = False


def create_app(retriever: Retriever, num_documents: int | None = None) -> FastAPI:
    """The FastAPI app serving `retriever` (usable in-process with fastapi.testclient.TestClient)."""
    app = FastAPI(title="fanout-rl retrieval server", version="1")

    @app.middleware("http")
    async def refuse_oversized_bodies(request: Request, call_next):
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_REQUEST_BYTES:
            detail = (f"request body of {declared} bytes is over the {MAX_REQUEST_BYTES}-byte limit; send at most "
                      f"{MAX_BATCH_SIZE} queries of at most {MAX_QUERY_CHARS} characters per request")
            return JSONResponse(status_code=413, content={"detail": detail})
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes each rejected value back: a 1 MB query would come back as a 1 MB error.
        detail = [{"loc": list(item["loc"]), "msg": item["msg"], "type": item["type"]} for item in error.errors()]
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "documents": num_documents}

    @app.post("/retrieve")
    def retrieve(request: RetrieveRequest) -> dict:
        # A plain `def`: FastAPI runs it in its thread pool, so CPU-bound BM25 does not block the event loop.
        try:
            hits = retriever.search(request.queries, request.topk)
        except Exception as error:  # a retriever failure is this request's 500, never the server's death
            logger.exception("retrieval failed for a batch of %d queries", len(request.queries))
            detail = f"retrieval failed: {type(error).__name__}: {error}"
            raise HTTPException(status_code=500, detail=detail) from None
        if request.return_scores:
            return {"result": [[{"document": hit.to_row(), "score": hit.score} for hit in per_query]
                               for per_query in hits]}
        return {"result": [[hit.to_row() for hit in per_query] for per_query in hits]}

    return app


def serve(corpus_path: str, host: str = "127.0.0.1", port: int = 8000, index_dir: str = "") -> None:
    """Load the corpus, build or load its BM25 index, and serve until interrupted."""
    import uvicorn

    from data.corpus import load_corpus

    documents = load_corpus(corpus_path)
    retriever = BM25Retriever(documents, index_dir=index_dir or default_index_dir(corpus_path))
    logger.info("serving %d documents from %s on http://%s:%d/retrieve", len(documents), corpus_path, host,
                port)
    uvicorn.run(create_app(retriever, num_documents=len(documents)), host=host, port=port, log_level="info")
