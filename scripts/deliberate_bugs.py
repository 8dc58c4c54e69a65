"""Apply deliberate bugs, one at a time, to a copy of the project and check a test catches each.

    python scripts/deliberate_bugs.py            # every bug below
    python scripts/deliberate_bugs.py dann-no-reversal adda-no-init   # some of them
    python scripts/deliberate_bugs.py --list

Each bug is a one-place text substitution (the exact "old" text must occur once, so a bug
that no longer applies after a refactor is reported, not silently skipped) and the test files
expected to catch it. A bug survives when those tests still pass: then the suite does not
guard that behaviour. Exit status 1 if any bug survives or no longer applies.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Bug:
    name: str
    what: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


BUGS = [
    Bug("mixval-no-mixing", "MixVal probes the dominant image alone (no mixup)",
        "src/transferlab/evaluation/mixval.py",
        "return (self.mix * probe.images(a[rows]).float()",
        "return (1.0 * probe.images(a[rows]).float()", ("tests/test_mixval.py",)),
    Bug("mixval-partner-label", "MixVal scores the mixture against the partner's pseudo-label",
        "src/transferlab/evaluation/mixval.py", "return (predicted == pseudo[a]).double()",
        "return (predicted == pseudo[b]).double()", ("tests/test_mixval.py",)),
    Bug("ensv-hard-votes", "EnsV's ensemble takes majority votes instead of averaging "
        "probabilities", "src/transferlab/selection.py",
        "ensemble = np.mean(probabilities, axis=0).argmax(1)",
        "ensemble = np.mean([np.eye(p.shape[1])[p.argmax(1)] for p in probabilities], "
        "axis=0).argmax(1)", ("tests/test_select.py",)),
    Bug("spearman-plain-ranks", "weighted Spearman on plain ranks (not weighted ranks)",
        "src/transferlab/selection.py",
        "return weighted_pearson(weighted_ranks(scores, weights),",
        "return weighted_pearson(rankdata(scores) + 0 * weighted_ranks(scores, weights),",
        ("tests/test_select.py",)),
    Bug("guard-inverted", "the negative-transfer guard's verdict inverted",
        "src/transferlab/selection.py", "return self.ensv < self.source_only_ensv",
        "return self.ensv > self.source_only_ensv", ("tests/test_select.py",)),
    Bug("study-stop-is-failure", "a study's run stopped by a signal is reported as FAILED",
        "src/transferlab/studies.py",
        'return "stopped (resumes next time)" if interrupted else "FAILED"',
        'return "FAILED"', ("tests/test_studies.py",)),
    Bug("study-collision-is-failure", "a job another study is running is reported FAILED",
        "src/transferlab/studies.py", "if holder(plan.runs / job.name) is not None:",
        "if False:", ("tests/test_studies.py",)),
    Bug("record-raw-name", "pages look for a record under the job's raw folder name",
        "src/transferlab/studies.py",
        'return self.results / f"{record_name(self.runs / job.name, self.runs)}.json"',
        'return self.results / f"{job.name}.json"', ("tests/test_studies.py",)),
    Bug("study-threads-ignored", "a study's --threads is ignored",
        "src/transferlab/studies.py",
        "threads = threads or max(1, cpu_count() // max(parallel, 1))",
        "threads = max(1, cpu_count() // max(parallel, 1))", ("tests/test_studies.py",)),
    Bug("digit-augment-flips", "the digit augmentation preset mirrors digits",
        "conf/data/augment/digits.yaml", "flip: false", "flip: true",
        ("tests/test_augment.py",)),
    Bug("dann-no-reversal", "DANN's gradient reversal removed",
        "src/transferlab/losses/adversarial.py",
        "self.discriminator(grad_reverse(torch.cat([source, target]), coeff))",
        "self.discriminator(torch.cat([source, target]))",
        ("tests/test_algorithms.py", "tests/test_losses.py")),
    Bug("reversal-sign", "the reversed gradient's sign flipped back",
        "src/transferlab/nn/gradient_reversal.py", "return grad.neg() * ctx.coeff, None",
        "return grad * ctx.coeff, None", ("tests/test_algorithms.py", "tests/test_nn.py")),
    Bug("reversal-scale", "the reversed gradient ignores λ",
        "src/transferlab/nn/gradient_reversal.py", "return grad.neg() * ctx.coeff, None",
        "return grad.neg(), None", ("tests/test_algorithms.py", "tests/test_nn.py")),
    Bug("dann-constant-lambda", "DANN uses λ_max from the first step (no schedule)",
        "src/transferlab/methods/dann.py",
        "lam = dann_lambda(progress, self.lambda_gamma, self.lambda_max)",
        "lam = self.lambda_max", ("tests/test_algorithms.py",)),
    Bug("adda-no-init", "ADDA's target encoder not initialised from the source encoder",
        "src/transferlab/methods/adda.py",
        "self.target_encoder.load_state_dict(self.network.encoder.state_dict())", "pass",
        ("tests/test_algorithms.py",)),
    Bug("adda-source-classifies-target", "ADDA classifies target images with the source "
        "encoder", "src/transferlab/methods/adda.py",
        'if domain == "target":\n            features = self.target_features(x)',
        'if False:\n            features = self.target_features(x)',
        ("tests/test_algorithms.py",)),
    Bug("source-val-not-held-out", "the source validation split not held out of training",
        "src/transferlab/data/domain.py",
        "return replace(domain, train=domain.train.subset(train)), domain.train.subset(val)",
        "return domain, domain.train.subset(val)", ("tests/test_seams.py",)),
    Bug("target-labels-unmasked", "target labels not masked before adaptation",
        "src/transferlab/train.py",
        "method.stages(pair.training_view(method.uses_target_labels))",
        "method.stages(pair.training_view(True))", ("tests/test_algorithms.py",)),
    Bug("no-lr-annealing", "learning-rate annealing turned off", "src/transferlab/train.py",
        "factor = method.lr_factor if stage.anneal_lr else (lambda p: 1.0)",
        "factor = lambda p: 1.0", ("tests/test_algorithms.py",)),
    Bug("dann-reads-source-as-target", "the joint stage's target stream reads the source split",
        "src/transferlab/methods/base.py",
        'data = {"source": view.source, "target": view.target}',
        'data = {"source": view.source, "target": view.source}',
        ("tests/test_algorithms.py",)),
    Bug("stream-not-shuffled", "the batch stream never shuffles",
        "src/transferlab/data/domain.py",
        "fresh = torch.randperm(len(self.split), generator=self.generator)",
        "fresh = torch.arange(len(self.split))", ("tests/test_algorithms.py",)),
    Bug("resume-forgets-optimizers", "resume does not restore the optimizers' state",
        "src/transferlab/train.py", "    for key, items in parts.items():\n        for item,",
        "    for key, items in parts.items():\n        if key == 'optimizers':\n"
        "            continue\n        for item,", ("tests/test_algorithms.py",)),
    Bug("evaluator-sees-all-labels", "evaluators get labels they did not declare",
        "src/transferlab/evaluation/base.py",
        "computed[s].labels if domain_of(s) == e.labels else None", "computed[s].labels",
        ("tests/test_seams.py",)),
    # The methods of issues 9 and 10, and the data and speed seams.
    Bug("mmd-cross-terms-within", "the linear MMD's cross-domain pairs taken within "
        "a domain", "src/transferlab/losses/discrepancy.py",
        "(s1 - t2).pow(2).sum(1), (s2 - t1).pow(2).sum(1)])",
        "(s1 - s2).pow(2).sum(1), (t1 - t2).pow(2).sum(1)])",
        ("tests/test_alignment_losses.py", "tests/test_alignment_methods.py")),
    Bug("coral-no-normalisation", "CORAL without the 1/(4d²) factor",
        "src/transferlab/losses/discrepancy.py", "return difference.pow(2).sum() / (4 * d * d)",
        "return difference.pow(2).sum()", ("tests/test_alignment_losses.py",)),
    Bug("mcd-step-b-minimises", "MCD's step B minimises the discrepancy instead of maximising",
        "src/transferlab/methods/mcd.py",
        "optimize(self._f_optimizer, self._source_loss(fs, ys) - discrepancy)",
        "optimize(self._f_optimizer, self._source_loss(fs, ys) + discrepancy)",
        ("tests/test_mcd.py",)),
    Bug("mcc-keeps-the-diagonal", "MCC's loss counts the diagonal (same-class) mass",
        "src/transferlab/losses/entropy.py",
        "return (confusion.sum() - confusion.trace()) / logits.shape[1]",
        "return confusion.sum() / logits.shape[1]",
        ("tests/test_losses.py", "tests/test_regularizers.py")),
    Bug("vat-random-direction", "VAT perturbs in a random direction, not the adversarial one",
        "src/transferlab/losses/vat.py", "return radius * d",
        "return radius * _unit(torch.randn_like(x))", ("tests/test_discrepancy_vat.py",)),
    Bug("vat-hessian-without-softmax-curvature", "VAT's H d without the softmax's curvature "
        "(Jᵀ J d)", "src/transferlab/losses/vat.py",
        "curvature = p * jd - p * (p * jd).sum(1, keepdim=True)", "curvature = jd",
        ("tests/test_discrepancy_vat.py",)),
    Bug("vada-statistics-from-every-pass", "VADA's batch-norm statistics from every pass",
        "src/transferlab/methods/vada.py", 'if self.bn_statistics == "all":', "if True:",
        ("tests/test_discrepancy_vat.py",)),
    Bug("shot-source-without-smoothing", "SHOT's source stage without label smoothing",
        "src/transferlab/methods/shot.py", "label_smoothing=self.smoothing", "label_smoothing=0.0",
        ("tests/test_shot.py",)),
    Bug("shot-classifier-adapted", "SHOT adapts its classifier too",
        "src/transferlab/methods/shot.py",
        "self._adapt_optimizer = self.optimizer(self.network.encoder, self.bottleneck,",
        "self._adapt_optimizer = self.optimizer(self.network.encoder, self.bottleneck, "
        "self.classifier,", ("tests/test_shot.py",)),
    Bug("shot-argmax-pseudo-labels", "SHOT's pseudo-labels are the classifier's argmax",
        "src/transferlab/methods/shot.py", "    return labels\n", "    return probabilities."
        "argmax(1)\n", ("tests/test_shot.py",)),
    Bug("shot-never-relabelled", "SHOT's pseudo-labels are never estimated",
        "src/transferlab/methods/shot.py",
        "        if not self.pseudo_label_weight:\n            return",
        "        if True:\n            return", ("tests/test_shot.py",)),
    Bug("shot-im-sign", "SHOT maximises the prediction entropy instead of minimising it",
        "src/transferlab/methods/shot.py", "loss = self.im_weight * (conditional - marginal)",
        "loss = self.im_weight * (-conditional - marginal)", ("tests/test_shot.py",)),
    Bug("adabn-statistics-kept", "AdaBN folds the target into the source statistics instead "
        "of re-estimating them", "src/transferlab/methods/adabn.py",
        "            layer.reset_running_stats()\n", "", ("tests/test_test_time.py",)),
    Bug("adabn-moving-average", "AdaBN keeps batch norm's moving average (momentum 0.1) "
        "instead of the average of every target batch", "src/transferlab/methods/adabn.py",
        "layer.momentum = None", "layer.momentum = 0.1", ("tests/test_test_time.py",)),
    Bug("adabn-not-resumable", "AdaBN's estimating flag not kept in the checkpoint",
        "src/transferlab/methods/adabn.py",
        'self.register_buffer("estimating", torch.tensor(False))',
        "self.estimating = torch.tensor(False)", ("tests/test_algorithms.py",)),
    Bug("tent-all-parameters", "TENT updates every parameter, not the batch-norm affine ones",
        "src/transferlab/methods/tent.py", "self.make_adapt_optimizer(self.affine_parameters())",
        "self.make_adapt_optimizer(self.network.parameters())", ("tests/test_test_time.py",)),
    Bug("tent-entropy-sign", "TENT maximises the prediction entropy",
        "src/transferlab/methods/tent.py", "loss = entropy(self.network(x)).mean()",
        "loss = -entropy(self.network(x)).mean()", ("tests/test_test_time.py",)),
    Bug("test-time-source-adapted", "AdaBN/TENT classify source images with the adapted model",
        "src/transferlab/methods/test_time.py",
        'network = self.source_network if domain == "source" else self.network',
        "network = self.network", ("tests/test_test_time.py",)),
    Bug("mcc-temperature-ignored", "MCC scales its logits by 1, not method.temperature",
        "src/transferlab/methods/mcc.py", "class_confusion(target_logits, self.temperature)",
        "class_confusion(target_logits, 1.0)", ("tests/test_hyperparameters.py",)),
    Bug("vada-radius-ignored", "VAT's perturbation radius fixed at 1, not method.radius",
        "src/transferlab/methods/vada.py", "vat_loss(self.network, x, logits, self.radius)",
        "vat_loss(self.network, x, logits, 1.0)", ("tests/test_hyperparameters.py",)),
    Bug("iwdan-momentum-default", "IWDAN's ratio estimate ignores method.ratio_momentum",
        "src/transferlab/methods/iwdan.py",
        "ClassRatioEstimator(self.num_classes, ratio_momentum)",
        "ClassRatioEstimator(self.num_classes, 0.99)", ("tests/test_hyperparameters.py",)),
    Bug("dirtt-teacher-every-ignored", "DIRT-T replaces its teacher every 5000 steps whatever "
        "method.teacher_every says", "src/transferlab/methods/dirtt.py",
        "if self.refined % self.teacher_every == 0:", "if self.refined % 5000 == 0:",
        ("tests/test_hyperparameters.py",)),
    Bug("dan-bandwidths-default", "DAN's kernels ignore method.bandwidths",
        "src/transferlab/methods/dan.py", "multi_kernel_mmd(source, target, self.bandwidths,",
        "multi_kernel_mmd(source, target, DAN_BANDWIDTHS,", ("tests/test_hyperparameters.py",)),
    Bug("mdd-margin-ignored", "MDD's margin fixed at 1, not method.margin",
        "src/transferlab/methods/mdd.py",
        "MarginDisparityLoss(fresh_copy(self.network.head), margin)",
        "MarginDisparityLoss(fresh_copy(self.network.head), 1.0)",
        ("tests/test_hyperparameters.py",)),
    Bug("snd-temperature-ignored", "SND's temperature fixed at 1",
        "src/transferlab/evaluation/validators.py",
        "soft_neighbourhood_density(logits, self.temperature)",
        "soft_neighbourhood_density(logits, 1.0)", ("tests/test_hyperparameters.py",)),
    Bug("mixval-mix-default",
        "MixVal mixes at 0.55 whatever evaluation.evaluators.mixval.mix says",
        "src/transferlab/evaluation/mixval.py",
        "self.kind, self.mix, self.chunk = kind, mix, chunk",
        "self.kind, self.mix, self.chunk = kind, 0.55, chunk", ("tests/test_hyperparameters.py",)),
    Bug("iwv-folds-default", "IWV and DEV cross-fit over 5 folds whatever folds says",
        "src/transferlab/evaluation/validators.py", "self.folds, self.seed = folds, seed",
        "self.folds, self.seed = 5, seed", ("tests/test_hyperparameters.py",)),
    Bug("cdan-e-gradient-not-reversed", "CDAN+E's reversed option lets the gradient through "
        "the entropy unreversed", "src/transferlab/losses/entropy.py",
        "else grad_reverse(entropy(logits), reversal)", "else entropy(logits)",
        ("tests/test_alignment_losses.py",)),
    Bug("dirtt-teacher-never-set", "DIRT-T's teacher not copied from the moving average",
        "src/transferlab/methods/dirtt.py",
        "self.teacher.load_state_dict(self.average.state_dict())", "pass",
        ("tests/test_vada_dirtt.py",)),
    Bug("adda-hidden-not-initialised", "ADDA's adapted head layers not started from the "
        "pretrained source layers (split=last_layer)", "src/transferlab/methods/adda.py",
        "self.target_hidden.load_state_dict(self._source_hidden().state_dict())", "pass",
        ("tests/test_adda_split.py",)),
    Bug("usps-layout-ignored", "the USPS loader ignores `layout: mnist`",
        "src/transferlab/data/usps.py", 'if layout == "mnist":', "if False:",
        ("tests/test_usps_layout.py",)),
    Bug("stage-cache-ignores-augment", "a stored stage is reused with another augmentation",
        "src/transferlab/stage_cache.py", '"augment": augment,', "",
        ("tests/test_stage_cache.py",)),
    Bug("malloc-tuning-ignored", "trainer.malloc_tuning sets nothing",
        "src/transferlab/allocator.py", "    if not enabled:", "    if True:",
        ("tests/test_allocator.py",)),
    Bug("flush-denormal-ignored", "trainer.flush_denormal sets nothing",
        "src/transferlab/denormals.py", "    torch.set_flush_denormal(enabled)\n", "",
        ("tests/test_denormals.py",)),
    Bug("iwdan-unweighted", "IWDAN's class ratios computed but not applied (plain DANN)",
        "src/transferlab/methods/iwdan.py", "return w[labels]",
        "return torch.ones_like(w)[labels]", ("tests/test_label_shift.py",)),
    Bug("bbse-plug-in", "the class ratios read off predicted proportions, ignoring confusion",
        "src/transferlab/losses/label_shift.py",
        "torch.linalg.pinv(confusion) @ target_predicted",
        "target_predicted / confusion.sum(0)", ("tests/test_label_shift.py",)),
    Bug("bbse-transposed-confusion", "IWDAN's confusion counted with true and predicted swapped",
        "src/transferlab/losses/label_shift.py", "k).t().to(self.confusion)",
        "k).to(self.confusion)", ("tests/test_label_shift.py",)),
]


def run(bug: Bug) -> str:
    """'caught', 'SURVIVED' or 'does not apply'."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "project"
        for part in ("src", "conf", "tests", "pyproject.toml"):
            source = ROOT / part
            (shutil.copytree if source.is_dir() else shutil.copy)(source, copy / part)
        target = copy / bug.path
        text = target.read_text()
        if text.count(bug.old) != 1:
            return "does not apply"
        target.write_text(text.replace(bug.old, bug.new))
        env = {**os.environ, "PYTHONPATH": str(copy / "src")}
        result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p",
                                 "no:cacheprovider", *bug.tests], cwd=copy, env=env,
                                capture_output=True, text=True)
        return "SURVIVED" if result.returncode == 0 else "caught"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="bugs to try (default: all)")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    chosen = [b for b in BUGS if not args.names or b.name in args.names]
    if args.list:
        for bug in chosen:
            print(f"{bug.name:<32}{bug.what}")
        return 0
    failed = 0
    for bug in chosen:
        outcome = run(bug)
        failed += outcome != "caught"
        print(f"{bug.name:<32}{outcome:<16}{bug.what} ({', '.join(bug.tests)})", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
