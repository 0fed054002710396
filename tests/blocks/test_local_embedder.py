"""LocalEmbedder: the real int8 MiniLM model, run in process."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from blocks.embedders.base import Embedder
from blocks.embedders.local import (
    MODEL_SHA256,
    TOKENIZER_SHA256,
    LocalEmbedder,
    _default_model_path,
    _default_tokenizer_path,
)
from blocks.errors import ConfigError

pytestmark = pytest.mark.slow

SCIFACT = Path(__file__).resolve().parents[2].parent / "shared" / "testdata" / "scifact"

# Each of these words is one WordPiece token, so n words are n tokens.
ONE_TOKEN_WORDS = "cat dog house river tree stone bread music water light".split()


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return LocalEmbedder()


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _words(n: int, offset: int = 0) -> str:
    return " ".join(ONE_TOKEN_WORDS[(i * 7 + offset) % len(ONE_TOKEN_WORDS)] for i in range(n))


def test_embed_returns_unit_float32_vectors_of_384_dimensions(embedder):
    vectors = embedder.embed(["Roll back the deployment.", "", "Scale the web tier to five replicas."])
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.dimensions == 384 and embedder.model_id == "all-MiniLM-L6-v2-onnx-int8"


def test_embed_of_empty_list_is_0_by_384(embedder):
    vectors = embedder.embed([])
    assert vectors.shape == (0, 384) and vectors.dtype == np.float32


def test_embed_is_deterministic(embedder):
    texts = ["the pod is crash looping", "merge the pull request after review"]
    np.testing.assert_array_equal(embedder.embed(texts), embedder.embed(texts))
    np.testing.assert_array_equal(LocalEmbedder().embed(texts), embedder.embed(texts))


def test_embed_keeps_input_order_when_batches_are_sorted_by_length():
    # Lengths deliberately out of order and batch_size 2, so the sorted runs mix the inputs.
    texts = [_words(5), _words(200, 1), "a", _words(40, 2), _words(120, 3), "kubernetes rollout undo", _words(80, 4)]
    small_batches = LocalEmbedder(batch_size=2)
    together = small_batches.embed(texts)
    alone = np.stack([small_batches.embed([t])[0] for t in texts])
    assert (_cos(together, alone) > 0.999).all()
    # and no vector landed on another text's row
    sims = together @ alone.T
    assert (sims.argmax(axis=1) == np.arange(len(texts))).all()


def test_paraphrase_is_closer_than_an_unrelated_sentence(embedder):
    a, paraphrase, unrelated = embedder.embed(
        [
            "The deployment failed, so we rolled it back to the previous version.",
            "We reverted the release to the earlier version after the deploy broke.",
            "My grandmother bakes bread with rye flour every Sunday.",
        ]
    )
    assert float(a @ paraphrase) > float(a @ unrelated) + 0.2


def test_embed_truncates_at_max_tokens_of_256_not_the_files_128(embedder):
    # 254 words + [CLS] + [SEP] = 256 tokens: the tail beyond that must not change the vector.
    long_text, cut_at_256, cut_at_128 = _words(400), _words(254), _words(126)
    v_long, v_256, v_128 = embedder.embed([long_text, cut_at_256, cut_at_128])
    assert _cos(v_long, v_256) > 0.9999
    assert _cos(v_long, v_128) < 0.9999


def test_count_tokens_counts_every_token_without_truncation_or_special_tokens(embedder):
    assert embedder.count_tokens(_words(600)) == 600
    assert embedder.count_tokens("") == 0
    assert embedder.count_tokens("kubectl rollout undo deployment/web") > 4


def test_embedder_is_a_picklable_block_that_satisfies_the_protocol(embedder):
    embedder.embed(["load the runtime first"])
    copy = pickle.loads(pickle.dumps(embedder))
    assert copy == embedder
    assert LocalEmbedder.model_validate(embedder.model_dump()).model_dump() == embedder.model_dump()
    assert isinstance(embedder, Embedder)
    assert LocalEmbedder().threads == (os.cpu_count() or 1)
    assert LocalEmbedder.get_block_type_name() == "Local Embedder"
    schema = LocalEmbedder.model_json_schema()["properties"]
    for name in ("model_path", "tokenizer_path", "threads", "max_tokens", "batch_size"):
        assert schema[name].get("description"), name


def test_embed_from_several_threads_gives_the_same_vectors(embedder):
    texts = [_words(30 + 10 * i, i) for i in range(8)]
    expected = embedder.embed(texts)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: embedder.embed(texts), range(4)))
    for got in results:
        np.testing.assert_allclose(got, expected, atol=1e-6)


def _corrupt_copy(source: Path, target: Path) -> Path:
    shutil.copyfile(source, target)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    return target


def test_model_file_with_a_changed_byte_raises_config_error(tmp_path):
    bad = _corrupt_copy(_default_model_path(), tmp_path / "model.onnx")
    with pytest.raises(ConfigError) as err:
        LocalEmbedder(model_path=str(bad)).embed(["hello"])
    message = str(err.value)
    assert str(bad) in message and MODEL_SHA256 in message
    assert "got " in message and message.split("got ")[1] != MODEL_SHA256


def test_tokenizer_file_with_a_changed_byte_raises_config_error(tmp_path):
    bad = _corrupt_copy(_default_tokenizer_path(), tmp_path / "tokenizer.json")
    with pytest.raises(ConfigError, match=TOKENIZER_SHA256) as err:
        LocalEmbedder(tokenizer_path=str(bad)).count_tokens("hello")
    assert str(bad) in str(err.value)


def test_missing_model_file_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        LocalEmbedder(model_path=str(tmp_path / "absent.onnx")).embed(["hello"])


def test_identical_copy_of_the_model_is_accepted(tmp_path, embedder):
    copy = tmp_path / "model.onnx"
    shutil.copyfile(_default_model_path(), copy)
    np.testing.assert_allclose(LocalEmbedder(model_path=str(copy)).embed(["hello"]), embedder.embed(["hello"]), atol=1e-6)


def _scifact_vectors():
    npz = SCIFACT / "minilm-int8-embeddings.npz"
    if not npz.exists():
        pytest.skip(f"../shared/testdata not present: {npz} holds the reference SciFact embeddings")
    with np.load(npz) as data:
        return {name: data[name] for name in data.files}


def test_embed_matches_the_precomputed_scifact_vectors(embedder):
    stored = _scifact_vectors()
    docs: dict[str, str] = {}
    with (SCIFACT / "corpus.jsonl").open(encoding="utf-8") as f:
        for line in f:  # the first five documents; most exceed 256 tokens, so truncation is tested too
            row = json.loads(line)
            docs[row["_id"]] = row["title"] + ". " + row["text"]
            if len(docs) == 5:
                break
    with (SCIFACT / "queries.jsonl").open(encoding="utf-8") as f:
        queries = {row["_id"]: row["text"] for row in map(json.loads, f)}
    doc_row = {str(d): i for i, d in enumerate(stored["doc_ids"])}
    query_ids = [str(q) for q in stored["query_ids"][:5]]

    doc_vectors = embedder.embed(list(docs.values()))
    query_vectors = embedder.embed([queries[q] for q in query_ids])

    assert (_cos(doc_vectors, stored["docs"][[doc_row[d] for d in docs]]) >= 0.99).all()
    assert (_cos(query_vectors, stored["queries"][:5]) >= 0.99).all()
    assert max(embedder.count_tokens(t) for t in docs.values()) > 256
