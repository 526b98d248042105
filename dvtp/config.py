"""`PruningConfig`: how, when and how much the sampler prunes visual tokens."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Iterable

__all__ = ["PruningConfig", "LLADA_SUPPRESSED_IDS"]


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class PruningConfig:
    """Visual-token pruning settings for `dvtp.generate`.

    Attributes:
        keep_ratio: fraction of each item's visual tokens kept, ``0 < keep_ratio <= 1``;
            an item keeps ``max(1, floor(n_visual * keep_ratio))`` tokens.
        prune_step: the denoising step of block 0 (1-based) whose forward is scored and
            after whose transfer the sequence is pruned. 1 = the first step (RedVTP).
        score_layers: the decoder layers whose attention contributes to the importance
            scores: None (all layers, the reference behaviour) or an iterable of layer
            indices (e.g. ``range(2, 4)``); stored as a sorted tuple.
        renumber_positions: True (default, the reference behaviour): after pruning, RoPE
            positions are ``arange`` over the compacted sequence, as if the pruned
            sequence had been the input. False: every token keeps its original position
            id, so the kept tokens see gaps where pruned ones were.
        policy: name of a registered pruning policy (`dvtp.policies`): "redvtp" (the
            masked-token-guided attention importance), or the baselines "random"
            (a seeded random keep set) and "uniform" (an evenly spaced keep set).
        seed: seed of the "random" policy (ignored by the others).
        backend: kernel backend for the dvtp ops ("reference", "cpu", "triton", "cuda")
            or None for the best usable one (see ``python -m dvtp_kernels.info``).
    """

    keep_ratio: float = 0.5
    prune_step: int = 1
    score_layers: tuple[int, ...] | None = None
    renumber_positions: bool = True
    policy: str = "redvtp"
    seed: int = 0
    backend: str | None = field(default=None)

    def __post_init__(self) -> None:
        r = self.keep_ratio
        if isinstance(r, bool) or not isinstance(r, numbers.Real) or not math.isfinite(float(r)):
            raise ValueError(f"PruningConfig.keep_ratio must be a number in (0, 1], got {r!r}")
        if not 0.0 < float(r) <= 1.0:
            raise ValueError(f"PruningConfig.keep_ratio must lie in (0, 1], got {r!r}")
        object.__setattr__(self, "keep_ratio", float(r))

        if not _is_int(self.prune_step) or self.prune_step < 1:
            raise ValueError(
                f"PruningConfig.prune_step must be an int >= 1 (1 = the first denoising step), "
                f"got {self.prune_step!r}"
            )
        object.__setattr__(self, "prune_step", int(self.prune_step))

        layers = self.score_layers
        if layers is not None:
            if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
                raise ValueError(
                    f"PruningConfig.score_layers must be None or an iterable of layer indices, got {layers!r}"
                )
            layers = list(layers)
            if not layers:
                raise ValueError("PruningConfig.score_layers must name at least one layer (or be None for all)")
            for layer in layers:
                if not _is_int(layer) or layer < 0:
                    raise ValueError(
                        f"PruningConfig.score_layers must hold layer indices >= 0, got {layer!r} in {self.score_layers!r}"
                    )
            object.__setattr__(self, "score_layers", tuple(sorted({int(x) for x in layers})))

        if not isinstance(self.renumber_positions, bool):
            raise ValueError(
                f"PruningConfig.renumber_positions must be a bool, got {self.renumber_positions!r}"
            )

        from .policies import available_policies, get_policy

        if not isinstance(self.policy, str):
            raise ValueError(f"PruningConfig.policy must be a policy name (str), got {self.policy!r}")
        try:
            get_policy(self.policy)
        except KeyError:
            raise ValueError(
                f"PruningConfig.policy={self.policy!r} is not a registered policy; "
                f"available: {', '.join(available_policies())}"
            ) from None

        if not _is_int(self.seed):
            raise ValueError(f"PruningConfig.seed must be an int, got {self.seed!r}")

        from dvtp_kernels.dispatch import BACKENDS

        if self.backend is not None and self.backend not in BACKENDS:
            raise ValueError(
                f"PruningConfig.backend must be None (the best usable one) or one of "
                f"{', '.join(map(repr, BACKENDS))}, got {self.backend!r}"
            )

    @property
    def needs_scores(self) -> bool:
        """Whether the policy needs the attention scoring pass."""
        from .policies import get_policy

        return get_policy(self.policy).needs_scores


#: ids the LLaDA sampler never predicts at masked positions (logits set to -inf); here, not
#: in `dvtp.models`, so the sampler's argument checks need no model module
#: (re-exported as `dvtp.models.LLADA_SUPPRESSED_IDS`).
LLADA_SUPPRESSED_IDS = (126081, 126080, 126346, 126347)
