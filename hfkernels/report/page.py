"""The HTML of the results page: one static file, a few lines of plain JavaScript for sorting.

Everything here turns already computed numbers and already written image files (paths relative
to the page) into markup; nothing is read from disk or the network when the page is opened
except the image files beside it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

from .plots import colour, curve_svg, distribution_svg


@dataclass
class Picture:
    """An image written beside the page: full-size file, thumbnail file and thumbnail size."""

    full: str
    thumb: str
    width: int
    height: int


@dataclass
class ShownPair:
    """The files of one pair whose pictures the page shows.

    ``box``: (y, x, side) of the zoomed crop in image pixels; ``size``: (H, W) of the pair.
    ``fused``/``mu``/``crop``: per fusion label (``mu`` absent for fusions without guidance).
    """

    size: tuple[int, int]
    vis: Picture
    ir: Picture
    box: tuple[int, int, int]
    zoom: int
    crop_vis: str
    crop_ir: str
    fused: dict[str, Picture] = field(default_factory=dict)
    mu: dict[str, Picture] = field(default_factory=dict)
    crop: dict[str, str] = field(default_factory=dict)


@dataclass
class SectionView:
    """One pair set on the page."""

    name: str
    anchor: str
    fusions: list[str]
    metrics: list[str]
    images: list[str]  # every pair's name, in dataset order
    scores: dict  # {fusion: {image: {metric: value}}}
    shown: dict  # {image: ShownPair} for the pairs with pictures
    higher_is_better: dict
    paper: list = field(default_factory=list)  # [(label, {metric: value})]
    paper_key: str | None = None
    note: str = ""


def fmt(v) -> str:
    if v is None:
        return "—"
    v = float(v)
    if not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    a = abs(v)
    if a >= 1000:
        return f"{v:.1f}"
    if a >= 100:
        return f"{v:.2f}"
    return f"{v:.4f}" if a >= 1e-3 or v == 0 else f"{v:.3e}"


def _mean(values) -> float:
    vals = list(values)
    return math.fsum(vals) / len(vals) if vals else float("nan")


def means(section: SectionView) -> dict:
    """{fusion: {metric: mean over every pair}} (NaN where a value is not finite)."""
    return {f: {m: _mean(section.scores[f][i][m] for i in section.images) for m in section.metrics}
            for f in section.fusions}


def best_of(values: dict, higher: bool) -> set:
    """Keys holding the best finite value (all of them on a tie)."""
    fin = {k: v for k, v in values.items() if v is not None and math.isfinite(v)}
    if not fin:
        return set()
    b = max(fin.values()) if higher else min(fin.values())
    return {k for k, v in fin.items() if v == b}


CSS = """
:root{--fg:#1b1b1b;--mut:#666;--line:#ddd;--best:#0a6b2d;--bestbg:#e3f4e8}
*{box-sizing:border-box}
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);
  margin:0 24px 48px;background:#fff}
h1{font-size:22px;margin:18px 0 4px}
h2{font-size:18px;margin:30px 0 8px;border-bottom:2px solid var(--line);padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
.meta{color:var(--mut);margin:0 0 10px}.note{color:var(--mut);font-size:13px;margin:4px 0 8px}
nav a{margin-right:14px}
table{border-collapse:collapse}
th,td{padding:3px 7px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{background:#f6f6f6;font-weight:600}
td.l,th.l{text-align:left}
table.means td.best{font-weight:700;color:var(--best);background:var(--bestbg)}
table.means td.best::after{content:" \\2605"}
table.means tr.paper td{color:var(--mut);font-style:italic}
table.means tr.paper.first td{border-top:2px solid #bbb}
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px;vertical-align:baseline}
.plots{display:flex;flex-wrap:wrap;gap:10px 18px}
svg.plot{background:#fff;border:1px solid #eee}
svg .pt{font-size:13px;font-weight:600;fill:#222}svg .pn{font-size:11px;font-weight:400;fill:#777}
svg .tick{font-size:10px;fill:#555}svg .lab{font-size:11px;fill:#333}svg .reflab{font-size:10px;fill:#444}
svg .grid{stroke:#eee}
.sortbar{margin:8px 0;display:flex;gap:14px;align-items:center;flex-wrap:wrap}
table.pairs thead th{position:sticky;top:0;z-index:2;box-shadow:0 1px 0 var(--line)}
table.pairs th button{font:inherit;font-weight:600;border:0;background:none;cursor:pointer;padding:0;color:#0645ad}
table.pairs th.on button{color:#000;text-decoration:underline}
table.pairs th .arr{color:#000}
table.pairs tbody{border-bottom:2px solid #bbb}
table.pairs td{vertical-align:middle}
table.pairs td.img{padding:2px}
table.pairs td.best{font-weight:700;color:var(--best)}
table.pairs img{display:block;background:#eee}
.th{position:relative;display:inline-block;line-height:0}
.th .box{position:absolute;border:2px solid #ff0;outline:1px solid #000;pointer-events:none}
.nm{font-weight:600;text-align:left;white-space:nowrap}
.nm small{display:block;font-weight:400;color:var(--mut)}
.fl{text-align:left}
.none{color:#aaa}
p.more{margin:10px 0}p.more button{font:inherit;padding:4px 12px}
"""

JS = r"""
(function(){
  var PAGE=%d;
  function val(g, f, m){
    if(m==='image') return g.getAttribute('data-name');
    var r=g.querySelector('tr[data-f="'+f+'"]'); if(!r) return NaN;
    var c=r.querySelector('td[data-m="'+m+'"]'); return c?parseFloat(c.getAttribute('data-v')):NaN;
  }
  function sortTable(t, m, f, dir){
    var gs=Array.prototype.slice.call(t.tBodies).map(function(g,i){return [val(g,f,m),i,g];});
    gs.sort(function(a,b){
      var x=a[0], y=b[0];
      if(m==='image') return dir*(x<y?-1:x>y?1:0)||a[1]-b[1];
      var nx=isNaN(x), ny=isNaN(y);
      if(nx||ny) return (nx-ny)||a[1]-b[1];
      return dir*(x-y)||a[1]-b[1];
    });
    gs.forEach(function(k){t.appendChild(k[2]);});
    page(t);
    t.setAttribute('data-sort', m); t.setAttribute('data-dir', dir>0?'asc':'desc');
    t.setAttribute('data-sort-fusion', f);
    Array.prototype.forEach.call(t.tHead.querySelectorAll('th[data-m]'), function(th){
      var on=th.getAttribute('data-m')===m; th.classList.toggle('on', on);
      th.querySelector('.arr').textContent=on?(dir>0?' \u25b2':' \u25bc'):'';
    });
    var s=t.parentNode.querySelector('select.sortf'); if(s) s.value=String(f);
  }
  function page(t){
    var n=parseInt(t.getAttribute('data-shown'),10), gs=t.tBodies;
    for(var i=0;i<gs.length;i++) gs[i].hidden=i>=n;
    var c=t.parentNode.querySelector('.count'), b=t.parentNode.querySelector('button.more');
    if(c) c.textContent=Math.min(n,gs.length)+' of '+gs.length+' pairs shown';
    if(b) b.hidden=n>=gs.length;
  }
  function bestDir(th){ return th.getAttribute('data-hib')==='0'?1:-1; }
  var q=new URLSearchParams(location.search);
  Array.prototype.forEach.call(document.querySelectorAll('table.pairs'), function(t){
    var sel=t.parentNode.querySelector('select.sortf');
    var more=t.parentNode.querySelector('button.more');
    if(more) more.addEventListener('click', function(){
      t.setAttribute('data-shown', parseInt(t.getAttribute('data-shown'),10)+PAGE); page(t);
    });
    page(t);
    Array.prototype.forEach.call(t.tHead.querySelectorAll('th[data-m] button'), function(b){
      b.addEventListener('click', function(){
        var th=b.parentNode, m=th.getAttribute('data-m');
        var dir=(t.getAttribute('data-sort')===m)?(t.getAttribute('data-dir')==='asc'?-1:1):bestDir(th);
        sortTable(t, m, sel?sel.value:'0', dir);
      });
    });
    if(sel) sel.addEventListener('change', function(){
      var m=t.getAttribute('data-sort');
      if(m&&m!=='image') sortTable(t, m, sel.value, t.getAttribute('data-dir')==='asc'?1:-1);
    });
    var m=q.get('sort');
    if(m){
      var th=t.tHead.querySelector('th[data-m="'+m+'"]'); if(!th) return;
      var f=q.get('fusion')||'0';
      if(sel){
        var opt=Array.prototype.filter.call(sel.options, function(o){return o.text===f||o.value===f;})[0];
        f=opt?opt.value:'0';
      }
      var d=q.get('dir'); sortTable(t, m, f, d==='asc'?1:d==='desc'?-1:bestDir(th));
    }
  });
})();
"""


BEST = ' class="best"'
#: pairs of the per-image table shown at first (and added by each "show more")
PAGE_PAIRS = 50


def _img(p: Picture, alt: str, box=None, size=None) -> str:
    overlay = ""
    if box is not None and size is not None:
        (y, x, side), (h, w) = box, size
        overlay = (f'<span class="box" style="left:{100 * x / w:.2f}%;top:{100 * y / h:.2f}%;'
                   f'width:{100 * side / w:.2f}%;height:{100 * side / h:.2f}%"></span>')
    return (f'<a class="th" href="{escape(p.full)}" target="_blank">'
            f'<img src="{escape(p.thumb)}" width="{p.width}" height="{p.height}" loading="lazy" decoding="async" '
            f'alt="{escape(alt)}">{overlay}</a>')


def _crop(path: str, alt: str, side: int, zoom: int) -> str:
    px = side * zoom
    return (f'<a href="{escape(path)}" target="_blank"><img src="{escape(path)}" width="{px}" height="{px}" '
            f'loading="lazy" decoding="async" alt="{escape(alt)}" title="{side}x{side} pixels, {zoom}x"></a>')


def means_table(sec: SectionView) -> str:
    mean = means(sec)
    best = {m: best_of({f: mean[f][m] for f in sec.fusions}, sec.higher_is_better.get(m, True))
            for m in sec.metrics}
    rows = ['<table class="means"><thead><tr><th class="l">fusion</th>'
            + "".join(f'<th title="{"higher" if sec.higher_is_better.get(m, True) else "lower"} is better">'
                      f'{escape(m)} {"↑" if sec.higher_is_better.get(m, True) else "↓"}</th>' for m in sec.metrics)
            + "</tr></thead><tbody>"]
    for i, f in enumerate(sec.fusions):
        cells = "".join(f'<td{BEST if f in best[m] else ""}>{fmt(mean[f][m])}</td>' for m in sec.metrics)
        swatch = f'<span class="sw" style="background:{colour(i)}"></span>'
        rows.append(f'<tr><td class="l">{swatch}{escape(f)}</td>{cells}</tr>')
    for k, (label, vals) in enumerate(sec.paper):
        cells = "".join(f"<td>{fmt(vals.get(m))}</td>" for m in sec.metrics)
        rows.append(f'<tr class="paper{" first" if k == 0 else ""}"><td class="l">{escape(label)}</td>{cells}</tr>')
    rows.append("</tbody></table>")
    return "".join(rows)


def distributions(sec: SectionView) -> str:
    out = ['<div class="plots">']
    for m in sec.metrics:
        series = [(f, [sec.scores[f][i][m] for i in sec.images]) for f in sec.fusions]
        out.append(distribution_svg(m, series, sec.higher_is_better.get(m, True)))
    out.append("</div>")
    return "".join(out)


def pairs_table(sec: SectionView) -> str:
    k = len(sec.fusions)
    hib = sec.higher_is_better
    head = ('<thead><tr><th class="l" data-m="image"><button type="button">image</button><span class="arr"></span></th>'
            '<th class="l">visible</th><th class="l">infrared</th><th class="l">zoom: vis / ir</th>'
            '<th class="l">fusion</th><th class="l">mu</th><th class="l">fused</th><th class="l">zoom</th>'
            + "".join(f'<th data-m="{escape(m)}" data-hib="{1 if hib.get(m, True) else 0}">'
                      f'<button type="button">{escape(m)}</button><span class="arr"></span></th>' for m in sec.metrics)
            + "</tr></thead>")
    bodies = []
    for n_body, name in enumerate(sec.images):
        sp = sec.shown.get(name)
        per = {f: sec.scores[f][name] for f in sec.fusions}
        best = {m: best_of({f: per[f][m] for f in sec.fusions}, hib.get(m, True)) if k > 1 else set()
                for m in sec.metrics}
        rows = []
        for j, f in enumerate(sec.fusions):
            tr = [f'<tr data-f="{j}">']
            if j == 0:
                if sp is not None:
                    h, w = sp.size
                    tr.append(f'<td class="nm" rowspan="{k}">{escape(name)}<small>{w}x{h}</small></td>'
                              f'<td class="img" rowspan="{k}">{_img(sp.vis, "visible " + name, sp.box, sp.size)}</td>'
                              f'<td class="img" rowspan="{k}">{_img(sp.ir, "infrared " + name)}</td>'
                              f'<td class="img" rowspan="{k}">{_crop(sp.crop_vis, "visible crop", sp.box[2], sp.zoom)}'
                              f'{_crop(sp.crop_ir, "infrared crop", sp.box[2], sp.zoom)}</td>')
                else:
                    tr.append(f'<td class="nm" rowspan="{k}">{escape(name)}</td>'
                              f'<td class="l none" colspan="3" rowspan="{k}">pictures not shown (report limit)</td>')
            tr.append(f'<td class="fl"><span class="sw" style="background:{colour(j)}"></span>{escape(f)}</td>')
            if sp is not None:
                mu = sp.mu.get(f)
                tr.append(f'<td class="img">{_img(mu, "mu " + f) if mu else "<span class=none>—</span>"}</td>'
                          f'<td class="img">{_img(sp.fused[f], "fused " + f)}</td>'
                          f'<td class="img">{_crop(sp.crop[f], "crop " + f, sp.box[2], sp.zoom)}</td>')
            else:
                tr.append('<td></td><td></td><td></td>')
            for m in sec.metrics:
                v = per[f][m]
                tr.append(f'<td data-m="{escape(m)}" data-v="{v!r}"{BEST if f in best[m] else ""}>{fmt(v)}</td>')
            tr.append("</tr>")
            rows.append("".join(tr))
        # only the first page of pairs is laid out when the page opens: a table of hundreds of
        # pairs takes seconds to lay out, hidden row groups cost almost nothing
        hidden = " hidden" if n_body >= PAGE_PAIRS else ""
        bodies.append(f'<tbody data-name="{escape(name)}"{hidden}>{"".join(rows)}</tbody>')
    options = "".join(f'<option value="{j}">{escape(f)}</option>' for j, f in enumerate(sec.fusions))
    bar = (f'<div class="sortbar"><span>Click a column to sort (best first; again to reverse).</span>'
           f'<label>sort by the values of <select class="sortf">{options}</select></label></div>')
    more = (f'<p class="more"><button type="button" class="more">show {PAGE_PAIRS} more</button> '
            f'<span class="count"></span></p>' if len(sec.images) > PAGE_PAIRS else "")
    return (f'<div class="pairwrap">{bar}<table class="pairs" id="pairs-{sec.anchor}" data-shown="{PAGE_PAIRS}">'
            f'{head}{"".join(bodies)}</table>{more}</div>')


def training_block(history: list, baseline: dict) -> str:
    """Per-epoch curves: training loss, then every evaluated metric of every test set with the
    heuristic guidance's value as a dashed line."""
    if not history:
        return ""
    out = ['<section id="training"><h2>Training run</h2><p class="note">One point per epoch, from the run\'s '
           'history. Dashed line: the heuristic guidance on the same test set (evaluated once, before training).</p>'
           '<div class="plots">']
    out.append(curve_svg("training loss", [(r["epoch"], float(r.get("train_loss", float("nan")))) for r in history]))
    sets: list[str] = []
    for r in history:
        for s in r.get("eval", {}) or {}:
            if s not in sets:
                sets.append(s)
    base = (baseline or {}).get("heuristic", {}) if isinstance(baseline, dict) else {}
    for s in sets:
        names: list[str] = []
        for r in history:
            for m in (r.get("eval", {}) or {}).get(s, {}):
                if m not in names:
                    names.append(m)
        for m in names:
            pts = [(r["epoch"], float(r["eval"][s][m])) for r in history if m in (r.get("eval", {}) or {}).get(s, {})]
            refs = [("heuristic", float(base[s][m]))] if m in base.get(s, {}) else []
            out.append(curve_svg(f"{s}: {m}", pts, refs))
    out.append("</div></section>")
    return "".join(out)


def render(title: str, meta: list[str], sections: list[SectionView], history=None, baseline=None) -> str:
    """The complete page."""
    nav = "".join(f'<a href="#{s.anchor}">{escape(s.name)}</a>' for s in sections)
    if history:
        nav += '<a href="#training">training run</a>'
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{escape(title)}</h1>"]
    parts += [f'<p class="meta">{escape(line)}</p>' for line in meta]
    parts.append(f"<nav>{nav}</nav>")
    if history:
        parts.append(training_block(history, baseline))
    for s in sections:
        n_shown = len(s.shown)
        parts.append(f'<section id="{s.anchor}"><h2>{escape(s.name)}</h2>')
        parts.append(f'<h3>Mean over {len(s.images)} pair(s)</h3>')
        parts.append(means_table(s))
        notes = ["★ marks the best of our rows per column (↑ higher is better, ↓ lower)."]
        if s.paper:
            notes.append(f"Grey rows: the paper's published means on {s.paper_key} (its full test split; "
                         "— where it reports no value).")
        if s.note:
            notes.append(s.note)
        parts.append(f'<p class="note">{escape(" ".join(notes))}</p>')
        parts.append("<h3>Distribution across images</h3>")
        parts.append('<p class="note">Per metric and fusion: box from first to third quartile, bar at the '
                     'median, whiskers to min and max, diamond at the mean, dots for single images.</p>')
        parts.append(distributions(s))
        parts.append(f'<h3>Per image ({len(s.images)} pairs, pictures for {n_shown})</h3>')
        parts.append('<p class="note">Thumbnails open the full-size image. mu: white = infrared, black = '
                     'visible. Zoom: the square (yellow on the visible thumbnail) where the fusions differ '
                     'most, magnified with nearest-neighbour. Bold: the best fusion for that image.</p>')
        parts.append(pairs_table(s))
        parts.append("</section>")
    parts.append(f"<script>{JS % PAGE_PAIRS}</script></body></html>")
    return "\n".join(parts)


__all__ = ["Picture", "ShownPair", "SectionView", "render", "means", "best_of", "fmt"]
