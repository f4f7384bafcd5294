"""Token shards (contents against the tokenizer, atomic writes, determinism) and the packed sampler
(packing, rank split = big batch, exact resume, deterministic validation)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from training.core.config import DataConfig
from training.core.data import PackedSampler, ShardError, TokenShards, prepare_shards, read_manifest
from training.core.data.shards import is_validation, token_dtype
from training.core.tokenizer import StudioTokenizer, train_tokenizer


@pytest.fixture(scope="module")
def tok(austen_sample: list[str]) -> StudioTokenizer:
    return train_tokenizer(austen_sample, vocab_size=1024)


@pytest.fixture(scope="module")
def dataset(tok: StudioTokenizer, austen_sample: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "austen"
    prepare_shards(austen_sample, tok, out, val_fraction=0.2, seed=0, shard_tokens=20_000)
    return out


def _expected_stream(tok: StudioTokenizer, docs: list[str], *, add_bos: bool = False) -> np.ndarray:
    ids: list[int] = []
    for d in docs:
        ids += tok.encode(d, add_bos=add_bos, add_eos=True)
    return np.array(ids, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------

def test_manifest_and_contents(dataset: Path, tok: StudioTokenizer, austen_sample: list[str]) -> None:
    m = read_manifest(dataset)
    assert m["dtype"] == "uint16" and m["vocab_size"] == tok.vocab_size
    assert m["tokenizer_fingerprint"] == tok.fingerprint and m["eos_id"] == tok.eos_id
    val_docs = [d for d in austen_sample if is_validation(d, 0, 0.2)]
    train_docs = [d for d in austen_sample if not is_validation(d, 0, 0.2)]
    assert 0 < len(val_docs) < len(train_docs)
    for split, docs in (("train", train_docs), ("val", val_docs)):
        expected = _expected_stream(tok, docs)
        info = m["splits"][split]
        assert info["documents"] == len(docs)
        assert info["tokens"] == len(expected) == sum(s["tokens"] for s in info["shards"])
        assert info["chars"] == sum(len(d) for d in docs)
        view = TokenShards(dataset, split)
        assert len(view) == len(expected)
        assert np.array_equal(view[:].astype(np.int64), expected)
        assert view.documents == len(docs)
    assert len(m["splits"]["train"]["shards"]) > 1  # 20k-token shards: documents straddle files
    assert sorted(p.name for p in dataset.parent.iterdir()) == ["austen"]  # no temp folders left


def test_reads_across_shard_boundaries(dataset: Path) -> None:
    view = TokenShards(dataset, "train")
    flat = view[:]
    first = view.manifest["splits"]["train"]["shards"][0]["tokens"]
    for start, length in ((first - 3, 7), (0, first + 1), (first, 5), (len(view) - 4, 4), (5, 0)):
        assert np.array_equal(view.read(start, length), flat[start:start + length])
    with pytest.raises(IndexError):
        view.read(len(view) - 2, 5)


def test_documents_round_trip(dataset: Path, tok: StudioTokenizer, austen_sample: list[str]) -> None:
    view = TokenShards(dataset, "val")
    ids = view[:].tolist()
    docs, cur = [], []
    for i in ids:
        if i == tok.eos_id:
            docs.append(tok.decode(cur))
            cur = []
        else:
            cur.append(i)
    assert cur == [] and docs == [d for d in austen_sample if is_validation(d, 0, 0.2)]


def test_deterministic_and_streamed(tok: StudioTokenizer, austen_sample: list[str], tmp_path: Path) -> None:
    def stream() -> Iterator[str]:  # a one-pass generator, consumed in batches
        yield from austen_sample

    a = prepare_shards(stream(), tok, tmp_path / "a", val_fraction=0.2, batch_size=5)
    b = prepare_shards(list(austen_sample), tok, tmp_path / "b", val_fraction=0.2)
    assert a == b
    for split in ("train", "val"):
        assert np.array_equal(TokenShards(tmp_path / "a", split)[:], TokenShards(tmp_path / "b", split)[:])
    c = prepare_shards(austen_sample, tok, tmp_path / "c", val_fraction=0.2, seed=1)
    assert c["splits"]["val"]["documents"] != a["splits"]["val"]["documents"] or \
        not np.array_equal(TokenShards(tmp_path / "c", "val")[:], TokenShards(tmp_path / "a", "val")[:])


def test_bos_special_text_and_empty_documents(tok: StudioTokenizer, tmp_path: Path) -> None:
    docs = ["First <|eos|> document.", "", "Second one.", "Third."]
    m = prepare_shards(docs, tok, tmp_path / "ds", val_fraction=0.0, add_bos=True)
    assert m["splits"]["train"]["documents"] == 3 and m["splits"]["val"]["documents"] == 0
    ids = TokenShards(tmp_path / "ds", "train")[:].tolist()
    assert ids.count(tok.bos_id) == 3 and ids.count(tok.eos_id) == 3  # the written "<|eos|>" stays text
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == "<|bos|>First <|eos|> document.<|eos|><|bos|>Second one.<|eos|><|bos|>Third.<|eos|>"


def test_small_corpus_still_gets_a_validation_document(tok: StudioTokenizer, tmp_path: Path) -> None:
    docs = [f"Document number {i}." for i in range(5)]
    assert not any(is_validation(d, 0, 0.001) for d in docs)
    m = prepare_shards(docs, tok, tmp_path / "ds", val_fraction=0.001)
    assert (m["splits"]["train"]["documents"], m["splits"]["val"]["documents"]) == (4, 1)
    assert tok.decode(TokenShards(tmp_path / "ds", "val")[:]) == "Document number 4.<|eos|>"


def test_atomic_write_and_overwrite(tok: StudioTokenizer, tmp_path: Path) -> None:
    out = tmp_path / "ds"

    def failing() -> Iterator[str]:
        yield "one document"
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError):
        prepare_shards(failing(), tok, out, batch_size=1)
    assert list(tmp_path.iterdir()) == []  # nothing half-written

    prepare_shards(["old text"] * 3, tok, out, val_fraction=0.0)
    with pytest.raises(ShardError, match="overwrite=True"):
        prepare_shards(["new text"] * 3, tok, out, val_fraction=0.0)
    prepare_shards(["new text"] * 3, tok, out, val_fraction=0.0, overwrite=True)
    assert tok.decode(TokenShards(out, "train")[:]).startswith("new text")
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_dtype_choice_and_errors(tmp_path: Path) -> None:
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    with pytest.raises(ShardError, match="prepare"):
        TokenShards(tmp_path, "train")
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ShardError, match="manifest"):
        TokenShards(tmp_path, "train")


def _watching_stream(docs: list[str], parent: Path, name: str, check_at: int) -> Iterator[str]:
    """Yields ``docs``; when asked for document ``check_at``, earlier ones must already be on disk."""
    for i, d in enumerate(docs):
        if i == check_at:
            written = sum(f.stat().st_size for f in parent.glob(f".{name}.tmp-*/*.bin"))
            assert written > 0, "prepare_shards read ahead instead of streaming"
        yield d


def test_prepare_streams_documents(tok: StudioTokenizer, austen_sample: list[str], tmp_path: Path) -> None:
    stream = _watching_stream(austen_sample, tmp_path, "ds", check_at=12)
    m = prepare_shards(stream, tok, tmp_path / "ds", val_fraction=0.2, batch_size=2)
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == len(austen_sample)


@pytest.mark.slow
def test_worker_pool_gives_identical_shards(tok: StudioTokenizer, austen_sample: list[str], tmp_path: Path) -> None:
    stream = _watching_stream(austen_sample, tmp_path, "a", check_at=20)  # 4 batches of 2 in flight at most
    a = prepare_shards(stream, tok, tmp_path / "a", val_fraction=0.2, num_workers=2, batch_size=2)
    b = prepare_shards(austen_sample, tok, tmp_path / "b", val_fraction=0.2)
    assert a == b
    assert np.array_equal(TokenShards(tmp_path / "a", "train")[:], TokenShards(tmp_path / "b", "train")[:])


# --------------------------------------------------------------------------------------------
# Sampler
# --------------------------------------------------------------------------------------------

def _take(sampler: PackedSampler, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(sampler) for _ in range(n)]


def test_batches_are_packed_windows(dataset: Path, tok: StudioTokenizer) -> None:
    shards = TokenShards(dataset, "train")
    flat = torch.from_numpy(shards[:].astype(np.int64))
    s = PackedSampler(shards, seq_len=64, micro_batch_size=3, seed=5)
    windows = {tuple(flat[c * 64:(c + 1) * 64 + 1].tolist()) for c in range(s.num_chunks)}
    for inputs, targets in _take(s, 4):
        assert inputs.shape == targets.shape == (3, 64) and inputs.dtype == torch.long
        assert torch.equal(inputs[:, 1:], targets[:, :-1])
        for row_in, row_t in zip(inputs, targets):
            assert tuple(row_in.tolist()) + (row_t[-1].item(),) in windows


def test_epoch_visits_each_chunk_once(dataset: Path) -> None:
    shards = TokenShards(dataset, "train")
    s = PackedSampler(shards, seq_len=256, micro_batch_size=4, seed=0)
    starts = {tuple(shards.read(c * 256, 8).tolist()): c for c in range(s.num_chunks)}
    seen = [starts[tuple(row[:8].tolist())] for x, _ in _take(s, s.steps_per_epoch) for row in x]
    assert len(seen) == len(set(seen)) == s.steps_per_epoch * 4
    assert s.epoch == 0
    next(s)
    assert s.epoch == 1 and s.state_dict()["position"] == 4
    assert not np.array_equal(s.permutation(0), s.permutation(1))


@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_split_equals_big_batch(dataset: Path, world_size: int) -> None:
    shards = TokenShards(dataset, "train")
    mb, L = 2, 128
    single = PackedSampler(shards, L, mb * world_size, seed=3)
    ranks = [PackedSampler(shards, L, mb, rank=r, world_size=world_size, seed=3) for r in range(world_size)]
    steps = single.steps_per_epoch + 3  # crosses an epoch boundary
    for step in range(steps):
        big_x, big_y = next(single)
        parts = [next(r) for r in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), big_x), step
        assert torch.equal(torch.cat([p[1] for p in parts]), big_y), step
        assert all(r.state_dict() == single.state_dict() for r in ranks)
    assert single.epoch == 1


def test_exact_resume(dataset: Path) -> None:
    shards = TokenShards(dataset, "train")
    ref = PackedSampler(shards, 128, 4, seed=11)
    steps = ref.steps_per_epoch
    _take(ref, steps - 2)
    state = ref.state_dict()
    assert state == {"epoch": 0, "position": (steps - 2) * 4, "seed": 11}
    expected = _take(ref, 5)  # crosses into epoch 1
    resumed = PackedSampler(shards, 128, 4, seed=999)  # the seed comes back from the state
    resumed.load_state_dict(json.loads(json.dumps(state)))  # survives a JSON round trip
    got = _take(resumed, 5)
    for (a, b), (c, d) in zip(expected, got):
        assert torch.equal(a, c) and torch.equal(b, d)
    other_seed = PackedSampler(shards, 128, 4, seed=12)
    assert not torch.equal(next(other_seed)[0], next(PackedSampler(shards, 128, 4, seed=11))[0])


def test_resume_on_more_ranks(dataset: Path) -> None:
    shards = TokenShards(dataset, "train")
    one = PackedSampler(shards, 128, 4, seed=2)
    _take(one, 3)
    state = one.state_dict()
    expected = next(one)[0]
    two = [PackedSampler(shards, 128, 2, rank=r, world_size=2) for r in range(2)]
    for s in two:
        s.load_state_dict(state)
    assert torch.equal(torch.cat([next(s)[0] for s in two]), expected)
    with pytest.raises(ValueError, match="multiple"):
        PackedSampler(shards, 128, 3).load_state_dict({"epoch": 0, "position": 4, "seed": 0})


def test_validation_batches(dataset: Path) -> None:
    train = TokenShards(dataset, "train")
    val_flat = torch.from_numpy(TokenShards(dataset, "val")[:].astype(np.int64))
    s = PackedSampler(train, 64, 2, seed=0)
    first = s.val_batches(3)
    _take(s, 5)  # training progress does not change validation
    again = s.val_batches(3)
    assert len(first) == 3
    for (a, b), (c, d) in zip(first, again):
        assert torch.equal(a, c) and torch.equal(b, d)
    # in order, no shuffle: batch i row j is chunk 2 i + j
    assert torch.equal(first[1][0][1], val_flat[3 * 64:4 * 64])
    assert torch.equal(first[1][1][1], val_flat[3 * 64 + 1:4 * 64 + 1])
    # ranks split validation like training
    ranks = [PackedSampler(train, 64, 1, rank=r, world_size=2) for r in range(2)]
    for i, (x, _) in enumerate(first):
        assert torch.equal(torch.cat([r.val_batches(3)[i][0] for r in ranks]), x)
    available = (len(val_flat) - 1) // 64 // 2
    assert len(s.val_batches(10_000)) == available


def test_sampler_errors(dataset: Path, tok: StudioTokenizer, tmp_path: Path) -> None:
    shards = TokenShards(dataset, "train")
    with pytest.raises(ShardError, match="lower seq_len"):
        PackedSampler(shards, seq_len=len(shards), micro_batch_size=1)
    with pytest.raises(ValueError, match="rank"):
        PackedSampler(shards, 64, 2, rank=2, world_size=2)
    prepare_shards(["tiny text"] * 400, tok, tmp_path / "ds", val_fraction=0.0)
    s = PackedSampler(TokenShards(tmp_path / "ds", "train"), 16, 2)
    with pytest.raises(ShardError, match="val_fraction"):
        s.val_batches(1)


def test_from_config(dataset: Path) -> None:
    cfg = DataConfig(dataset_dir=str(dataset), seq_len=32, micro_batch_size=2, seed=4)
    s = PackedSampler.from_config(cfg, rank=1, world_size=2)
    ref = PackedSampler(TokenShards(dataset, "train"), 32, 2, rank=1, world_size=2, seed=4)
    assert torch.equal(next(s)[0], next(ref)[0])
    assert s.tokens_per_step == 2 * 2 * 32


def test_docstring_examples() -> None:
    import doctest

    from training.core.data import sampler, shards

    assert doctest.testmod(shards).failed == 0
    assert doctest.testmod(sampler).failed == 0
