import pytest
import torch

from napo.recsys.data import left_align, pad_histories
from napo.recsys.models import Caser, GRU4Rec, Popularity, SASRec, build_model

HISTORIES = [[3, 1, 4], [5], [], [2, 6, 0, 7, 1, 8]]


def _right_padded(histories, width):
    out = torch.zeros(len(histories), width, dtype=torch.long)
    for i, h in enumerate(histories):
        if h:
            out[i, : len(h)] = torch.tensor(h) + 1
    return out


def _models():
    torch.manual_seed(0)
    return [SASRec(10, hidden=8, num_blocks=2, num_heads=2, max_len=6),
            GRU4Rec(10, hidden=8, num_blocks=2, max_len=6),
            Caser(10, hidden=8, max_len=6)]


def test_pad_histories_and_left_align():
    left = torch.from_numpy(pad_histories(HISTORIES, 6))
    assert left[0].tolist() == [0, 0, 0, 4, 2, 5]
    assert left[2].tolist() == [0] * 6
    assert torch.equal(left_align(_right_padded(HISTORIES, 6)), left)
    assert torch.equal(left_align(left), left)
    # longer histories keep their most recent items
    assert pad_histories([[1, 2, 3]], 2).tolist() == [[3, 4]]


@pytest.mark.parametrize("model", _models(), ids=lambda m: type(m).__name__)
def test_user_vector_ignores_padding_layout(model):
    model.eval()
    left = torch.from_numpy(pad_histories(HISTORIES, 6))
    right = _right_padded(HISTORIES, 6)
    wide = torch.from_numpy(pad_histories(HISTORIES, 9))  # more padding in front (truncated to 6)
    with torch.no_grad():
        a, b, c = model.encode(left), model.encode(right), model.encode(wide)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    assert torch.isfinite(a).all()  # the empty history too


@pytest.mark.parametrize("cls", [SASRec, GRU4Rec])
def test_user_vector_is_the_unpadded_forward_pass(cls):
    torch.manual_seed(1)
    model = cls(10, hidden=8, max_len=6).eval()
    left = torch.from_numpy(pad_histories(HISTORIES, 6))
    with torch.no_grad():
        batch = model.encode(left)
        for i, h in enumerate(HISTORIES):
            if not h:
                continue
            alone = model.encode_all(torch.tensor([h]) + 1)[0, -1]  # no padding at all
            torch.testing.assert_close(batch[i], alone)


@pytest.mark.parametrize("cls", [SASRec, GRU4Rec])
def test_causal_no_peeking(cls):
    torch.manual_seed(2)
    model = cls(10, hidden=8, max_len=6).eval()
    x = torch.tensor([[1, 2, 3, 4, 5, 6]])
    y = x.clone()
    y[0, -1] = 9
    with torch.no_grad():
        hx, hy = model.encode_all(x), model.encode_all(y)
    torch.testing.assert_close(hx[:, :-1], hy[:, :-1])
    assert not torch.allclose(hx[:, -1], hy[:, -1])


def test_scores_are_dot_products():
    model = _models()[0].eval()
    seq = torch.from_numpy(pad_histories(HISTORIES, 6))
    with torch.no_grad():
        h = model.encode(seq)
        full = model(seq)
        some = model.score(h, torch.tensor([[1, 2], [3, 4], [5, 6], [7, 8]]))
    assert full.shape == (4, 10)
    torch.testing.assert_close(some[1], full[1, [3, 4]])
    torch.testing.assert_close(full[0, 7], h[0] @ model.item_vectors()[7])


def test_popularity_ranks_by_count():
    model = Popularity(4, torch.tensor([5, 0, 9, 1]))
    scores = model(torch.zeros(2, 3, dtype=torch.long))
    assert scores.argsort(dim=1, descending=True)[0].tolist() == [2, 0, 3, 1]
    assert torch.equal(scores[0], scores[1])


def test_build_model_unknown_name():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("BERT4Rec", 5)
