"""Small inline SVG charts for the results page: no plotting library, no script, crisp at any zoom.

- :func:`distribution_svg`: one horizontal box plot per fusion of a metric's values across images;
- :func:`curve_svg`: per-epoch values as a line, with reference values as dashed horizontal lines.
"""
from __future__ import annotations

import math
from html import escape

#: one colour per fusion, in the order fusions are listed (cycled past the end)
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
#: above this many images, the box plots leave out the individual points (the page stays light)
MAX_POINTS = 150


def series_colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _fmt(v: float) -> str:
    if v == 0 or not math.isfinite(v):
        return f"{v:g}"
    a = abs(v)
    return f"{v:.0f}" if a >= 1000 else f"{v:.3g}" if a >= 0.01 else f"{v:.2e}"


def tick_labels(ticks: list[float]) -> list[str]:
    """Labels of ``ticks`` with just enough decimals to tell neighbours apart (3 significant
    digits would print 0.6405, 0.641 and 0.6415 all as "0.641")."""
    labels = [_fmt(t) for t in ticks]
    if len(set(labels)) == len(labels) or len(ticks) < 2:
        return labels
    step = min(abs(b - a) for a, b in zip(ticks, ticks[1:])) or 1.0
    decimals = max(0, -math.floor(math.log10(step)))
    while decimals < 12:
        labels = [f"{t:.{decimals}f}" for t in ticks]
        if len(set(labels)) == len(labels):
            break
        decimals += 1
    return labels


def nice_ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    """About ``count`` round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


def quantile(sorted_vals: list[float], q: float) -> float:
    """Linear-interpolation quantile of an ascending list (the numpy default)."""
    pos = (len(sorted_vals) - 1) * q
    i = int(math.floor(pos))
    j = min(i + 1, len(sorted_vals) - 1)
    return sorted_vals[i] + (sorted_vals[j] - sorted_vals[i]) * (pos - i)


def _scale(lo, hi, a, b):
    if hi <= lo:
        return lambda v: (a + b) / 2
    return lambda v: a + (v - lo) / (hi - lo) * (b - a)


def distribution_svg(metric: str, series: list[tuple[str, list[float]]], higher_is_better: bool = True,
                     width: int = 380) -> str:
    """Box plots of one metric: one row per ``(fusion label, values across images)``.

    Box: quartiles; bar inside: median; whiskers: min and max; diamond: mean; dots: every image
    (up to :data:`MAX_POINTS` images). Non-finite values are left out (and counted in the title).
    """
    row_h, top, bottom, left, right = 22, 24, 26, 130, 12
    h = top + row_h * len(series) + bottom
    finite = [[v for v in vals if math.isfinite(v)] for _, vals in series]
    allv = [v for vals in finite for v in vals]
    lo, hi = (min(allv), max(allv)) if allv else (0.0, 1.0)
    pad = (hi - lo) * 0.04 or (abs(hi) * 0.05 or 1.0)
    lo, hi = lo - pad, hi + pad
    sx = _scale(lo, hi, left, width - right)
    arrow = "higher is better" if higher_is_better else "lower is better"
    out = [f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" '
           f'viewBox="0 0 {width} {h}" role="img" aria-label="{escape(metric)} distribution">',
           f'<text x="{left}" y="15" class="pt">{escape(metric)} <tspan class="pn">({arrow})</tspan></text>']
    ticks = nice_ticks(lo, hi)
    for t, lab in zip(ticks, tick_labels(ticks)):
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{h - bottom + 2}" class="grid"/>')
        out.append(f'<text x="{x:.1f}" y="{h - bottom + 15}" class="tick" text-anchor="middle">{lab}</text>')
    for i, ((label, vals), fin) in enumerate(zip(series, finite)):
        cy = top + row_h * i + row_h / 2
        c = series_colour(i)
        short = label if len(label) <= 20 else label[:19] + "…"
        out.append(f'<text x="{left - 6}" y="{cy + 4:.1f}" class="lab" text-anchor="end">'
                   f'<title>{escape(label)}</title>{escape(short)}</text>')
        if not fin:
            out.append(f'<text x="{left + 4}" y="{cy + 4:.1f}" class="pn">no finite values</text>')
            continue
        s = sorted(fin)
        q1, med, q3 = (quantile(s, q) for q in (0.25, 0.5, 0.75))
        mean = math.fsum(s) / len(s)
        dropped = len(vals) - len(fin)
        tip = (f"{label}: n={len(s)}{f' ({dropped} non-finite left out)' if dropped else ''}, min {_fmt(s[0])}, "
               f"q1 {_fmt(q1)}, median {_fmt(med)}, q3 {_fmt(q3)}, max {_fmt(s[-1])}, mean {_fmt(mean)}")
        out.append(f'<g><title>{escape(tip)}</title>')
        out.append(f'<line x1="{sx(s[0]):.1f}" y1="{cy:.1f}" x2="{sx(s[-1]):.1f}" y2="{cy:.1f}" stroke="{c}"/>')
        for v in (s[0], s[-1]):
            out.append(f'<line x1="{sx(v):.1f}" y1="{cy - 5:.1f}" x2="{sx(v):.1f}" y2="{cy + 5:.1f}" stroke="{c}"/>')
        bx = sx(q1)
        out.append(f'<rect x="{bx:.1f}" y="{cy - 7:.1f}" width="{max(1.0, sx(q3) - bx):.1f}" height="14" '
                   f'fill="{c}" fill-opacity="0.18" stroke="{c}"/>')
        out.append(f'<line x1="{sx(med):.1f}" y1="{cy - 7:.1f}" x2="{sx(med):.1f}" y2="{cy + 7:.1f}" '
                   f'stroke="{c}" stroke-width="2"/>')
        if len(s) <= MAX_POINTS:
            # a fixed, deterministic vertical jitter keeps overlapping points apart
            for k, v in enumerate(fin):
                out.append(f'<circle cx="{sx(v):.1f}" cy="{cy + ((k * 7) % 11 - 5):.1f}" r="1.6" fill="{c}" '
                           f'fill-opacity="0.55"/>')
        mx = sx(mean)
        out.append(f'<path d="M{mx:.1f} {cy - 5:.1f}L{mx + 4:.1f} {cy:.1f}L{mx:.1f} {cy + 5:.1f}'
                   f'L{mx - 4:.1f} {cy:.1f}Z" fill="#fff" stroke="#000"/>')
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


def curve_svg(title: str, points: list[tuple[float, float]], refs: list[tuple[str, float]] = (),
              width: int = 260, height: int = 170, line_colour: str = PALETTE[0], subtitle: str = "",
              x_label: str = "epoch") -> str:
    """A line through ``(x, value)`` points (``x``: an epoch, or what ``x_label`` names), with each
    ``(label, value)`` of ``refs`` as a dashed horizontal line (e.g. the heuristic guidance's
    score). ``title`` (the metric) comes first and whole; ``subtitle`` (the test set) below it,
    shortened to fit (whole as a tooltip)."""
    top, bottom, left, right = 36 if subtitle else 24, 34, 52, 10
    pts = [(x, y) for x, y in points if math.isfinite(y)]
    ys = [y for _, y in pts] + [v for _, v in refs if math.isfinite(v)]
    xs = [x for x, _ in pts]
    room = max(8, (width - 8) // 6)  # characters of 11 px text that fit the width
    short = subtitle if len(subtitle) <= room else subtitle[:room - 1] + "…"
    out = [f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)} {escape(subtitle)}">',
           f'<text x="8" y="15" class="pt">{escape(title)}</text>']
    if subtitle:
        out.append(f'<text x="8" y="28" class="pn"><title>{escape(subtitle)}</title>{escape(short)}</text>')
    if not ys:
        out.append(f'<text x="{left}" y="{height / 2:.0f}" class="pn">no values</text></svg>')
        return "".join(out)
    lo, hi = min(ys), max(ys)
    pad = (hi - lo) * 0.08 or (abs(hi) * 0.05 or 1.0)
    lo, hi = lo - pad, hi + pad
    x0, x1 = (min(xs), max(xs)) if xs else (0, 1)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    sx, sy = _scale(x0, x1, left, width - right), _scale(lo, hi, height - bottom, top)
    ticks = nice_ticks(lo, hi, 3)
    for t, lab in zip(ticks, tick_labels(ticks)):
        y = sy(t)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" class="grid"/>')
        out.append(f'<text x="{left - 4}" y="{y + 4:.1f}" class="tick" text-anchor="end">{lab}</text>')
    for t in nice_ticks(x0, x1, 5):
        if abs(t - round(t)) < 1e-9 and x0 <= t <= x1:
            out.append(f'<text x="{sx(t):.1f}" y="{height - bottom + 15}" class="tick" '
                       f'text-anchor="middle">{int(round(t))}</text>')
    out.append(f'<text x="{(left + width - right) / 2:.0f}" y="{height - 4}" class="tick" '
               f'text-anchor="middle">{escape(x_label)}</text>')
    for k, (label, v) in enumerate(refs):
        if not math.isfinite(v):
            continue
        y = sy(v)
        out.append(f'<g><title>{escape(label)}: {_fmt(v)}</title>'
                   f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#555" '
                   f'stroke-dasharray="5 3"/>'
                   f'<text x="{width - right - 2}" y="{y - 3:.1f}" class="reflab" text-anchor="end">'
                   f'{escape(label)}</text></g>')
    if pts:
        d = "".join(f'{"M" if i == 0 else "L"}{sx(x):.1f} {sy(y):.1f}' for i, (x, y) in enumerate(pts))
        out.append(f'<path d="{d}" fill="none" stroke="{line_colour}" stroke-width="2"/>')
        for x, y in pts:
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{line_colour}">'
                       f'<title>{escape(x_label)} {x:g}: {_fmt(y)}</title></circle>')
    out.append("</svg>")
    return "".join(out)


__all__ = ["PALETTE", "MAX_POINTS", "series_colour", "tick_labels", "nice_ticks", "quantile", "distribution_svg", "curve_svg"]
