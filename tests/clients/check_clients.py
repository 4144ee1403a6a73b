"""Calls a running `dear serve` with clients no one here wrote: the official Cohere
SDK (v2 and v1 clients) and a TEI-shaped call over plain HTTP (urllib).

    python tests/clients/check_clients.py http://127.0.0.1:PORT

Exits non-zero with the reason on the first shape or value that is wrong.
"""

import json
import sys
import urllib.error
import urllib.request

import cohere

QUERY = "how do threads share data safely?"
DOCS = [
    "Cargo is Rust's build system and package manager.",
    "A Mutex allows only one thread to access some data at any given time.",
    "Closures are anonymous functions you can save in a variable.",
    "Arc<T> is an atomically reference counted type for sharing ownership across threads.",
    "Channels let threads communicate by sending each other messages.",
]


def tei(url, body):
    req = urllib.request.Request(
        url + "/rerank",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.status, json.load(r)


def main(url):
    # Cohere v2 SDK: POST /v2/rerank.
    v2 = cohere.ClientV2(api_key="not-needed", base_url=url, timeout=120)
    r = v2.rerank(model="dear", query=QUERY, documents=DOCS, top_n=3)
    order = [x.index for x in r.results]
    scores = [x.relevance_score for x in r.results]
    assert len(order) == 3, order
    assert all(0 <= i < len(DOCS) for i in order), order
    assert len(set(order)) == 3, order
    assert all(0.0 <= s <= 1.0 for s in scores), scores
    assert scores == sorted(scores, reverse=True), scores
    assert r.id, "no id"

    # Cohere v1 SDK: POST /v1/rerank, with the documents returned.
    v1 = cohere.Client(api_key="not-needed", base_url=url, timeout=120)
    r1 = v1.rerank(model="dear", query=QUERY, documents=DOCS, top_n=3, return_documents=True)
    assert [x.index for x in r1.results] == order, ([x.index for x in r1.results], order)
    for x in r1.results:
        assert x.document is not None and x.document.text == DOCS[x.index], x
    assert [round(x.relevance_score, 6) for x in r1.results] == [round(s, 6) for s in scores]

    # TEI over plain HTTP: every text, relevance by default, raw scores when asked.
    status, t = tei(url, {"query": QUERY, "texts": DOCS, "return_text": True})
    assert status == 200, status
    assert [x["index"] for x in t][:3] == order, t
    assert all(x["text"] == DOCS[x["index"]] for x in t), t
    assert [round(x["score"], 6) for x in t][:3] == [round(s, 6) for s in scores], t
    status, raw = tei(url, {"query": QUERY, "texts": DOCS, "raw_scores": True})
    assert [x["index"] for x in raw] == [x["index"] for x in t], raw

    # Errors reach the SDK as its typed errors, with the field named.
    try:
        v2.rerank(model="dear", query="", documents=DOCS)
    except cohere.core.api_error.ApiError as e:
        assert e.status_code == 422, e.status_code
        assert e.body["field"] == "query", e.body
    else:
        raise AssertionError("an empty query was accepted")
    try:
        tei(url, {"query": QUERY, "texts": []})
    except urllib.error.HTTPError as e:
        body = json.load(e)
        assert e.code == 422 and body["field"] == "texts", (e.code, body)
        assert body["error_type"] == "invalid_field", body
    else:
        raise AssertionError("empty texts were accepted")
    print(f"cohere {cohere.__version__} v2 + v1 clients and TEI over HTTP: ok (order {order})")


if __name__ == "__main__":
    main(sys.argv[1].rstrip("/"))
