"""Teacher-driven targets: SL, En-SL (soft CE against a teacher distribution) and KD, KD-SL.

`inp.teacher_logits` is [B, M, C]: M = 1 for one teacher, M > 1 for an ensemble, combined by
`ensemble_probs` (prob-mean by default: mean_m softmax(z_m/T); logit-mean and per-sample
confidence weights as options).
For `sl`, `en-sl`, `kd-sl` and `ils` the logits come from the soft-label store, for the exact
view the student sees; for `kd` the engine runs the teacher(s) online on that same batch.
"""

from __future__ import annotations

from torch import Tensor

from labelenh.losses import (
    KL_REDUCTIONS,
    ensemble_probs,
    kd_kl,
    soft_cross_entropy,
    standardize,
    upcast,
)
from labelenh.methods.base import (
    ENSEMBLE_PARAM,
    STAND_PARAM,
    T_PARAM,
    Method,
    MethodContext,
    MethodInputs,
    Param,
    register,
)


@register("en-sl")
class EnsembleSoftLabel(Method):
    """Soft CE against the teachers' ensemble distribution p̄ = ensemble_probs(z_t, T, rule).

    The student's logits are used at T = 1 (the CVPR Label Enhancement SL: no temperature, no
    hard-label term). Under a mixing view the stored teacher saw the mixed image, so p̄ replaces
    the mixed hard label (Aug-SL).
    """

    teacher = "store"
    summary = "soft CE against the mean of several stored teachers' softmax"
    formula = "softCE(p_bar), p_bar = ensemble of the teachers' softmax at T"
    params = {"T": T_PARAM, "ensemble": ENSEMBLE_PARAM}

    def setup(self) -> None:
        self.T = float(self.hparams["T"])
        self.rule = self.hparams["ensemble"]

    def target(self, inp: MethodInputs) -> Tensor:
        return ensemble_probs(self.teacher_logits(inp), self.T, self.rule, hard=inp.hard)  # [B, C]

    def loss(
        self, logits: Tensor, inp: MethodInputs, ctx: MethodContext | None = None
    ) -> dict[str, Tensor]:
        return {"sl": soft_cross_entropy(logits, self.target(inp))}


@register("sl")
class SoftLabel(EnsembleSoftLabel):
    """Soft CE against softmax(z_t / T) of the stored teacher.

    Meant for one teacher; if the store rows hold M > 1 teachers they are combined with the
    `ensemble` rule exactly as in `en-sl` (for M = 1 both rules are the same softmax).
    """

    summary = "soft CE against the stored teacher's softmax at temperature T"
    formula = "softCE(softmax(z_t / T))"


@register("kd")
class KnowledgeDistillation(Method):
    """Hinton KD with an online teacher: α·CE(hard) + (1 − α)·T²·KL(p̄_T ‖ softmax(z_s/T)).

    The KL is `batchmean` (sum over classes, mean over the batch). `kl_reduction=
    "elementwise-mean"` reproduces torch's default `KLDivLoss()` used by the original code, which
    divides the KL term by C as well.

    Defaults α = 0.9, T = 3. The original code writes KD as CE + a·T²·KL with a = 0.1, T = 3, i.e.
    (1 + a)·[α·CE + (1 − α)·T²·KL] with α = 1/(1 + a): a = 0.1 is α = 10/11 ≈ 0.909 up to the
    overall factor 1.1 (a learning-rate scale); α = 0.9 is the round value next to it
    (a = 1/9). Pass alpha=0.9090909 for the original code's exact weighting.

    `target()` returns α·hard + (1 − α)·p̄_T. At T = 1 it is exactly the effective target:
    the loss equals softCE(target) minus the teacher entropy (a constant). At T ≠ 1 the KD
    term matches the softened student instead, so it is the label the loss pulls towards,
    not a target the loss is a CE against.

    `logit_stand` z-scores both logits before the tempered softmax (Sun et al., CVPR 2024):
    the KL then reads KL(softmax(std(z_t)/T) ‖ softmax(std(z_s)/T)); the CE term keeps the
    raw student logits, as in the paper's code.
    """

    teacher = "online"
    summary = "online KD: alpha*CE + (1-alpha)*T^2*KL(teacher_T || student_T)"
    formula = "alpha*CE(hard) + (1 - alpha)*T^2*KL(p_bar_T || softmax(z_s / T)), KL batchmean"
    params = {
        "alpha": Param(float, 0.9, "weight of CE against the hard label; KD gets 1 - alpha",
                       0.0, 1.0),
        "T": T_PARAM._replace(default=3.0, help="distillation temperature"),
        "ensemble": ENSEMBLE_PARAM,
        "kl_reduction": Param(
            str, "batchmean", "batchmean (correct KL) or elementwise-mean (the original code's KL / C)",
            choices=KL_REDUCTIONS,
        ),
        "logit_stand": STAND_PARAM,
    }

    def setup(self) -> None:
        self.alpha = float(self.hparams["alpha"])
        self.T = float(self.hparams["T"])
        self.rule = self.hparams["ensemble"]
        self.kl_reduction = self.hparams["kl_reduction"]
        self.stand = bool(self.hparams["logit_stand"])

    def teacher_probs(self, inp: MethodInputs) -> Tensor:
        return ensemble_probs(self.teacher_logits(inp), self.T, self.rule, hard=inp.hard,
                              standardized=self.stand)  # [B, C]

    def target(self, inp: MethodInputs) -> Tensor:
        return self.alpha * upcast(inp.hard) + (1.0 - self.alpha) * self.teacher_probs(inp)

    def loss(
        self, logits: Tensor, inp: MethodInputs, ctx: MethodContext | None = None
    ) -> dict[str, Tensor]:
        zs = standardize(logits) if self.stand else logits
        kl = kd_kl(zs, self.teacher_probs(inp), self.T, reduction=self.kl_reduction)
        return {
            "ce": self.alpha * soft_cross_entropy(logits, inp.hard),
            "kd": (1.0 - self.alpha) * kl,
        }


@register("kd-sl")
class KDSoftLabel(KnowledgeDistillation):
    """KD against the stored (ensemble) soft label instead of an online teacher.

    Same loss, defaults and conventions as `kd`; p̄_T = ensemble_probs(stored logits, T, rule).
    """

    teacher = "store"
    summary = "KD loss with the stored (ensemble) soft label in place of an online teacher"
    formula = "alpha*CE(hard) + (1 - alpha)*T^2*KL(p_bar_T || softmax(z_s / T)), p_bar from the store"
