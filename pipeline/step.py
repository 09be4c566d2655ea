"""One SGD step of every method (CE, LSR, Tf-KD reg, KD from a cache or a teacher run online).

Gather + augmentation on the device, forward, loss, backward, SGD and the epoch's running sums,
with no host sync: the same code runs eagerly (CPU, torchrun, --no-graph) or captured once in a
CUDA graph and replayed (capture.py). Its inputs therefore live in tensors that outlive a step:
the sample indices, the epoch (for replay-cache lookups), the epoch's augmentation seeds and, on
the graph path, the learning rate.
"""
import torch

from . import augment, capture


def set_lr(opt, lr):
    for group in opt.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(lr)  # the captured optimizer reads it from device memory
        else:
            group["lr"] = lr


def optimizer_state(opt):
    """opt.state_dict() with plain-float learning rates, whichever path trained it."""
    state = opt.state_dict()
    state["param_groups"] = [dict(g, lr=float(g["lr"])) for g in state["param_groups"]]
    return state


class TrainStep:
    """step(index, lr, weight) trains on samples `index` of the epoch set by start_epoch().

    `net` runs any batch shape eagerly; `fast_net` (maybe compiled) runs full batches of
    `batch_size`, captured in a CUDA graph when `graph`. A last partial batch runs eagerly.
    Under torchrun both are the DDP-wrapped module (train.fit passes no other).
    `weight` scales this rank's loss so that DDP's gradient average is the global-batch mean.
    """

    def __init__(self, net, opt, objective, ddata, spec, teacher=None, batch_size=128, graph=False, fast_net=None):
        dev = ddata.device
        self.net, self.fast_net = net, net if fast_net is None else fast_net
        self.opt, self.objective, self.ddata, self.spec, self.teacher = opt, objective, ddata, spec, teacher
        self.batch_size, self.lr = batch_size, None
        self.index = torch.zeros(batch_size, dtype=torch.int64, device=dev)
        self.epoch = torch.zeros((), dtype=torch.int64, device=dev)
        self.seeds = torch.zeros(augment.STREAMS, dtype=torch.int64, device=dev)
        self.steps = torch.zeros((), dtype=torch.int64, device=dev)
        self.loss_sum = torch.zeros((), device=dev)
        self.correct = torch.zeros((), dtype=torch.int64, device=dev)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=dev)  # step of the first NaN/inf loss
        if graph:
            for group in opt.param_groups:
                group["lr"] = torch.tensor(float(group["lr"]), device=dev)
        self.captured = capture.Graphed(lambda: self._step(self.fast_net, self.index, 1.0), graph,
                                        what="the training step")

    def start_epoch(self, key, epoch):
        self.epoch.fill_(epoch)
        self.seeds.copy_(torch.tensor(augment.seeds(key, epoch)))
        for t in (self.steps, self.loss_sum, self.correct):
            t.zero_()
        self.first_bad.fill_(-1)

    def __call__(self, index, lr, weight=1.0):
        if lr != self.lr:  # it changes only in warm-up and at milestones
            set_lr(self.opt, lr)
            self.lr = lr
        full = len(index) == self.batch_size and weight == 1.0
        if full and self.captured.enabled:
            self.index.copy_(index)
            self.captured()
        else:
            self._step(self.fast_net if full else self.net, index, weight)

    def _step(self, net, index, weight):
        x, y = self.ddata.train_views(index, self.seeds, self.spec)
        t_logits = self.teacher.logits(self.epoch, index, x) if self.objective.needs_teacher else None
        out = net(x)
        loss = self.objective(out, y, t_logits)
        self.opt.zero_grad(set_to_none=True)
        (loss * weight if weight != 1.0 else loss).backward()
        self.opt.step()
        loss = loss.detach()
        self.steps += 1
        self.loss_sum += loss * len(index)
        self.correct += (out.detach().argmax(1) == y).sum()
        self.first_bad.copy_(torch.where((self.first_bad < 0) & ~torch.isfinite(loss), self.steps, self.first_bad))
