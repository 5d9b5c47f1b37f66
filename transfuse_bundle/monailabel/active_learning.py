"""MONAI Label active learning for TransFuse bundles: MC-dropout scoring and an ``epistemic`` strategy.

The stock ``monaibundle`` app (monailabel 0.8.5) computes epistemic scores with ``--conf epistemic_model
NAME`` but registers only the ``random`` and ``first`` strategies, and its scoring puts the whole network in
training mode: TransFuse then returns its three deep-supervision heads and its BatchNorm layers use the
statistics of the one image scored. This module is the thin layer on top of that app which
:func:`transfuse_bundle.monailabel.app.ensure_app` installs (the app's ``main.py`` subclasses the stock
``MyApp`` with :class:`ActiveLearningMixin`):

* scoring (``POST /scoring/NAME`` for each model of ``--conf epistemic_model``): each unlabelled image is
  preprocessed once and run ``epistemic_simulation_size`` times (default 5) with only the dropout layers in
  training mode (MC dropout; BatchNorm and the single-head eval output stay as in inference; the bundle's
  ``dropout`` is ``epistemic_dropout``, default 0.2). From the class probabilities of the samples it stores,
  in the datastore's image info: ``epistemic_entropy`` (mean over pixels of the entropy of the mean
  prediction), ``epistemic_mutual_information`` (that entropy minus the mean entropy of the samples: the
  part that comes from the samples disagreeing, BALD), ``epistemic_sample_std`` (mean standard deviation of
  the class probabilities across the samples) and ``epistemic_ts`` (the model file's time: an image is
  scored again only after the model changes). Samples that are all identical mean the dropout is not
  active: that image's scoring fails with an error saying so instead of storing a meaningless score.
  An image the model cannot process (a volume for a 2D model, say) is skipped with a one-line warning and
  listed under ``failed`` in the answer.
* strategies (``POST /activelearning/NAME``): ``epistemic`` returns the unlabelled image with the highest
  ``epistemic_entropy`` (MONAI Label's ``Epistemic`` class: among images served within the last day the
  least recently served comes first), ``epistemic_bald`` the same by ``epistemic_mutual_information``;
  ``random`` and ``first`` stay.
* batch inference (``POST /batch/infer/NAME``): as the stock app, except that an image the model cannot
  process is reported (``{"error": ...}`` in the answer, one warning line in the log) instead of stopping
  the batch, so one model can label every image of its kind in a datastore shared by several tasks.

The file imports only MONAI Label, MONAI, torch and numpy: ``ensure_app`` copies it into the app folder
(``transfuse_active_learning.py``) so that the server needs no ``transfuse_bundle`` installed.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Dict

import torch
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.tasks.activelearning.epistemic import Epistemic
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.utils.others.generic import name_to_device
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["ActiveLearningMixin", "McDropoutInferTask", "McDropoutScoring", "enable_mc_dropout",
           "uncertainty", "one_line", "STRATEGIES", "SCORE_KEYS"]

# strategy name -> datastore key it ranks by (highest first)
STRATEGIES = {"epistemic": "epistemic_entropy", "epistemic_bald": "epistemic_mutual_information"}
SCORE_KEYS = ("epistemic_entropy", "epistemic_mutual_information", "epistemic_sample_std")
# below this mean spread the samples count as identical (float32 noise is ~1e-7)
IDENTICAL_STD = 1e-6


def one_line(error: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` (at most ``limit`` characters), for logs and answers."""
    text = str(error).strip().splitlines()
    message = f"{type(error).__name__}: {text[0] if text else ''}"
    return message if len(message) <= limit else message[: limit - 3] + "..."


def enable_mc_dropout(network: nn.Module) -> int:
    """Puts the network in eval mode and only its dropout layers in training mode; returns how many there are."""
    network.eval()
    count = 0
    for module in network.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            module.train()
            count += 1
    return count


def uncertainty(logits: list[torch.Tensor]) -> Dict[str, float]:
    """Scores of one image from the logits of its MC samples, each ``(C, *spatial)``.

    One output channel is a sigmoid (probabilities ``[1 - p, p]``), several a softmax. Entropies in nats,
    averaged over pixels.
    """
    stacked = torch.stack([x.float() for x in logits])  # (S, C, ...)
    if stacked.shape[1] == 1:
        p = torch.sigmoid(stacked)
        probs = torch.cat([1 - p, p], dim=1)
    else:
        probs = torch.softmax(stacked, dim=1)

    mean = probs.mean(dim=0)  # (C, ...)
    predictive = -(mean * torch.log(mean.clamp_min(1e-12))).sum(dim=0)
    expected = (-(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=1)).mean(dim=0)
    return {
        "epistemic_entropy": float(predictive.mean()),
        "epistemic_mutual_information": float((predictive - expected).clamp_min(0).mean()),
        "epistemic_sample_std": float(probs.std(dim=0).mean()),
    }


class McDropoutInferTask(BundleInferTask):
    """The bundle's inference with the network's ``dropout`` set and only its dropout layers sampling.

    The output is the network's logits (no postprocessing, no writer): what :class:`McDropoutScoring` needs.
    """

    def __init__(self, path: str, conf: Dict[str, str], dropout: float = 0.2, **kwargs):
        super().__init__(path, conf, dropout=dropout, skip_writer=True, train_mode=False, **kwargs)
        self.dropout_layers = 0

    def _get_network(self, device, data):
        network = super()._get_network(device, data)
        if network is not None:
            self.dropout_layers = enable_mc_dropout(network)  # cached network: idempotent
        return network

    def logits(self, image_path: str, samples: int, device: str) -> list[torch.Tensor]:
        """Preprocesses ``image_path`` once and returns the logits of ``samples`` forward passes."""
        data = {"image": image_path, "image_path": image_path, "device": device, "logging": "error",
                "cache_transforms": False, **{k: v for k, v in self._config.items() if k not in ("device",)}}
        pre = self.pre_transforms(data)
        data = self.run_pre_transforms(data, pre)
        out = []
        for _ in range(samples):
            result = self.run_inferer(dict(data), device=device)
            out.append(torch.as_tensor(result[self.output_label_key]).detach().cpu())
        if self.dropout_layers == 0:
            raise RuntimeError(f"{os.path.basename(self.bundle_path)}: the network has no dropout layer with p > 0")
        return out


class McDropoutScoring(ScoringMethod):
    """``POST /scoring/NAME``: MC-dropout uncertainty of every unlabelled image (see the module docstring)."""

    def __init__(self, infer_task: McDropoutInferTask, max_samples: int = 0, simulation_size: int = 5):
        super().__init__(f"MC-dropout uncertainty ({simulation_size} samples) - {infer_task.description}")
        self.infer_task = infer_task
        self.max_samples = max_samples
        self.simulation_size = simulation_size

    def __call__(self, request, datastore: Datastore):
        path = self.infer_task.get_path()
        model_ts = int(os.stat(path).st_mtime) if path and os.path.exists(path) else 1
        self.infer_task.clear_cache()  # reload the weights training may have written
        samples = max(2, int(request.get("simulation_size", self.simulation_size)))
        max_samples = int(request.get("max_samples", self.max_samples))
        device = name_to_device(request.get("device", "cuda"))
        unlabeled = datastore.get_unlabeled_images()
        todo = [i for i in unlabeled if datastore.get_image_info(i).get("epistemic_ts", 0) != model_ts]
        todo = todo[:max_samples] if max_samples else todo
        start, failed, scores = time.time(), {}, {}
        for image_id in todo:
            t0 = time.time()
            try:
                result = uncertainty(self.infer_task.logits(datastore.get_image_uri(image_id), samples, device))
            except Exception as e:  # one image the model cannot process must not stop the others
                failed[image_id] = one_line(e)
                logger.warning(f"EPISTEMIC:: {image_id} not scored: {failed[image_id]}")
                continue
            if result["epistemic_sample_std"] < IDENTICAL_STD:
                raise RuntimeError(
                    f"the {samples} MC-dropout samples of {image_id} are identical (mean std "
                    f"{result['epistemic_sample_std']:.2e}): dropout is not active in the network"
                )
            result.update(epistemic_ts=model_ts, epistemic_samples=samples)
            datastore.update_image_info(image_id, result)
            scores[image_id] = result["epistemic_entropy"]
            logger.info(f"EPISTEMIC:: {image_id} => {samples} samples; " + "; ".join(
                f"{k}: {result[k]:.4g}" for k in SCORE_KEYS) + f"; latency: {time.time() - t0:.3f}")
        self.infer_task.clear_cache()
        summary = {"total": len(unlabeled), "skipped": len(unlabeled) - len(todo), "executed": len(scores),
                   "failed": failed, "latency": round(time.time() - start, 3)}
        logger.info(f"EPISTEMIC:: {summary}")
        return summary


class ActiveLearningMixin:
    """Mixed into the stock ``monaibundle`` app's ``MyApp`` (see the app's ``main.py``)."""

    def init_strategies(self):
        strategies = super().init_strategies()
        for name, key in STRATEGIES.items():
            strategies[name] = Epistemic(key=key, desc=f"The unlabelled image with the highest {key} (run scoring first)")
        logger.info(f"Active Learning Strategies:: {list(strategies.keys())}")
        return strategies

    def init_scoring_methods(self):
        methods: Dict[str, ScoringMethod] = {}
        if not self.conf.get("epistemic_model"):
            return methods
        for name, path in self.epistemic_models.items():
            task = McDropoutInferTask(path, self.conf, dropout=self.epistemic_dropout)
            if not task.is_valid():
                continue
            methods[name] = McDropoutScoring(task, self.epistemic_max_samples, self.epistemic_simulation_size)
            logger.info(f"+++ Adding Scoring Method:: {name} => {path}")
        logger.info(f"Active Learning Scoring Methods:: {list(methods.keys())}")
        return methods

    def batch_infer(self, request, datastore=None):
        infer = self.infer

        def infer_or_report(req, store) -> Dict[str, Any]:
            try:
                return infer(req, store)
            except Exception as e:
                message = one_line(e)
                logger.warning(f"Batch Infer:: {req.get('model')} could not label {req.get('image')}: {message}")
                return {"error": message}

        return self._batch_infer(request, datastore if datastore else self.datastore(), infer_or_report)
