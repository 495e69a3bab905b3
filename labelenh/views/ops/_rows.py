"""`Rows`: whole-row copies at any column shift, the fast path of the geometric renderers.

Each output row (b, c, y) of a crop, a flip or a RICAP patch is a run of W pixels read from one
row of one source image at a column shift, so whole rows are copied with one `index_select`
from an overlapping "window" view of a flat buffer holding every source row (and a row-reversed
copy for flips). No masks are needed for padding: the buffer holds zeros around every row.
"""

from __future__ import annotations

import torch


class Rows:
    """Every source row, zero-padded by `pad` on both sides, in one flat uint8 buffer that is
    read as W-wide windows at any offset.

    buf [R, L]: R = 1 (plain) or 2 (plain, then every padded row reversed, for flips). Each half
    is [zeros (3W + 2p) | rows of width W + 2p | zeros (W)], so any window of a view pixel that
    lies in the padding reads a zero, and a row outside the image reads the leading zeros.
    Windows of pixels a caller discards (outside a RICAP patch) may read anything.
    """

    def __init__(self, sources: torch.Tensor, pad: int, need_flip: bool) -> None:
        B, S, C, H, W = sources.shape
        p = self.pad = pad
        self.shape = (B, S, C, H, W)
        self.wp = wp = W + 2 * p  # padded row width
        self.front = front = 3 * W + 2 * p  # zeros before the first row
        nrows = B * S * C * H
        half = front + nrows * wp + W
        buf = torch.zeros((2 if need_flip else 1, half), dtype=torch.uint8, device=sources.device)
        rows = sources.reshape(nrows, W)
        buf[0, front : front + nrows * wp].view(nrows, wp)[:, p : p + W] = rows
        if need_flip:
            buf[1, front : front + nrows * wp].view(nrows, wp)[:, p : p + W] = rows.flip(-1)
        self.half = half
        # overlapping view: window i = buf.flat[i : i + W]
        self.windows = buf.view(-1).as_strided((buf.numel() - W + 1, W), (1, 1))

    def read(self, k: torch.Tensor, row: torch.Tensor, shift: torch.Tensor,
             flip: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 [B, C, H, W]: output row (b, c, y) is image row row[b, y] of source k[b, y]
        (zeros outside the image), output column x is image column x + shift[b, y] — or, when
        flip[b, y], column W - 1 - x - shift[b, y] (the mirrored row). k, row, shift: int64
        [B, H]; shift within [-W - pad, W + pad]."""
        B, S, C, H, W = self.shape
        dev = k.device
        img = torch.arange(B, device=dev).view(B, 1, 1) * S + k.view(B, 1, H)  # source image id
        chan = torch.arange(C, device=dev).view(1, C, 1)
        r = (img * C + chan) * H + row.clamp(0, H - 1).view(B, 1, H)  # [B, C, H]
        inside = ((row >= 0) & (row < H)).view(B, 1, H)
        row_start = torch.where(inside, self.front + r * self.wp, W)  # else: the zero row
        s = shift.clamp(-W - self.pad, W + self.pad)
        if flip is not None:
            s = s + flip.to(torch.int64) * self.half
        start = row_start + (self.pad + s).view(B, 1, H)
        return self.windows.index_select(0, start.reshape(-1)).view(B, C, H, W)
