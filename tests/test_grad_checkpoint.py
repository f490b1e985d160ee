"""Activation checkpointing (``--grad-checkpoint``): the same training step with fewer stored activations."""

from __future__ import annotations

import contextlib
import copy

import torch

import efficientdet
import efficientdet.layers.checkpoint as ckpt_mod


def _step(model: torch.nn.Module, images: torch.Tensor, checkpoint: bool) -> tuple[torch.Tensor, dict, dict]:
    """One train-mode forward/backward from a fixed RNG state (stochastic depth on); loss, grads, BN buffers."""
    model.grad_checkpoint = checkpoint
    torch.manual_seed(123)
    cls, box = model(images)
    loss = sum((t.float() ** 2).mean() for t in cls + box)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    return loss.detach(), grads, buffers


def test_checkpointed_step_equals_the_plain_step():
    """Same loss, gradients and BN statistics, with stochastic depth active (D0: drop-path 0.2, SE, SiLU)."""
    model = efficientdet.create_model("efficientdet-d0", num_classes=3, image_size=64).train()
    assert model.backbone.blocks[3][1].drop_path.p > 0
    images = torch.randn(2, 3, 64, 64)
    loss_a, grads_a, bufs_a = _step(copy.deepcopy(model), images, checkpoint=False)
    loss_b, grads_b, bufs_b = _step(copy.deepcopy(model), images, checkpoint=True)
    assert torch.equal(loss_a, loss_b)
    for k in grads_a:
        assert torch.allclose(grads_a[k], grads_b[k], rtol=1e-5, atol=1e-7), k
    for k in bufs_a:  # recomputation did not update the running statistics a second time
        assert torch.equal(bufs_a[k], bufs_b[k]), k
    assert int(bufs_b["backbone.blocks.2.0.expand.bn.num_batches_tracked"]) == 1


def test_without_the_bn_guard_recomputation_would_update_statistics_twice(monkeypatch):
    """Why the guard exists: a plain non-reentrant checkpoint moves BN running statistics twice per step."""
    monkeypatch.setattr(ckpt_mod, "_frozen_bn_statistics", lambda module: contextlib.nullcontext())
    model = efficientdet.create_model("efficientdet-lite0", num_classes=1, image_size=64).train()
    images = torch.randn(2, 3, 64, 64)
    _, _, plain = _step(copy.deepcopy(model), images, checkpoint=False)
    _, _, doubled = _step(copy.deepcopy(model), images, checkpoint=True)
    key = "backbone.blocks.2.0.expand.bn"
    assert int(doubled[f"{key}.num_batches_tracked"]) == 2
    assert not torch.equal(plain[f"{key}.running_mean"], doubled[f"{key}.running_mean"])


def _saved_bytes(model: torch.nn.Module, images: torch.Tensor) -> int:
    """Bytes of distinct tensors autograd keeps for backward (checkpointed regions keep only their inputs)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        cls, box = model(images)
    sum(t.sum() for t in cls + box).backward()
    return sum(seen.values())


def test_checkpointing_keeps_far_fewer_activations():
    model = efficientdet.create_model("efficientdet-d0", num_classes=3, image_size=128).train()
    images = torch.randn(2, 3, 128, 128)  # P7 is 1x1 here: BN needs two images
    plain = _saved_bytes(model, images)
    model.grad_checkpoint = True
    checkpointed = _saved_bytes(model, images)
    print(f"saved for backward: {plain / 2**20:.1f} MiB plain, {checkpointed / 2**20:.1f} MiB checkpointed")
    assert checkpointed < 0.5 * plain, (plain, checkpointed)


def test_checkpointing_is_off_outside_training():
    model = efficientdet.create_model("efficientdet-lite0", num_classes=1, image_size=64)
    model.grad_checkpoint = True
    assert model.backbone.grad_checkpoint and model.fpn.grad_checkpoint
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = model.eval()(images)[0][0]
    model.grad_checkpoint = False
    with torch.no_grad():
        b = model(images)[0][0]
    assert torch.equal(a, b)


def test_train_flag_gives_the_same_run(tmp_path):
    from test_train import history, raccoon_subset, tiny_config

    from efficientdet.cli import build_parser, train_config
    from efficientdet.engine.train import train
    from efficientdet.models.weights import read_file

    args = build_parser().parse_args(["train", "--data", "x", "--grad-checkpoint", "--sync-bn"])
    cfg = train_config(args)
    assert cfg.grad_checkpoint and cfg.sync_bn
    data = raccoon_subset(tmp_path, n_train=2, n_val=1)
    kw = dict(batch_size=2, img_size=64, max_steps=1, scale_range=(0.5, 1.5), hflip=0.5)
    train(tiny_config(tmp_path, data, output=str(tmp_path / "plain"), **kw))
    train(tiny_config(tmp_path, data, output=str(tmp_path / "ckpt"), grad_checkpoint=True, **kw))
    assert history(tmp_path / "plain")[0]["train_loss"] == history(tmp_path / "ckpt")[0]["train_loss"]
    a = read_file(tmp_path / "plain" / "last.pt")["train_state"]["model"]
    b = read_file(tmp_path / "ckpt" / "last.pt")["train_state"]["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
