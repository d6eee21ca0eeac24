#!/usr/bin/env bash
# Retrieval server for fanout-rl rollouts (retriever.backend=http).
#
# Built in: a BM25 server over a wiki-style JSONL corpus ({"id", "contents"} rows), speaking the
# Search-R1 protocol: POST /retrieve {"queries": [...], "topk": k, "return_scores": bool}. With no
# --corpus, the generated world is written to $WORLD_DIR (default world/) and its corpus is served.
#
# Dense retrieval (e5 + FAISS, as in Search-R1 / ParallelSearch) uses Search-R1's own server, which
# answers the same request shape, so fanout needs no change beyond the URL. On a GPU box with the
# Search-R1 repository, its wiki-18 corpus and e5 index downloaded (see that project's README):
#
#   python search_r1/search/retrieval_server.py --index_path $INDEX/e5_Flat.index \
#       --corpus_path $INDEX/wiki-18.jsonl --topk 3 --retriever_name e5 \
#       --retriever_model intfloat/e5-base-v2 --faiss_gpu          # listens on :8000/retrieve
#
# then point training/eval at it:
#
#   fanout train CONFIG retriever.backend=http retriever.url=http://HOST:8000/retrieve retriever.topk=3
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/retriever_server.sh [--dry-run] [--corpus PATH] [--host HOST] [--port PORT] [--index-dir DIR]

Starts the built-in BM25 retrieval server (foreground):
  fanout serve-retriever --corpus PATH --host HOST --port PORT [--index-dir DIR]
Without --corpus it first writes the generated world:
  fanout data build-world --out $WORLD_DIR      (WORLD_DIR defaults to world/)
and serves $WORLD_DIR/corpus.jsonl.

Options:
  --corpus PATH     JSONL corpus with {"id", "contents"} rows
  --host HOST       bind address (default 127.0.0.1; use 0.0.0.0 to serve other nodes)
  --port PORT       port (default 8000)
  --index-dir DIR   where the BM25 index is saved/loaded (default: next to the corpus)
  --dry-run         print the commands instead of running them
  -h, --help        show this help

Clients: retriever.backend=http retriever.url=http://HOST:PORT/retrieve
For e5/FAISS dense retrieval, run Search-R1's retrieval_server.py (see the comments in this script).
USAGE
}

dry_run=0
corpus=""
host=127.0.0.1
port=8000
index_dir=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift ;;
    --corpus) corpus="${2:?--corpus needs a path}"; shift 2 ;;
    --host) host="${2:?--host needs an address}"; shift 2 ;;
    --port) port="${2:?--port needs a number}"; shift 2 ;;
    --index-dir) index_dir="${2:?--index-dir needs a folder}"; shift 2 ;;
    *) echo "retriever_server.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

# shellcheck source=lib/run.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/run.sh"

cd "$(dirname "$0")/.."
if [[ -z "$corpus" ]]; then
  world_dir="${WORLD_DIR:-world}"
  corpus="$world_dir/corpus.jsonl"
  if [[ ! -f "$corpus" ]]; then
    run fanout data build-world --out "$world_dir" --seed "${WORLD_SEED:-0}"
  fi
fi
index_args=()
if [[ -n "$index_dir" ]]; then index_args=(--index-dir "$index_dir"); fi
run fanout serve-retriever --corpus "$corpus" --host "$host" --port "$port" ${index_args[@]+"${index_args[@]}"}
