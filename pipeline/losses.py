"""Every method's loss. All methods share one loop; they differ only in the target signal.

Two forms:
- `reference` (default): exactly what the reference code computed, and so what produced the
  paper's numbers. Its KL terms use nn.KLDivLoss's default 'mean' reduction, i.e. the summed KL
  divided by batch x classes (the per-sample KL / K), and Tf-KD reg softens only the virtual
  teacher. Its alpha, T and multiplier values are tuned for this scaling.
- `paper`: the paper's equations: per-sample (batch-mean) KL, the temperature on both sides, no
  multiplier and no T^2 (Eq. 3 and Eq. 9). The reference's alpha/T do not carry over unchanged.

Targets are precomputed [K, K] tables indexed by the label, never built per sample.
"""
import torch
import torch.nn.functional as F


def kl_to(target_probs, student_log_probs, reduction):
    """KL(target || student) per nn.KLDivLoss: 'mean' divides by every element, 'batchmean' by rows."""
    kl = torch.xlogy(target_probs, target_probs) - target_probs * student_log_probs
    return kl.sum() / (kl.numel() if reduction == "mean" else kl.shape[0])


def label_smoothing_table(k, eps):
    """The reference's LSR target: 1-eps on the true class, eps/(K-1) on each other class."""
    table = torch.full((k, k), eps / (k - 1))
    return table.fill_diagonal_(1 - eps)


def virtual_teacher_table(k, correct_prob, temperature):
    """Tf-KD reg's manual teacher softened by T: softmax(p_d / T), p_d = a on the true class."""
    p_d = torch.full((k, k), (1 - correct_prob) / (k - 1)).fill_diagonal_(correct_prob)
    return torch.softmax(p_d / temperature, dim=1)


class Objective(torch.nn.Module):
    """loss = objective(student_logits, labels, teacher_logits=None); fp32 maths throughout.

    Its settings are the run's own, read by name from `cfg` (a config.RunConfig): method, alpha,
    temperature, multiplier, label_smoothing, correct_prob and loss_form. The [K, K] target table
    of LSR and Tf-KD reg is a buffer, so .to(device) moves it with the module."""

    def __init__(self, cfg, num_classes):
        super().__init__()
        self.cfg, self.num_classes = cfg, num_classes
        table = None
        if cfg.method == "lsr":
            table = label_smoothing_table(num_classes, cfg.label_smoothing)
        elif cfg.method == "reg":
            table = virtual_teacher_table(num_classes, cfg.correct_prob, cfg.temperature)
        self.register_buffer("table", table)

    @property
    def method(self):
        return self.cfg.method

    @property
    def needs_teacher(self):
        return self.cfg.method == "kd"

    def forward(self, logits, labels, teacher_logits=None):
        s, cfg = logits.float(), self.cfg
        if cfg.method == "ce":
            return F.cross_entropy(s, labels)
        if cfg.method == "lsr":
            return -(self.table[labels] * F.log_softmax(s, dim=1)).sum(1).mean()
        a, t, ref = cfg.alpha, cfg.temperature, cfg.loss_form == "reference"
        if cfg.method == "reg":
            target = self.table[labels]
            if ref:  # student not softened; weight alpha * multiplier on the 'mean' KL
                soft = cfg.multiplier * kl_to(target, F.log_softmax(s, dim=1), "mean")
            else:
                soft = kl_to(target, F.log_softmax(s / t, dim=1), "batchmean")
        else:  # kd: normal, reversed, defective and self-training alike
            target = F.softmax(teacher_logits.detach().float() / t, dim=1)  # a target, never trained
            student = F.log_softmax(s / t, dim=1)
            if ref:
                soft = t * t * cfg.multiplier * kl_to(target, student, "mean")
            else:
                soft = kl_to(target, student, "batchmean")
        hard = F.cross_entropy(s, labels) if a < 1 else s.new_zeros(())
        return (1 - a) * hard + a * soft
