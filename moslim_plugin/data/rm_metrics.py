"""The reward model's per-head losses and held-out metrics, shared by train-rm, evaluate-rm and the demo.

Labels are [N, K] level indices (`IGNORE` where a row has no rating for that head); logits and probabilities are
[N, K, Lmax], each head using its first `levels` entries.
"""

import torch
import torch.nn.functional as F

IGNORE = -100  # label of a head without a rating in this row


def head_losses(logits, labels, spec, class_weights=None, label_smoothing=0.0):
    """Cross-entropy per head over its own levels, rows without a label masked; None for a head with no label."""
    losses = []
    for k, levels in enumerate(spec.levels):
        mask = labels[:, k] != IGNORE
        if not mask.any():
            losses.append(None)
            continue
        weight = None if class_weights is None else class_weights[k].to(logits.device)
        losses.append(
            F.cross_entropy(logits[mask, k, :levels], labels[mask, k], weight=weight, label_smoothing=label_smoothing)
        )
    return losses


def balanced_class_weights(rows, spec) -> list[torch.Tensor]:
    """n / (levels * count) per class (sklearn's 'balanced'); a class never seen keeps weight 1."""
    weights = []
    for name, levels in zip(spec.names, spec.levels):
        counts = torch.zeros(levels)
        for row in rows:
            if row["labels"].get(name) is not None:
                counts[row["labels"][name]] += 1
        w = counts.sum() / (levels * counts.clamp(min=1))
        weights.append(torch.where(counts > 0, w, torch.ones_like(w)))
    return weights


def head_metrics(probs, labels, spec, prior_labels=None, bins: int = 10) -> dict:
    """Per head on labelled rows: accuracy, macro-F1 (classes present in labels or predictions), mean absolute
    level error of the argmax, expected calibration error of the argmax confidence (equal-width bins), mean
    negative log-likelihood, the confusion matrix [true][predicted], and two baselines a model must beat: always
    the majority class (accuracy) and always the class prior (NLL). The class prior and majority class come from
    `prior_labels` (the training labels) when given, else from `labels` themselves (an in-sample, harder bar)."""
    prior_labels = labels if prior_labels is None else prior_labels
    metrics = {}
    for k, (name, levels) in enumerate(zip(spec.names, spec.levels)):
        mask = labels[:, k] != IGNORE
        y, p = labels[mask, k], probs[mask, k, :levels]
        if y.numel() == 0:
            metrics[name] = {"n": 0}
            continue
        conf, pred = p.max(dim=-1)
        correct = (pred == y).float()
        f1s = []
        for c in range(levels):
            tp, fp, fn = ((pred == c) & (y == c)).sum(), ((pred == c) & (y != c)).sum(), ((pred != c) & (y == c)).sum()
            if tp + fp + fn > 0:
                f1s.append((2 * tp / (2 * tp + fp + fn)).item())
        edges = torch.linspace(0, 1, bins + 1)
        which = torch.bucketize(conf, edges[1:-1], right=True)
        ece = sum(
            (which == b).float().mean() * (conf[which == b].mean() - correct[which == b].mean()).abs()
            for b in range(bins)
            if (which == b).any()
        )
        seen = prior_labels[prior_labels[:, k] != IGNORE, k]
        # Add-one smoothing: a class absent from the prior labels must not give the prior an infinite NLL.
        prior = (torch.bincount(seen, minlength=levels)[:levels].double() + 1) / (seen.numel() + levels)
        majority = int(prior.argmax())
        confusion = torch.zeros(levels, levels, dtype=torch.long)
        confusion.index_put_((y, pred), torch.ones_like(y), accumulate=True)
        metrics[name] = {
            "n": int(y.numel()),
            "accuracy": correct.mean().item(),
            "macro_f1": sum(f1s) / len(f1s),
            "mae": (pred - y).abs().float().mean().item(),
            "ece": float(ece),
            "nll": -p.double().clamp_min(1e-12).log().gather(1, y.unsqueeze(1)).mean().item(),
            "majority_accuracy": (y == majority).float().mean().item(),
            "prior_nll": -prior.log()[y].mean().item(),
            "confusion": confusion.tolist(),
        }
    return metrics


def scalar_logs(metrics: dict) -> dict:
    return {f"eval/{n}/{k}": v for n, m in metrics.items() for k, v in m.items() if k != "confusion"}


@torch.no_grad()
def predict(model, loader, device):
    """Softmax probabilities [N, K, Lmax] and labels [N, K] over a loader, in order."""
    model.eval()
    probs, labels = [], []
    for inputs, batch_labels in loader:
        logits = model(**{k: v.to(device) for k, v in inputs.items()})
        probs.append(logits.float().softmax(-1).cpu())
        labels.append(batch_labels)
    model.train()
    return torch.cat(probs), torch.cat(labels)
