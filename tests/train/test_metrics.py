"""Metrics over a split spread across ranks equal the same metrics computed in one place."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import binary_auroc

from ctr.config import BestMetric, TrainerConfig
from ctr.parallel.process_group import init_distributed, shutdown
from ctr.train.metrics import HIGHER_IS_BETTER, BinnedAUROC, ClickMetrics, auc_bins_setting, is_better
from tests.multiprocess import run_ranks

SIZES = (700, 333)  # uneven shares, as the last evaluation step gives
BINS = 64  # coarse enough that binned and exact AUC differ


def _data():
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(sum(SIZES), generator=generator) * 2
    labels = (torch.rand(sum(SIZES), generator=generator) < torch.sigmoid(logits + 0.5)).float()
    return logits, labels


def _rank_metrics(out_path: str) -> None:
    env = init_distributed("gloo")
    try:
        logits, labels = _data()
        start = sum(SIZES[: env.rank])
        mine = slice(start, start + SIZES[env.rank])
        metrics = ClickMetrics(env.device)
        binned = ClickMetrics(env.device, auc_bins=BINS)
        for chunk in torch.split(torch.arange(mine.start, mine.stop), 128):  # several updates, as batches
            metrics.update(logits[chunk], labels[chunk])
            binned.update(logits[chunk], labels[chunk])
        result = {**metrics.compute(), "binned_auc": binned.compute()["auc"]}
        if env.is_main:
            Path(out_path).write_text(json.dumps(result))
    finally:
        shutdown()


def test_metrics_across_two_ranks_equal_metrics_on_all_predictions_in_one_place(tmp_path):
    run_ranks(_rank_metrics, 2, str(tmp_path / "metrics.json"))
    distributed = json.loads((tmp_path / "metrics.json").read_text())
    logits, labels = _data()
    probabilities = torch.sigmoid(logits)
    rate = labels.mean().item()
    log_loss = F.binary_cross_entropy_with_logits(logits, labels).item()
    entropy = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
    expected = {
        "auc": binary_auroc(probabilities, labels.long()).item(),
        "log_loss": log_loss,
        "normalized_entropy": log_loss / entropy,
        "calibration": probabilities.mean().item() / rate,
        "accuracy": ((probabilities > 0.5).float() == labels).float().mean().item(),
        "positive_rate": rate,
    }
    for key, value in expected.items():
        assert distributed[key] == pytest.approx(value, rel=1e-5), key
    in_one_place = BinnedAUROC(BINS)
    in_one_place.update(probabilities, labels.long())
    assert distributed["binned_auc"] == pytest.approx(in_one_place.compute().item(), rel=1e-12)
    # A per-rank average would differ: the check above has teeth.
    first = slice(0, SIZES[0])
    assert binary_auroc(probabilities[first], labels[first].long()).item() != pytest.approx(expected["auc"], rel=1e-5)


def test_better_follows_each_metrics_direction_for_every_best_metric_choice():
    assert is_better("auc", 0.8, 0.7) and not is_better("log_loss", 0.5, 0.4)
    assert set(HIGHER_IS_BETTER) == set(BestMetric)


# trainer.auc=binned with the default trainer.auc_bins, on 200,000 CTR-like predictions
# (positive rate ~0.1): measured |binned - exact| = 7e-8 (bound 1.7e-5); 16 bins: 1.3e-2.
BINNED_AUC_TOLERANCE = 1e-5


def _ctr_like(rows: int):
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(rows, generator=generator) * 1.2 - 2.5
    noisy = logits + 0.3 * torch.randn(rows, generator=generator)
    return torch.sigmoid(logits), (torch.rand(rows, generator=generator) < torch.sigmoid(noisy)).long()


@pytest.mark.parametrize("bins", [16, TrainerConfig.auc_bins])
def test_binned_auc_is_within_its_bound_of_the_exact_auc(bins):
    probabilities, labels = _ctr_like(200_000)
    exact = binary_auroc(probabilities.double(), labels).item()
    binned = BinnedAUROC(bins)
    for chunk in torch.split(torch.arange(len(labels)), 8192):
        binned.update(probabilities[chunk], labels[chunk])
    error = abs(binned.compute().item() - exact)
    assert error <= binned.error_bound().item()
    if bins == TrainerConfig.auc_bins:
        assert error < BINNED_AUC_TOLERANCE
    else:  # 16 bins: the bound and the tolerance have teeth
        assert error > BINNED_AUC_TOLERANCE


def test_auc_setting_names_the_key_it_rejects():
    assert auc_bins_setting("exact", 65536) is None and auc_bins_setting("binned", 128) == 128
    with pytest.raises(ValueError, match="trainer.auc_bins=1"):
        auc_bins_setting("binned", 1)
