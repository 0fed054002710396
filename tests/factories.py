"""Test factories: a deterministic fake embedder and small documents."""

from __future__ import annotations

import hashlib
import re

import numpy as np

from blocks.embedders.base import EmbedderBlock

_WORD = re.compile(r"\w+")


class FakeEmbedder(EmbedderBlock):
    """Bag-of-words hashed into 64 dimensions: texts sharing words get similar vectors; counts its calls."""

    _block_type_name = "Fake Embedder"
    dims: int = 64
    model_name: str = "fake-words-64"
    batch: int = 16

    @property
    def model_id(self) -> str:
        return self.model_name

    @property
    def dimensions(self) -> int:
        return self.dims

    @property
    def max_batch(self) -> int:
        return self.batch

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dims), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
                out[i, h % self.dims] += 1.0 if (h >> 32) & 1 else -1.0
            norm = np.linalg.norm(out[i])
            out[i] = out[i] / norm if norm else np.eye(self.dims, dtype=np.float32)[0]
        return out

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def paragraphs(n: int, topic: str = "deploy") -> str:
    """A text of n distinct paragraphs."""
    return "\n\n".join(
        f"Paragraph {i} about {topic}: the service {topic}-{i} runs on node {i * 7 % 13} and logs to bucket b{i}."
        for i in range(n)
    )


def locomo_sample(sample_id="conv-x"):
    """A small LoCoMo conversation in the dataset's format, with its quirks (mended evidence ids, a session date
    without a session, an empty turn) and one question of each kind."""
    return {
        "sample_id": sample_id,
        "conversation": {
            "speaker_a": "Ana", "speaker_b": "Ben",
            "session_1_date_time": "1:56 pm on 8 May, 2023",
            "session_1": [
                {"speaker": "Ana", "dia_id": "D1:1", "text": "I adopted a puppy yesterday!"},
                {"speaker": "Ben", "dia_id": "D1:2", "text": "Lovely, what breed?", "blip_caption": "a dog"},
            ],
            "session_2_date_time": "10:00 am on 1 June, 2023",  # a date without a session, as in the data
            "session_3_date_time": "9:15 am on 2 June, 2023",
            "session_3": [{"speaker": "Ana", "dia_id": "D3:1", "text": "The puppy is a beagle."},
                          {"speaker": "Ben", "dia_id": "D3:2", "text": ""}],
        },
        "qa": [
            {"question": "What breed is Ana's puppy?", "answer": "beagle", "evidence": ["D1:1; D3:01"], "category": 1},
            {"question": "When did Ana adopt?", "answer": "7 May 2023", "evidence": ["D:1:1", "D9:9", "D"], "category": 2},
            {"question": "Unanswerable?", "adversarial_answer": "x", "evidence": ["D1:2"], "category": 5},
            {"question": "No evidence at all?", "answer": "x", "evidence": ["D7:1"], "category": 4},
        ],
    }


def save_s3_put_blocks(region: str, bucket: str = "acme-data") -> None:
    """Inside moto's mock_aws: create `bucket`, save the AWS credentials block `devmesh-aws` and a policy block
    `devmesh-policy` allowing aws.s3_put_object to buckets acme-* in `region` (the CLI operation tests' setup)."""
    import boto3
    from prefect_aws import AwsCredentials

    from blocks.policy import OperationPolicy

    boto3.client("s3", region_name=region).create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    AwsCredentials(aws_access_key_id="AKIATEST", aws_secret_access_key="test-secret-value",
                   region_name=region).save("devmesh-aws", overwrite=True)
    OperationPolicy(operations=["aws.s3_put_object"], aws_regions=[region], aws_buckets=["acme-*"]
                    ).save("devmesh-policy", overwrite=True)
