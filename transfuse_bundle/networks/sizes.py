"""The input-size rule of the networks, in one place: each side a multiple of the network's deepest stride.

TransFuse and TransUNet need sides that are multiples of :data:`SIZE_MULTIPLE` (16: the ViT patch size
and the deepest CNN stride they use); MedT needs multiples of 128. As segmentation_models_pytorch's
``check_input_shape``, an error names the nearest valid size, the padded one::

    >>> padded_size((200, 300))
    (208, 304)
    >>> check_input_shape(200, 300, "TransFuse")
    Traceback (most recent call last):
    ValueError: TransFuse needs H and W that are multiples of 16, got 200x300; pad or resize to 208x304

:func:`check_input_shape` is called in ``forward`` and compiles with ``torch.jit.script``.
"""

from __future__ import annotations

from typing import Sequence

from ..errors import ConfigValueError

__all__ = ["SIZE_MULTIPLE", "padded_size", "check_image_size", "check_input_shape"]

SIZE_MULTIPLE = 16  # the ViT patch size and the deepest CNN stride of TransFuse and TransUNet


def _round_up(side: int, multiple: int) -> int:
    return (side + multiple - 1) // multiple * multiple


def padded_size(size: Sequence[int], multiple: int = SIZE_MULTIPLE) -> tuple[int, ...]:
    """The nearest size at or above ``size`` whose sides are multiples of ``multiple`` (at least one multiple).

    ``padded_size((200, 300)) == (208, 304)``.
    """
    return tuple(max(multiple, _round_up(int(s), multiple)) for s in size)


def check_image_size(img_size: int | Sequence[int], model: str = "the network", multiple: int = SIZE_MULTIPLE,
                     reason: str = "") -> tuple[int, int]:
    """``img_size`` (an int or ``(H, W)``) as ``(H, W)``, each side a positive multiple of ``multiple``.

    Raises ``ConfigValueError`` (a ``ValueError``) naming ``model``, what was given and the padded size to use (``reason``, when
    given, says why in parentheses), e.g. ``TransFuse: img_size must be (H, W) with sides that are
    multiples of 16, got (200, 300); pad or resize to (208, 304)``.
    """
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(int(s) for s in img_size)
    if len(size) != 2 or min(size) < 1 or any(s % multiple for s in size):
        why = f" ({reason})" if reason else ""
        hint = f"; pad or resize to {padded_size(size, multiple)}" if len(size) == 2 else ""
        raise ConfigValueError(f"{model}: img_size must be (H, W) with sides that are multiples of {multiple}{why}, "
                         f"got {img_size!r}{hint}")
    return size  # type: ignore[return-value]


def check_input_shape(height: int, width: int, model: str, multiple: int = SIZE_MULTIPLE) -> None:
    """Raises ``ValueError`` unless ``height`` and ``width`` of an input are multiples of ``multiple``;
    the message names ``model``, the size found and the padded size to use. TorchScript-compatible
    (TorchScript cannot read a global int: the multiple comes in as an argument)."""
    if height % multiple != 0 or width % multiple != 0:
        raise ValueError(
            f"{model} needs H and W that are multiples of {multiple}, got {height}x{width}; "
            f"pad or resize to {_round_up(height, multiple)}x{_round_up(width, multiple)}"
        )
