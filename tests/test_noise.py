"""Label noise: synthetic flips against their transition matrices, and CIFAR-N label files."""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from labelenh.data import (
    CIFARN_ALIASES,
    PAIRFLIP_CIFAR10,
    apply_noise,
    load_noisy_labels,
    parse_noise,
    transition_matrix,
)
from labelenh.errors import LabelenhError

N = 20_000


def balanced(n: int = N, k: int = 10) -> torch.Tensor:
    return torch.arange(n) % k


def empirical_transition(clean: torch.Tensor, noisy: torch.Tensor, k: int) -> torch.Tensor:
    counts = torch.zeros(k, k, dtype=torch.float64)
    counts.index_put_(
        (clean, noisy), torch.ones(clean.shape[0], dtype=torch.float64), accumulate=True
    )
    return counts / counts.sum(dim=1, keepdim=True)


@pytest.mark.parametrize("eps", [0.2, 0.4, 0.8])
def test_symmetric_rate_and_matrix(eps: float) -> None:
    clean = balanced()
    noisy = apply_noise(clean, f"symmetric:{eps}", 10, seed=0)
    rate = (noisy != clean).double().mean().item()
    # A flip never lands on the original class, so the realised rate is eps (not eps*(K-1)/K).
    assert abs(rate - eps) < 4 * math.sqrt(eps * (1 - eps) / N)
    emp = empirical_transition(clean, noisy, 10)
    p = transition_matrix("symmetric", eps, 10)
    assert torch.allclose(p.sum(dim=1), torch.ones(10, dtype=torch.float64))
    assert p[0, 0] == pytest.approx(1 - eps) and p[0, 1] == pytest.approx(eps / 9)
    tol = 4 * torch.sqrt(p * (1 - p) / (N / 10))  # binomial sd per entry, 2000 rows per class
    assert ((emp - p).abs() <= tol + 1e-12).all()


def test_symmetric_full_flip_never_keeps_label() -> None:
    clean = balanced(5000, 7)
    noisy = apply_noise(clean, "symmetric:1.0", 7, seed=3)
    assert (noisy != clean).all()
    assert ((noisy >= 0) & (noisy < 7)).all()
    emp = empirical_transition(clean, noisy, 7)
    assert emp.diagonal().eq(0).all() and (emp + torch.eye(7) > 0.1).all()  # every other class hit


def test_pairflip_follows_pairing() -> None:
    partner = torch.tensor(PAIRFLIP_CIFAR10)
    assert torch.equal(partner[partner], torch.arange(10))  # a two-way pairing
    assert {(0, 2), (1, 9), (3, 5), (4, 7), (6, 8)} == {
        tuple(sorted((i, int(partner[i])))) for i in range(10)
    }
    clean = balanced()
    noisy = apply_noise(clean, "pairflip:0.45", 10, seed=1)
    changed = noisy != clean
    assert torch.equal(noisy[changed], partner[clean[changed]])
    assert abs(changed.double().mean().item() - 0.45) < 4 * math.sqrt(0.45 * 0.55 / N)
    assert torch.equal(apply_noise(clean, "pairflip:1", 10, seed=1), partner[clean])
    p = transition_matrix("pairflip", 0.3, 10)
    assert p[0, 2] == pytest.approx(0.3) and p[0, 0] == pytest.approx(0.7)
    assert p[0].count_nonzero() == 2
    with pytest.raises(LabelenhError, match="10 classes"):
        apply_noise(torch.arange(100), "pairflip:0.2", 100, seed=0)


def test_seeded() -> None:
    clean = balanced(2000)
    a = apply_noise(clean, "symmetric:0.3", 10, seed=7)
    assert torch.equal(a, apply_noise(clean, "symmetric:0.3", 10, seed=7))
    assert not torch.equal(a, apply_noise(clean, "symmetric:0.3", 10, seed=8))
    assert torch.equal(apply_noise(clean, "symmetric:0", 10, seed=7), clean)
    assert torch.equal(clean, balanced(2000))  # input untouched


@pytest.mark.parametrize(
    "spec,parsed",
    [("symmetric:0.4", ("symmetric", 0.4)), ("sym:0", ("symmetric", 0.0)), ("pairflip:1", ("pairflip", 1.0)),
     ("PAIR:0.45", ("pairflip", 0.45))],
)  # fmt: skip
def test_parse_noise(spec: str, parsed: tuple[str, float]) -> None:
    assert parse_noise(spec) == parsed


@pytest.mark.parametrize("spec", ["symmetric", "symmetric:", "symmetric:x", "symmetric:1.5", "symmetric:-0.1",
                                  "symmetric:nan", "uniform:0.2", "0.2", ""])  # fmt: skip
def test_bad_noise_specs(spec: str) -> None:
    with pytest.raises(LabelenhError):
        apply_noise(balanced(10), spec, 10, seed=0)


def test_labels_out_of_range_refused() -> None:
    with pytest.raises(LabelenhError, match="outside"):
        apply_noise(torch.tensor([0, 10]), "symmetric:0.1", 10, seed=0)


# ---------------------------------------------------------------- CIFAR-N files


def cifarn_dict(n: int = 50) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 10, n)
    return {
        "clean_label": clean,
        "aggre_label": clean.copy(),
        "worse_label": (clean + 1) % 10,
        "random_label1": rng.integers(0, 10, n),
        "random_label2": rng.integers(0, 10, n),
        "random_label3": rng.integers(0, 10, n),
    }


@pytest.mark.parametrize("legacy", [False, True])
def test_cifarn_pt_with_numpy_arrays(tmp_path: Path, legacy: bool) -> None:
    d = cifarn_dict()
    path = tmp_path / "CIFAR-10_human.pt"
    torch.save(d, path, _use_new_zipfile_serialization=not legacy)
    for alias, key in [("worst", "worse_label"), ("aggre", "aggre_label"), ("rand2", "random_label2"),
                       ("clean", "clean_label"), ("random_label3", "random_label3")]:  # fmt: skip
        labels, rec = load_noisy_labels(f"{path}:{alias}", 50, 10)
        assert labels.dtype == torch.int64 and labels.tolist() == d[key].tolist()
        assert rec == {"file": str(path), "key": key}
    with pytest.raises(LabelenhError, match="worse_label"):  # several arrays, no key: list them
        load_noisy_labels(str(path), 50, 10)
    with pytest.raises(LabelenhError, match="no 'rand9'"):
        load_noisy_labels(f"{path}:rand9", 50, 10)
    with pytest.raises(LabelenhError, match="50 labels but the full train set has 49"):
        load_noisy_labels(f"{path}:worst", 49, 10)


def test_cifar100n_aliases(tmp_path: Path) -> None:
    path = tmp_path / "CIFAR-100_human.pt"
    noisy = np.arange(30) % 100
    d = {
        "clean_label": np.zeros(30, np.int64),
        "noisy_label": noisy,
        "noisy_coarse_label": noisy % 20,
    }
    torch.save(d, path)
    assert load_noisy_labels(f"{path}:noisy100", 30, 100)[0].tolist() == noisy.tolist()
    assert load_noisy_labels(f"{path}:clean100", 30, 100)[0].tolist() == [0] * 30
    cli_names = {"clean", "aggre", "worst", "rand1", "rand2", "rand3", "clean100", "noisy100"}
    assert set(CIFARN_ALIASES) >= cli_names


def test_other_label_files(tmp_path: Path) -> None:
    labels = np.arange(12) % 4
    torch.save(torch.from_numpy(labels), tmp_path / "t.pt")
    np.save(tmp_path / "l.npy", labels.reshape(-1, 1))  # (N, 1) as in legacy label files
    np.savez(tmp_path / "z.npz", noisy=labels)
    torch.save({"noise_label_train": torch.from_numpy(labels)}, tmp_path / "one.pt")
    for spec in ["t.pt", "l.npy", "z.npz:noisy", "z.npz", "one.pt"]:
        got, _ = load_noisy_labels(str(tmp_path / spec), 12, 4)
        assert got.tolist() == labels.tolist(), spec
    with pytest.raises(LabelenhError, match="single array"):
        load_noisy_labels(f"{tmp_path / 't.pt'}:worst", 12, 4)
    with pytest.raises(LabelenhError, match=r"outside \[0, 3\)"):
        load_noisy_labels(str(tmp_path / "t.pt"), 12, 3)
    np.save(tmp_path / "f.npy", labels.astype(np.float32))
    with pytest.raises(LabelenhError, match="integers"):
        load_noisy_labels(str(tmp_path / "f.npy"), 12, 4)
    with pytest.raises(LabelenhError, match="no file"):
        load_noisy_labels(str(tmp_path / "missing.pt:worst"), 12, 4)


def test_label_file_cannot_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    torch.save({"worse_label": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(LabelenhError, match="evil.pt"):
        load_noisy_labels(f"{tmp_path / 'evil.pt'}:worst", 3, 10)
    (tmp_path / "evil.npy").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(LabelenhError):
        load_noisy_labels(str(tmp_path / "evil.npy"), 3, 10)
    assert not marker.exists()
