"""Weight penalties added to the loss (Keras semantics: l1*sum|w| + l2*sum w^2)."""

from __future__ import annotations

from dataclasses import dataclass

from ._names import lookup


@dataclass(frozen=True)
class L1L2:
    """Penalty ``l1 * sum(|w|) + l2 * sum(w**2)`` on a layer's kernel."""

    l1: float = 0.0
    l2: float = 0.0

    def __post_init__(self):
        for name in ("l1", "l2"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")

    def get_config(self) -> dict:
        return {"l1": float(self.l1), "l2": float(self.l2)}


def L1(l1: float = 0.01) -> L1L2:  # noqa: N802 - Keras name
    """L1 penalty (Keras default 0.01)."""
    return L1L2(l1=l1)


def L2(l2: float = 0.01) -> L1L2:  # noqa: N802 - Keras name
    """L2 penalty (Keras default 0.01)."""
    return L1L2(l2=l2)


def l1_l2(l1: float = 0.01, l2: float = 0.01) -> L1L2:
    """L1 and L2 penalties together (Keras defaults 0.01 each)."""
    return L1L2(l1=l1, l2=l2)


#: Keras's lower-case spellings
l1, l2 = L1, L2

_NAMES = {"l1": L1, "l2": L2, "l1_l2": l1_l2}


def get(reg) -> L1L2 | None:
    """None, an :class:`L1L2`, a name ("l1", "l2", "l1_l2") or a config dict -> L1L2."""
    if reg is None or isinstance(reg, L1L2):
        return reg
    if isinstance(reg, dict):
        unknown = sorted(set(map(str, reg)) - {"l1", "l2"})
        if unknown:
            raise ValueError(
                f"kernel_regularizer config must have keys among 'l1', 'l2', got {unknown}"
            )
        return L1L2(**reg)
    return lookup(_NAMES, "kernel_regularizer", reg)()
